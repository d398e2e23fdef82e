#include "io/hf_checkpoint.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <new>
#include <nlohmann/json.hpp>

#include "core/checked_math.h"
#include "io/mapped_file.h"

namespace kiln {

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kIndexFile = "model.safetensors.index.json";

std::string quote_name(std::string_view s) { return "'" + printable_for_message(s) + "'"; }

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// A shard must be a plain file name inside the folder: nothing that can reach another folder.
bool is_plain_file_name(std::string_view name) {
  if (name.empty() || name == "." || name == "..") return false;
  return name.find_first_of(std::string_view("/\\\0", 3)) == std::string_view::npos;
}

std::string join(const std::string& dir, const std::string& name) { return (fs::path(dir) / name).string(); }

}  // namespace

Result<HfCheckpoint> HfCheckpoint::open(const std::string& dir) {
  std::error_code ec;
  fs::file_status st = fs::status(dir, ec);
  if (!fs::exists(st)) return not_found(dir + ": no such folder");
  if (!fs::is_directory(st)) return invalid_argument(dir + ": is not a folder (expected a Hugging Face model folder)");

  HfCheckpoint ckpt;
  ckpt.dir_ = dir;

  auto add_whole_file = [&ckpt](const std::string& path) -> Status {
    KILN_ASSIGN_OR_RETURN(SafetensorsFile file, SafetensorsFile::open(path));
    auto owned = std::make_unique<SafetensorsFile>(std::move(file));
    for (const auto& e : owned->entries()) ckpt.tensors_.emplace(e.name, &e);
    ckpt.shards_.push_back(std::move(owned));
    return Status::ok_status();
  };

  // 1. A single model.safetensors.
  const std::string single = join(dir, kSingleFile);
  if (fs::exists(fs::symlink_status(single, ec))) {  // a dangling symlink (HF cache) gets a clear error
    KILN_RETURN_IF_ERROR(add_whole_file(single));
    return ckpt;
  }

  // 2. A sharded checkpoint with an index.
  const std::string index_path = join(dir, kIndexFile);
  if (fs::exists(index_path, ec)) {
    KILN_ASSIGN_OR_RETURN(MappedFile index_file, MappedFile::open(index_path));
    json index;
    try {
      index = json::parse(reinterpret_cast<const char*>(index_file.data()),
                          reinterpret_cast<const char*>(index_file.data()) + index_file.size());
    } catch (const json::exception& e) {
      return data_loss(index_path + ": not valid JSON: " + e.what());
    }
    if (!index.is_object()) return data_loss(index_path + ": is not a JSON object");
    auto wm = index.find("weight_map");
    if (wm == index.end()) return data_loss(index_path + ": has no \"weight_map\"");
    if (!wm->is_object()) return data_loss(index_path + ": \"weight_map\" is not an object");
    if (wm->empty()) return data_loss(index_path + ": \"weight_map\" lists no tensors");

    std::map<std::string, std::vector<std::string>> by_shard;  // shard file -> tensor names
    for (const auto& [name, shard] : wm->items()) {
      if (!shard.is_string()) {
        return data_loss(index_path + ": tensor " + quote_name(name) + ": shard is a JSON " + shard.type_name() +
                         ", not a file name");
      }
      const auto& shard_name = shard.get_ref<const std::string&>();
      if (!is_plain_file_name(shard_name)) {
        return data_loss(index_path + ": tensor " + quote_name(name) + ": shard " + quote_name(shard_name) +
                         " is not a plain file name inside the folder");
      }
      by_shard[shard_name].push_back(name);
    }
    for (const auto& [shard_name, names] : by_shard) {
      const std::string shard_path = join(dir, shard_name);
      auto file = SafetensorsFile::open(shard_path);
      if (!file.ok()) {
        if (file.status().code() == StatusCode::kNotFound) {
          return not_found(index_path + ": shard " + quote_name(shard_name) + " (holding tensor " + quote_name(names.front()) +
                           " and " + std::to_string(names.size() - 1) + " more) is missing: " +
                           file.status().message());
        }
        return file.status();
      }
      auto owned = std::make_unique<SafetensorsFile>(std::move(file).value());
      for (const auto& name : names) {
        const SafetensorsEntry* e = owned->find(name);
        if (e == nullptr) {
          return data_loss(index_path + ": tensor " + quote_name(name) + " is listed in shard " + quote_name(shard_name) +
                           ", which does not hold it");
        }
        ckpt.tensors_.emplace(name, e);
      }
      ckpt.shards_.push_back(std::move(owned));
    }
    return ckpt;
  }

  // 3. Exactly one *.safetensors file of any name.
  std::vector<std::string> found;
  bool has_pytorch_bin = false;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    std::error_code type_ec;
    if (ends_with(name, ".safetensors") && it->is_regular_file(type_ec)) found.push_back(name);
    if (name == "pytorch_model.bin" || name == "pytorch_model.bin.index.json") has_pytorch_bin = true;
  }
  if (ec) return failed_precondition(dir + ": cannot list the folder: " + ec.message());
  std::sort(found.begin(), found.end());
  if (found.size() == 1) {
    KILN_RETURN_IF_ERROR(add_whole_file(join(dir, found[0])));
    return ckpt;
  }
  if (found.size() > 1) {
    std::string list;
    for (size_t i = 0; i < found.size() && i < 4; ++i) list += (i ? ", " : "") + found[i];
    if (found.size() > 4) list += ", ...";
    return invalid_argument(dir + ": folder holds " + std::to_string(found.size()) + " .safetensors files (" + list +
                            ") but no " + kIndexFile + " saying which tensor is in which");
  }
  std::string msg = dir + ": folder holds no safetensors weights (no " + kSingleFile + ", " + kIndexFile +
                    " or other .safetensors file)";
  if (has_pytorch_bin) {
    msg += "; it has PyTorch weights (pytorch_model.bin), which are not supported: convert them to safetensors";
  }
  return not_found(msg);
}

const SafetensorsEntry* HfCheckpoint::find(std::string_view name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : it->second;
}

std::vector<std::string> HfCheckpoint::names() const {
  std::vector<std::string> out;
  out.reserve(tensors_.size());
  for (const auto& [name, entry] : tensors_) out.push_back(name);
  return out;  // std::map keeps them sorted
}

std::vector<std::string> HfCheckpoint::shard_paths() const {
  std::vector<std::string> out;
  for (const auto& s : shards_) out.push_back(s->path());
  return out;
}

Result<HostBuffer> HfCheckpoint::read_as(std::string_view name, DType to) const {
  const SafetensorsEntry* e = find(name);
  if (e == nullptr) return not_found(dir_ + ": no tensor named " + quote_name(name));
  if (!dtype_is_float(to)) {
    return invalid_argument(dir_ + ": tensor " + quote_name(name) + ": cannot read as " + dtype_name(to) +
                            "; read_as converts to float types only");
  }
  if (!dtype_is_float(e->dtype)) {
    return invalid_argument(dir_ + ": tensor " + quote_name(name) + " is stored as " + dtype_safetensors_name(e->dtype) +
                            ", not a float type; read_as converts float types only");
  }
  const size_t src_size = dtype_size(e->dtype);
  const size_t n = e->nbytes / src_size;  // nbytes == numel * src_size, checked when the file was opened
  auto out_bytes = checked_mul(n, dtype_size(to));
  if (!out_bytes || *out_bytes > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    return resource_exhausted(dir_ + ": tensor " + quote_name(name) + " is too large to convert to " + dtype_name(to));
  }
  try {
    HostBuffer out(static_cast<size_t>(*out_bytes));
    if (n == 0) return out;
    if (e->dtype == to) {
      std::memcpy(out.data(), e->data, e->nbytes);
      return out;
    }
    const void* src = e->data;
    HostBuffer aligned;  // file data need not be aligned for its dtype; typed loads need it
    if (reinterpret_cast<uintptr_t>(src) % src_size != 0) {
      aligned = HostBuffer(e->nbytes);
      std::memcpy(aligned.data(), src, e->nbytes);
      src = aligned.data();
    }
    if (!convert_floats(src, e->dtype, out.data(), to, n)) {
      return internal_error(dir_ + ": tensor " + quote_name(name) + ": float conversion failed");
    }
    return out;
  } catch (const std::bad_alloc&) {
    return resource_exhausted(dir_ + ": tensor " + quote_name(name) + ": out of memory reading " +
                              std::to_string(*out_bytes) + " bytes");
  }
}

}  // namespace kiln
