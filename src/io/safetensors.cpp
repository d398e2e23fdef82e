#include "io/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>

#include "core/checked_math.h"
#include "io/strict_json.h"

namespace kiln {

// Tensor bytes are handed out as they lie in the file, and safetensors data is little-endian.
static_assert(std::endian::native == std::endian::little, "Kiln's safetensors I/O assumes a little-endian host");

namespace {

using json = nlohmann::json;

constexpr uint64_t kInt64Max = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
// A valid header nests three levels (object -> tensor object -> shape array); allow slack for unknown fields.
constexpr int kMaxJsonDepth = 16;

std::string clip(std::string_view s, size_t max = 200) { return printable_for_message(s, max); }
std::string quote_name(std::string_view s) { return "'" + clip(s) + "'"; }
std::string brief(const json& v) { return clip(v.dump(-1, ' ', false, json::error_handler_t::replace), 80); }

// Parses JSON, refusing duplicate keys in an object and deep nesting (io/strict_json.h).
Result<json> parse_json_strict(std::string_view text, const std::string& label) {
  json out;
  auto problem = kiln::parse_json_strict(text, kMaxJsonDepth, out);
  if (!problem) return out;
  switch (problem->kind) {
    case JsonProblem::Kind::kDuplicateKey:
      return data_loss(label + ": header has the key " + quote_name(problem->detail) + " twice");
    case JsonProblem::Kind::kTooDeep:
      return data_loss(label + ": header nests JSON deeper than " + std::to_string(kMaxJsonDepth) + " levels");
    case JsonProblem::Kind::kMalformed:
      break;
  }
  return data_loss(label + ": header is not valid JSON: " + clip(problem->detail, 300));
}

// A JSON integer >= 0 (nlohmann keeps integers as int64 or uint64; floats such as 2.0 are refused).
std::optional<uint64_t> non_negative_int(const json& v) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer()) {
    int64_t x = v.get<int64_t>();
    if (x < 0) return std::nullopt;
    return static_cast<uint64_t>(x);
  }
  return std::nullopt;
}

std::string offsets_text(uint64_t begin, uint64_t end) {
  return "[" + std::to_string(begin) + ", " + std::to_string(end) + "]";
}

// Parses one tensor's description. `ctx` is "<label>: tensor '<name>'".
Status parse_entry(const std::string& ctx, const json& val, uint64_t data_size, SafetensorsHeaderEntry& out) {
  if (!val.is_object()) {
    return data_loss(ctx + ": is a JSON " + val.type_name() + ", not an object with dtype, shape and data_offsets");
  }

  auto dt = val.find("dtype");
  if (dt == val.end()) return data_loss(ctx + ": has no \"dtype\"");
  if (!dt->is_string()) return data_loss(ctx + ": \"dtype\" is a JSON " + dt->type_name() + ", not a string");
  auto dtype = dtype_from_safetensors(dt->get_ref<const std::string&>());
  if (!dtype) return data_loss(ctx + ": unknown dtype " + quote_name(dt->get_ref<const std::string&>()));
  out.dtype = *dtype;

  auto sh = val.find("shape");
  if (sh == val.end()) return data_loss(ctx + ": has no \"shape\"");
  if (!sh->is_array()) return data_loss(ctx + ": \"shape\" is a JSON " + sh->type_name() + ", not an array");
  if (sh->size() > static_cast<size_t>(kMaxDims)) {
    return data_loss(ctx + ": shape " + brief(*sh) + " has " + std::to_string(sh->size()) +
                     " dimensions; at most " + std::to_string(kMaxDims) + " are supported");
  }
  out.shape = Shape();
  // nonzero_bytes: the byte size with zero dims left out. It must fit in int64 even for an empty tensor,
  // so that strides and row sizes computed later from this shape cannot overflow either.
  uint64_t nonzero_bytes = dtype_size(out.dtype);
  bool has_zero_dim = false;
  for (const json& d : *sh) {
    if (!d.is_number_integer()) {
      return data_loss(ctx + ": shape " + brief(*sh) + " has a non-integer dimension " + brief(d));
    }
    auto dim = non_negative_int(d);
    if (!dim) return data_loss(ctx + ": shape " + brief(*sh) + " has a negative dimension");
    if (*dim == 0) {
      has_zero_dim = true;
    } else {
      auto p = checked_mul(nonzero_bytes, *dim);
      if (!p || *p > kInt64Max) {
        return data_loss(ctx + ": shape " + brief(*sh) + " of " + dtype_safetensors_name(out.dtype) +
                         " is too large (its byte size overflows 64-bit arithmetic)");
      }
      nonzero_bytes = *p;
    }
    out.shape.dims[out.shape.ndim++] = static_cast<int64_t>(*dim);
  }
  const uint64_t nbytes = has_zero_dim ? 0 : nonzero_bytes;

  auto off = val.find("data_offsets");
  if (off == val.end()) return data_loss(ctx + ": has no \"data_offsets\"");
  std::optional<uint64_t> begin, end;
  if (off->is_array() && off->size() == 2) {
    begin = non_negative_int((*off)[0]);
    end = non_negative_int((*off)[1]);
  }
  if (!begin || !end) {
    return data_loss(ctx + ": data_offsets " + brief(*off) + " are not two non-negative integers [begin, end]");
  }
  if (*begin > *end) return data_loss(ctx + ": data_offsets " + offsets_text(*begin, *end) + " end before they begin");
  if (*end > data_size) {
    return data_loss(ctx + ": data_offsets " + offsets_text(*begin, *end) + " run past the end of the data (" +
                     std::to_string(data_size) + " bytes; the file is truncated or corrupt)");
  }
  if (*end - *begin != nbytes) {
    return data_loss(ctx + ": data_offsets " + offsets_text(*begin, *end) + " do not match shape " +
                     out.shape.to_string() + " of " + dtype_safetensors_name(out.dtype) + " (" +
                     std::to_string(nbytes) + " bytes)");
  }
  out.begin = *begin;
  out.end = *end;
  return Status::ok_status();
}

// Writes all of [p, p + n) to fd.
bool write_all(int fd, const void* p, size_t n) {
  const char* c = static_cast<const char*>(p);
  while (n > 0) {
    size_t chunk = std::min<size_t>(n, size_t{1} << 30);
    ssize_t w = ::write(fd, c, chunk);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    if (w == 0) {
      errno = EIO;
      return false;
    }
    c += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

// Length of the valid UTF-8 sequence starting at s[i], or 0 if none starts there.
size_t utf8_sequence_length(std::string_view s, size_t i) {
  auto byte = [&](size_t k) -> unsigned { return i + k < s.size() ? static_cast<uint8_t>(s[i + k]) : 0u; };
  auto cont = [&](size_t k, unsigned lo = 0x80, unsigned hi = 0xbf) { return byte(k) >= lo && byte(k) <= hi; };
  unsigned c = byte(0);
  if (c < 0x80) return 1;
  if (c >= 0xc2 && c <= 0xdf) return cont(1) ? 2 : 0;
  if (c == 0xe0) return cont(1, 0xa0) && cont(2) ? 3 : 0;
  if ((c >= 0xe1 && c <= 0xec) || c == 0xee || c == 0xef) return cont(1) && cont(2) ? 3 : 0;
  if (c == 0xed) return cont(1, 0x80, 0x9f) && cont(2) ? 3 : 0;
  if (c == 0xf0) return cont(1, 0x90) && cont(2) && cont(3) ? 4 : 0;
  if (c >= 0xf1 && c <= 0xf3) return cont(1) && cont(2) && cont(3) ? 4 : 0;
  if (c == 0xf4) return cont(1, 0x80, 0x8f) && cont(2) && cont(3) ? 4 : 0;
  return 0;
}

}  // namespace

std::string printable_for_message(std::string_view s, size_t max_bytes) {
  const bool clipped = s.size() > max_bytes;
  if (clipped) s = s.substr(0, max_bytes);
  std::string out;
  out.reserve(s.size() + 3);
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<uint8_t>(s[i]);
    size_t len = utf8_sequence_length(s, i);
    if (len == 0 || c < 0x20 || c == 0x7f) {
      static const char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
      ++i;
    } else {
      out.append(s.substr(i, len));
      i += len;
    }
  }
  if (clipped) out += "...";
  return out;
}

Result<SafetensorsHeader> parse_safetensors_header(std::string_view text, uint64_t data_size,
                                                   const std::string& label) {
  KILN_ASSIGN_OR_RETURN(json root, parse_json_strict(text, label));
  if (!root.is_object()) {
    return data_loss(label + ": header is a JSON " + std::string(root.type_name()) + ", not an object");
  }

  SafetensorsHeader header;
  header.entries.reserve(root.size());
  for (const auto& [key, val] : root.items()) {
    if (key == "__metadata__") {
      if (!val.is_object()) {
        return data_loss(label + ": \"__metadata__\" is a JSON " + std::string(val.type_name()) +
                         ", not an object of strings");
      }
      for (const auto& [mk, mv] : val.items()) {
        if (!mv.is_string()) {
          return data_loss(label + ": \"__metadata__\" entry " + quote_name(mk) + " is a JSON " +
                           std::string(mv.type_name()) + ", not a string");
        }
        header.metadata.emplace(mk, mv.get<std::string>());
      }
      continue;
    }
    SafetensorsHeaderEntry entry;
    entry.name = key;
    KILN_RETURN_IF_ERROR(parse_entry(label + ": tensor " + quote_name(key), val, data_size, entry));
    header.entries.push_back(std::move(entry));
  }

  std::sort(header.entries.begin(), header.entries.end(),
            [](const SafetensorsHeaderEntry& a, const SafetensorsHeaderEntry& b) {
              if (a.begin != b.begin) return a.begin < b.begin;
              if (a.end != b.end) return a.end < b.end;
              return a.name < b.name;
            });
  // Empty tensors own no bytes; every other tensor must start at or after the end of the one before it.
  const SafetensorsHeaderEntry* prev = nullptr;
  for (const auto& e : header.entries) {
    if (e.begin == e.end) continue;
    if (prev != nullptr && e.begin < prev->end) {
      return data_loss(label + ": tensors " + quote_name(prev->name) + " " + offsets_text(prev->begin, prev->end) +
                       " and " + quote_name(e.name) + " " + offsets_text(e.begin, e.end) + " overlap");
    }
    prev = &e;
  }
  return header;
}

Result<SafetensorsContents> parse_safetensors(const uint8_t* bytes, size_t size, const std::string& label) {
  if (size < 8) {
    return data_loss(label + ": file is " + std::to_string(size) +
                     " bytes, too short for a safetensors header length (8 bytes)");
  }
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(bytes[i]) << (8 * i);
  if (n > kMaxSafetensorsHeaderBytes) {
    return data_loss(label + ": header length " + std::to_string(n) + " exceeds the limit of " +
                     std::to_string(kMaxSafetensorsHeaderBytes) + " bytes (not a safetensors file, or corrupt)");
  }
  if (n > size - 8) {
    return data_loss(label + ": header length " + std::to_string(n) + " runs past the end of the file (" +
                     std::to_string(size) + " bytes; truncated?)");
  }
  const uint64_t data_size = size - 8 - n;
  KILN_ASSIGN_OR_RETURN(
      SafetensorsHeader header,
      parse_safetensors_header(std::string_view(reinterpret_cast<const char*>(bytes) + 8, n), data_size, label));

  SafetensorsContents out;
  out.header_size = n;
  out.metadata = std::move(header.metadata);
  out.entries.reserve(header.entries.size());
  const uint8_t* data = bytes + 8 + n;
  for (auto& e : header.entries) {
    SafetensorsEntry entry;
    entry.name = std::move(e.name);
    entry.dtype = e.dtype;
    entry.shape = e.shape;
    entry.data = data + e.begin;
    entry.nbytes = static_cast<size_t>(e.end - e.begin);
    out.entries.push_back(std::move(entry));
  }
  return out;
}

Result<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  KILN_ASSIGN_OR_RETURN(MappedFile mapped, MappedFile::open(path));
  KILN_ASSIGN_OR_RETURN(SafetensorsContents contents, parse_safetensors(mapped.data(), mapped.size(), path));
  SafetensorsFile file;
  file.file_ = std::move(mapped);
  file.entries_ = std::move(contents.entries);
  file.metadata_ = std::move(contents.metadata);
  for (size_t i = 0; i < file.entries_.size(); ++i) file.index_.emplace(file.entries_[i].name, i);
  return file;
}

const SafetensorsEntry* SafetensorsFile::find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &entries_[it->second];
}

Status write_safetensors(const std::string& path, const std::vector<SafetensorsTensorToWrite>& tensors,
                         const std::map<std::string, std::string>& metadata) {
  std::vector<const SafetensorsTensorToWrite*> order;
  order.reserve(tensors.size());
  for (const auto& t : tensors) order.push_back(&t);
  std::sort(order.begin(), order.end(), [](auto* a, auto* b) { return a->name < b->name; });

  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<size_t> sizes;
  sizes.reserve(order.size());
  uint64_t offset = 0;
  for (size_t i = 0; i < order.size(); ++i) {
    const auto& t = *order[i];
    const std::string ctx = path + ": tensor " + quote_name(t.name);
    if (t.name == "__metadata__") return invalid_argument(ctx + ": the name is reserved");
    if (i > 0 && order[i - 1]->name == t.name) return invalid_argument(ctx + ": the name is used twice");
    if (t.shape.ndim < 0 || t.shape.ndim > kMaxDims) return invalid_argument(ctx + ": bad number of dims");
    std::vector<int64_t> dims = t.shape.to_vector();
    auto numel = checked_product(dims);
    if (!numel) return invalid_argument(ctx + ": shape " + t.shape.to_string() + " has a negative dimension or overflows");
    auto nbytes = checked_mul(*numel, dtype_size(t.dtype));
    if (!nbytes || *nbytes > kInt64Max) {
      return invalid_argument(ctx + ": shape " + t.shape.to_string() + " is too large");
    }
    if (*nbytes > 0 && t.data == nullptr) return invalid_argument(ctx + ": data is null");
    auto end = checked_add(offset, *nbytes);
    if (!end) return invalid_argument(ctx + ": the file would exceed 2^64 bytes");
    header[t.name] = {{"dtype", dtype_safetensors_name(t.dtype)}, {"shape", dims}, {"data_offsets", {offset, *end}}};
    sizes.push_back(static_cast<size_t>(*nbytes));
    offset = *end;
  }

  std::string text;
  try {
    text = header.dump();
  } catch (const json::exception& e) {
    return invalid_argument(path + ": a tensor name or metadata string is not valid UTF-8 (" + clip(e.what()) + ")");
  }
  while (text.size() % 8 != 0) text.push_back(' ');
  if (text.size() > kMaxSafetensorsHeaderBytes) {
    return invalid_argument(path + ": header would be " + std::to_string(text.size()) + " bytes, over the limit of " +
                            std::to_string(kMaxSafetensorsHeaderBytes));
  }
  uint8_t prefix[8];
  for (int i = 0; i < 8; ++i) prefix[i] = static_cast<uint8_t>(static_cast<uint64_t>(text.size()) >> (8 * i));

  const std::string tmp = path + ".tmp";
  int fd;
  do {
    fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    int err = errno;
    std::string msg = "cannot create '" + tmp + "': " + std::strerror(err);
    return err == ENOENT || err == ENOTDIR ? not_found(msg) : failed_precondition(msg);
  }
  auto fail = [&](const char* what) {
    int err = errno;
    if (fd >= 0) ::close(fd);
    ::unlink(tmp.c_str());
    std::string msg = std::string(what) + " '" + tmp + "': " + std::strerror(err);
    return err == ENOSPC || err == EDQUOT ? resource_exhausted(msg) : failed_precondition(msg);
  };
  if (!write_all(fd, prefix, sizeof prefix) || !write_all(fd, text.data(), text.size())) return fail("cannot write");
  for (size_t i = 0; i < order.size(); ++i) {
    if (sizes[i] > 0 && !write_all(fd, order[i]->data, sizes[i])) return fail("cannot write");
  }
  if (::fsync(fd) != 0) return fail("cannot flush");
  int rc = ::close(fd);
  fd = -1;
  if (rc != 0) return fail("cannot close");
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    return failed_precondition("cannot rename '" + tmp + "' to '" + path + "': " + std::strerror(err));
  }
  return Status::ok_status();
}

}  // namespace kiln
