#include "io/engine_file.h"

#include <xxhash.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/checked_math.h"

namespace kiln {

using nlohmann::json;

namespace {
constexpr char kMagic[8] = {'K', 'I', 'L', 'N', 'E', 'N', 'G', '\0'};
constexpr size_t kPrefix = 16;
constexpr size_t kAlign = 64;
constexpr uint32_t kMaxHeader = 64u << 20;

std::string hex64(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}
}  // namespace

Status EngineFileWriter::write(const std::string& path) const {
  // Lay out offsets: the header size depends on the offsets, so iterate until it is stable.
  json entries = json::array();
  std::vector<uint64_t> offsets(tensors_.size());
  std::string header;
  size_t data_start = 0;
  for (int pass = 0; pass < 4; ++pass) {
    uint64_t off = round_up(kPrefix + header.size(), kAlign);
    data_start = off;
    entries = json::array();
    for (size_t i = 0; i < tensors_.size(); ++i) {
      const EngineTensor& t = tensors_[i];
      offsets[i] = off;
      entries.push_back({{"name", t.name},
                         {"dtype", dtype_name(t.dtype)},
                         {"shape", t.shape.to_vector()},
                         {"layout", t.layout},
                         {"offset", off},
                         {"nbytes", t.nbytes},
                         {"xxh3", hex64(XXH3_64bits(t.data, t.nbytes))}});
      off = round_up(off + t.nbytes, kAlign);
    }
    std::string next = json{{"tensors", entries}, {"file_bytes", off}}.dump();
    if (next.size() == header.size() && round_up(kPrefix + next.size(), kAlign) == data_start) {
      header = next;
      break;
    }
    header = next;
  }
  KILN_CHECK(round_up(kPrefix + header.size(), kAlign) == data_start, "engine header layout did not converge");
  if (header.size() > kMaxHeader) return invalid_argument("engine header too large");

  const std::string tmp = path + ".tmp";
  std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
  if (!out) return invalid_argument(path + ": cannot write");
  uint32_t version = kEngineFileVersion, hbytes = static_cast<uint32_t>(header.size());
  out.write(kMagic, 8);
  out.write(reinterpret_cast<const char*>(&version), 4);
  out.write(reinterpret_cast<const char*>(&hbytes), 4);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  uint64_t pos = kPrefix + header.size();
  static const char zeros[kAlign] = {};
  for (size_t i = 0; i < tensors_.size(); ++i) {
    out.write(zeros, static_cast<std::streamsize>(offsets[i] - pos));
    out.write(static_cast<const char*>(tensors_[i].data), static_cast<std::streamsize>(tensors_[i].nbytes));
    pos = offsets[i] + tensors_[i].nbytes;
  }
  out.write(zeros, static_cast<std::streamsize>(round_up(pos, kAlign) - pos));
  out.close();
  if (!out) return data_loss(path + ": write failed (disk full?)");
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) return data_loss(path + ": " + ec.message());
  return {};
}

Result<std::shared_ptr<EngineFile>> EngineFile::open(const std::string& path) {
  auto ef = std::shared_ptr<EngineFile>(new EngineFile());
  KILN_ASSIGN_OR_RETURN(ef->file_, MappedFile::open(path));
  const uint8_t* base = ef->file_.data();
  const size_t size = ef->file_.size();
  const std::string rebuild = "; rebuild the engine with `kiln build`";
  if (size < kPrefix || std::memcmp(base, kMagic, 8) != 0)
    return data_loss(path + " is not a Kiln engine file (bad magic)" + rebuild);
  uint32_t version, hbytes;
  std::memcpy(&version, base + 8, 4);
  std::memcpy(&hbytes, base + 12, 4);
  if (version != kEngineFileVersion)
    return failed_precondition(path + ": engine file format version " + std::to_string(version) + ", this kiln " KILN_VERSION
                               " reads version " + std::to_string(kEngineFileVersion) + rebuild);
  if (hbytes > kMaxHeader || kPrefix + hbytes > size) return data_loss(path + ": truncated header" + rebuild);
  json h = json::parse(base + kPrefix, base + kPrefix + hbytes, nullptr, false);
  if (h.is_discarded() || !h.is_object()) return data_loss(path + ": corrupted header" + rebuild);
  try {
    uint64_t file_bytes = h.at("file_bytes").get<uint64_t>();
    if (file_bytes != size)
      return data_loss(path + ": file is " + std::to_string(size) + " bytes, expected " + std::to_string(file_bytes) +
                       " (truncated or corrupted)" + rebuild);
    for (const json& e : h.at("tensors")) {
      EngineTensor t;
      t.name = e.at("name").get<std::string>();
      auto dt = dtype_from_name(e.at("dtype").get<std::string>());
      if (!dt) return data_loss(path + ": tensor " + t.name + " has an unknown dtype" + rebuild);
      t.dtype = *dt;
      auto dims = e.at("shape").get<std::vector<int64_t>>();
      if (dims.size() > kMaxDims || !checked_product(dims))
        return data_loss(path + ": tensor " + t.name + " has a bad shape" + rebuild);
      t.shape = Shape::from(dims);
      t.layout = e.at("layout").get<std::string>();
      uint64_t off = e.at("offset").get<uint64_t>();
      t.nbytes = e.at("nbytes").get<uint64_t>();
      auto end = checked_add(off, t.nbytes);
      if (!end || *end > size || off % kAlign != 0 || off < kPrefix + hbytes)
        return data_loss(path + ": tensor " + t.name + " lies outside the file" + rebuild);
      t.data = base + off;
      if (hex64(XXH3_64bits(t.data, t.nbytes)) != e.at("xxh3").get<std::string>())
        return data_loss(path + ": tensor " + t.name + " fails its checksum (corrupted file)" + rebuild);
      if (ef->index_.count(t.name)) return data_loss(path + ": tensor " + t.name + " appears twice" + rebuild);
      ef->index_[t.name] = ef->tensors_.size();
      ef->tensors_.push_back(std::move(t));
    }
  } catch (const json::exception& e) {
    return data_loss(path + ": corrupted header (" + e.what() + ")" + rebuild);
  }
  return ef;
}

const EngineTensor* EngineFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

}  // namespace kiln
