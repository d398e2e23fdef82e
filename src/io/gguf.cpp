#include "io/gguf.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>
#include <optional>

#include "core/checked_math.h"
#include "io/safetensors.h"  // printable_for_message

namespace kiln {

// Values and tensor data are handed out as they lie in the file, which is little-endian.
static_assert(std::endian::native == std::endian::little, "Kiln's GGUF reader assumes a little-endian host");

namespace {

constexpr uint64_t kInt64Max = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
constexpr uint32_t kLastGgufType = static_cast<uint32_t>(GgufType::kF64);
// Smallest encodings, for bounding untrusted counts by the bytes left: a key/value pair is a key
// length, a value type and at least one value byte; a tensor info has a name length, n_dims, one dim,
// a type and an offset; a nested array has its element type and count.
constexpr uint64_t kMinKvBytes = 8 + 4 + 1;
constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 8 + 4 + 8;
constexpr uint64_t kMinArrayBytes = 4 + 8;

std::string quote(std::string_view s) { return "'" + printable_for_message(s) + "'"; }
std::string num(uint64_t v) { return std::to_string(v); }

// Fixed byte size of a scalar type; 0 for string and array.
uint64_t scalar_size(GgufType t) {
  switch (t) {
    case GgufType::kU8: case GgufType::kI8: case GgufType::kBool: return 1;
    case GgufType::kU16: case GgufType::kI16: return 2;
    case GgufType::kU32: case GgufType::kI32: case GgufType::kF32: return 4;
    case GgufType::kU64: case GgufType::kI64: case GgufType::kF64: return 8;
    case GgufType::kString: case GgufType::kArray: return 0;
  }
  return 0;
}

bool is_unsigned(GgufType t) {
  return t == GgufType::kU8 || t == GgufType::kU16 || t == GgufType::kU32 || t == GgufType::kU64;
}
bool is_signed(GgufType t) {
  return t == GgufType::kI8 || t == GgufType::kI16 || t == GgufType::kI32 || t == GgufType::kI64;
}
bool is_float(GgufType t) { return t == GgufType::kF32 || t == GgufType::kF64; }

// ggml type ids that exist but that Kiln does not read, so that a refusal can name the type.
const char* unsupported_ggml_type_name(uint32_t id) {
  switch (id) {
    case 10: return "Q2_K";
    case 11: return "Q3_K";
    case 15: return "Q8_K";
    case 16: return "IQ2_XXS";
    case 17: return "IQ2_XS";
    case 18: return "IQ3_XXS";
    case 19: return "IQ1_S";
    case 20: return "IQ4_NL";
    case 21: return "IQ3_S";
    case 22: return "IQ2_S";
    case 23: return "IQ4_XS";
    case 24: return "I8";
    case 25: return "I16";
    case 26: return "I32";
    case 27: return "I64";
    case 28: return "F64";
    case 29: return "IQ1_M";
    case 34: return "TQ1_0";
    case 35: return "TQ2_0";
    case 39: return "MXFP4";
    default: return nullptr;
  }
}

// Reads little-endian fields from [data, data + size), never past the end.
class Cursor {
 public:
  Cursor(const uint8_t* data, uint64_t size) : data_(data), size_(size) {}
  uint64_t pos() const { return pos_; }
  uint64_t left() const { return size_ - pos_; }
  uint64_t size() const { return size_; }
  const uint8_t* at(uint64_t offset) const { return data_ + offset; }

  template <typename T>
  bool read(T& out) {
    if (left() < sizeof(T)) return false;
    std::memcpy(&out, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return true;
  }
  void skip(uint64_t n) { pos_ += n; }  // n <= left(), checked by the caller
  // Takes n bytes as a string; false if fewer are left.
  bool read_bytes(uint64_t n, std::string& out) {
    if (left() < n) return false;
    out.assign(reinterpret_cast<const char*>(data_ + pos_), static_cast<size_t>(n));
    pos_ += n;
    return true;
  }

 private:
  const uint8_t* data_;
  uint64_t size_;
  uint64_t pos_ = 0;
};

// Everything parse() learns; GgufFile::open moves it into the file object.
struct Contents {
  uint32_t version = 0;
  uint64_t alignment = kDefaultGgufAlignment;
  uint64_t data_offset = 0;
  std::vector<std::pair<std::string, GgufValue>> kvs;
  std::map<std::string, size_t, std::less<>> kv_index;
  std::vector<GgufTensorInfo> tensors;
  std::map<std::string, size_t, std::less<>> tensor_index;
};

class Parser {
 public:
  Parser(const uint8_t* data, uint64_t size, const std::string& label) : cur_(data, size), label_(label) {}

  Result<Contents> parse();

 private:
  // "<ctx>: file is truncated inside <what> (N bytes needed at offset P, L left in the S-byte file)"
  Status truncated(const std::string& ctx, const std::string& what, uint64_t need) const {
    return data_loss(ctx + ": file is truncated inside " + what + " (" + num(need) + " bytes needed at offset " +
                     num(cur_.pos()) + ", " + num(cur_.left()) + " left in the " + num(cur_.size()) +
                     "-byte file)");
  }
  template <typename T>
  Status read(T& out, const std::string& ctx, const std::string& what) {
    if (!cur_.read(out)) return truncated(ctx, what, sizeof(T));
    return Status::ok_status();
  }
  // `what` names the string for messages ("the key"); it is called only on an error, so that the
  // strings of a 100k-entry array cost no message building.
  template <typename Describe>
  Status read_string(std::string& out, uint64_t max_len, const std::string& ctx, Describe what);
  Status read_value(GgufType type, int depth, const std::string& ctx, GgufValue& out);
  Status read_array(int depth, const std::string& ctx, GgufValue& out);
  Status read_header(uint64_t& n_tensors, uint64_t& n_kvs);
  Status read_alignment();
  Status read_tensor_info(GgufTensorInfo& t, uint64_t index);
  Status place_tensors();

  Cursor cur_;
  const std::string& label_;
  Contents out_;
};

template <typename Describe>
Status Parser::read_string(std::string& out, uint64_t max_len, const std::string& ctx, Describe what) {
  uint64_t len = 0;
  if (!cur_.read(len)) return truncated(ctx, "the length of " + what(), 8);
  if (len > max_len) {
    return data_loss(ctx + ": " + what() + " length " + num(len) + " exceeds the limit of " + num(max_len) + " bytes");
  }
  if (len > cur_.left()) {
    return data_loss(ctx + ": " + what() + " length " + num(len) + " runs past the end of the file (offset " +
                     num(cur_.pos()) + ", " + num(cur_.left()) + " bytes left; truncated or corrupt)");
  }
  cur_.read_bytes(len, out);
  return Status::ok_status();
}

// Decodes the scalar of type t at p (scalar_size(t) bytes, known to be there). False for a bool that is
// neither 0 nor 1.
bool decode_scalar(GgufType t, const uint8_t* p, GgufValue& out) {
  auto load = [p](auto v) {
    std::memcpy(&v, p, sizeof v);
    return v;
  };
  switch (t) {
    case GgufType::kU8: out.u = load(uint8_t{}); break;
    case GgufType::kU16: out.u = load(uint16_t{}); break;
    case GgufType::kU32: out.u = load(uint32_t{}); break;
    case GgufType::kU64: out.u = load(uint64_t{}); break;
    case GgufType::kI8: out.i = load(int8_t{}); break;
    case GgufType::kI16: out.i = load(int16_t{}); break;
    case GgufType::kI32: out.i = load(int32_t{}); break;
    case GgufType::kI64: out.i = load(int64_t{}); break;
    case GgufType::kF32: out.f = load(float{}); break;
    case GgufType::kF64: out.f = load(double{}); break;
    case GgufType::kBool: out.u = *p; return out.u <= 1;
    case GgufType::kString: case GgufType::kArray: break;
  }
  return true;
}

Status bad_bool(const std::string& ctx, uint64_t v) {
  return data_loss(ctx + ": bool value " + num(v) + " is neither 0 nor 1");
}

Status Parser::read_value(GgufType type, int depth, const std::string& ctx, GgufValue& out) {
  out.type = type;
  if (type == GgufType::kString) {
    return read_string(out.s, std::numeric_limits<uint64_t>::max(), ctx, [] { return std::string("a string value"); });
  }
  if (type == GgufType::kArray) return read_array(depth + 1, ctx, out);
  const uint64_t size = scalar_size(type);
  if (cur_.left() < size) return truncated(ctx, std::string("a ") + gguf_type_name(type) + " value", size);
  if (!decode_scalar(type, cur_.at(cur_.pos()), out)) return bad_bool(ctx, out.u);
  cur_.skip(size);
  return Status::ok_status();
}

Status Parser::read_array(int depth, const std::string& ctx, GgufValue& out) {
  if (depth > kMaxGgufArrayDepth) {
    return data_loss(ctx + ": arrays nest deeper than " + std::to_string(kMaxGgufArrayDepth) + " levels");
  }
  uint32_t elem_id = 0;
  KILN_RETURN_IF_ERROR(read(elem_id, ctx, "an array's element type"));
  if (elem_id > kLastGgufType) {
    return data_loss(ctx + ": array element type " + num(elem_id) + " is not a GGUF value type (0 to " +
                     num(kLastGgufType) + ")");
  }
  const auto elem = static_cast<GgufType>(elem_id);
  out.elem_type = elem;
  uint64_t count = 0;
  KILN_RETURN_IF_ERROR(read(count, ctx, "an array's length"));
  const uint64_t min_elem =
      elem == GgufType::kString ? 8 : elem == GgufType::kArray ? kMinArrayBytes : scalar_size(elem);
  if (count > cur_.left() / min_elem) {
    auto need = checked_mul(count, min_elem);
    return data_loss(ctx + ": array length " + num(count) + " of " + gguf_type_name(elem) + " needs at least " +
                     (need ? num(*need) : std::string("2^64")) + " bytes, but only " + num(cur_.left()) +
                     " are left in the file (truncated or corrupt)");
  }
  const auto n = static_cast<size_t>(count);
  if (elem == GgufType::kString) {  // no reserve: the strings may still turn out not to be there
    for (size_t k = 0; k < n; ++k) {
      std::string s;
      KILN_RETURN_IF_ERROR(read_string(s, std::numeric_limits<uint64_t>::max(), ctx,
                                       [k] { return "string " + std::to_string(k) + " of an array"; }));
      out.strings.push_back(std::move(s));
    }
    return Status::ok_status();
  }
  if (elem == GgufType::kArray) {
    for (size_t k = 0; k < n; ++k) {
      GgufValue inner;
      KILN_RETURN_IF_ERROR(read_value(GgufType::kArray, depth, ctx, inner));
      out.arrays.push_back(std::move(inner));
    }
    return Status::ok_status();
  }
  // Scalars: all n * size bytes are known to be there, so reserving n is no risk.
  const uint64_t size = scalar_size(elem);
  const uint8_t* p = cur_.at(cur_.pos());
  GgufValue v;
  if (is_signed(elem)) {
    out.ints.reserve(n);
  } else if (is_float(elem)) {
    out.floats.reserve(n);
  } else {
    out.uints.reserve(n);
  }
  for (size_t k = 0; k < n; ++k, p += size) {
    if (!decode_scalar(elem, p, v)) return bad_bool(ctx + ": array element " + std::to_string(k), v.u);
    if (is_signed(elem)) {
      out.ints.push_back(v.i);
    } else if (is_float(elem)) {
      out.floats.push_back(v.f);
    } else {
      out.uints.push_back(v.u);
    }
  }
  cur_.skip(n * size);
  return Status::ok_status();
}

Status Parser::read_header(uint64_t& n_tensors, uint64_t& n_kvs) {
  const std::string& ctx = label_;
  if (cur_.size() < 8) {
    return data_loss(ctx + ": file is " + num(cur_.size()) + " bytes, too short for a GGUF header (magic and version)");
  }
  std::string magic;
  cur_.read_bytes(4, magic);
  if (magic != "GGUF") {
    return data_loss(ctx + ": not a GGUF file: it starts with \"" + printable_for_message(magic) +
                     "\", not \"GGUF\"");
  }
  uint32_t version = 0;
  cur_.read(version);
  if (version == 1) {
    return unimplemented(ctx + ": GGUF version 1 is not supported (only versions 2 and 3 are); convert the "
                         "model again with current tools");
  }
  if (version != 2 && version != 3) {
    const uint32_t swapped = __builtin_bswap32(version);
    if (swapped >= 1 && swapped <= 3) {
      return unimplemented(ctx + ": GGUF version field reads " + num(version) + ", which is version " +
                           num(swapped) + " byte-swapped: this is a big-endian GGUF file, and Kiln reads only "
                           "little-endian ones");
    }
    if (version > 3 && version < 0x10000) {
      return unimplemented(ctx + ": GGUF version " + num(version) + " is newer than Kiln reads (2 and 3)");
    }
    return data_loss(ctx + ": unknown GGUF version " + num(version) + " (Kiln reads 2 and 3)");
  }
  out_.version = version;
  KILN_RETURN_IF_ERROR(read(n_tensors, ctx, "the header's tensor count"));
  KILN_RETURN_IF_ERROR(read(n_kvs, ctx, "the header's key/value count"));
  if (n_kvs > cur_.left() / kMinKvBytes) {
    return data_loss(ctx + ": header says " + num(n_kvs) + " key/value pairs, but the " + num(cur_.left()) +
                     " bytes after the header hold at most " + num(cur_.left() / kMinKvBytes) +
                     " (truncated or corrupt)");
  }
  if (n_tensors > cur_.left() / kMinTensorInfoBytes) {
    return data_loss(ctx + ": header says " + num(n_tensors) + " tensors, but the " + num(cur_.left()) +
                     " bytes after the header hold at most " + num(cur_.left() / kMinTensorInfoBytes) +
                     " tensor infos (truncated or corrupt)");
  }
  return Status::ok_status();
}

Status Parser::read_alignment() {
  auto it = out_.kv_index.find("general.alignment");
  if (it == out_.kv_index.end()) return Status::ok_status();
  const GgufValue& v = out_.kvs[it->second].second;
  const std::string ctx = label_ + ": key 'general.alignment'";
  if (v.type != GgufType::kU32) {
    return data_loss(ctx + " is " + v.type_description() + "; it must be u32");
  }
  if (v.u == 0 || !std::has_single_bit(v.u)) {
    return data_loss(ctx + " is " + num(v.u) + ", not a nonzero power of two");
  }
  out_.alignment = v.u;
  return Status::ok_status();
}

Status Parser::read_tensor_info(GgufTensorInfo& t, uint64_t index) {
  const std::string nth = "tensor info " + num(index);
  KILN_RETURN_IF_ERROR(
      read_string(t.name, kMaxGgufKeyBytes, label_ + ": " + nth, [] { return std::string("the name"); }));
  if (t.name.empty()) return data_loss(label_ + ": " + nth + " has an empty name");
  const std::string ctx = label_ + ": tensor " + quote(t.name);
  if (out_.tensor_index.count(t.name) != 0) return data_loss(ctx + ": the name is used by two tensors");

  uint32_t n_dims = 0;
  KILN_RETURN_IF_ERROR(read(n_dims, ctx, "its number of dims"));
  if (n_dims < 1 || n_dims > kMaxGgufDims) {
    return data_loss(ctx + ": n_dims is " + num(n_dims) + "; it must be 1 to " + std::to_string(kMaxGgufDims));
  }
  for (uint32_t d = 0; d < n_dims; ++d) {
    uint64_t dim = 0;
    KILN_RETURN_IF_ERROR(read(dim, ctx, "its dims"));
    if (dim == 0) return data_loss(ctx + ": dim " + num(d) + " is 0");
    if (dim > kInt64Max) return data_loss(ctx + ": dim " + num(d) + " is " + num(dim) + ", over 2^63 - 1");
    t.dims.push_back(static_cast<int64_t>(dim));
  }
  std::string dims_text = "[";
  for (size_t d = 0; d < t.dims.size(); ++d) dims_text += (d ? ", " : "") + std::to_string(t.dims[d]);
  dims_text += "]";

  uint32_t type_id = 0;
  KILN_RETURN_IF_ERROR(read(type_id, ctx, "its type"));
  auto type = ggml_type_from_id(type_id);
  if (!type) {
    if (const char* known = unsupported_ggml_type_name(type_id)) {
      return unimplemented(ctx + ": type " + known + " (ggml type id " + num(type_id) + ") is not one Kiln reads");
    }
    return data_loss(ctx + ": unknown ggml type id " + num(type_id));
  }
  t.type = *type;

  uint64_t offset = 0;
  KILN_RETURN_IF_ERROR(read(offset, ctx, "its offset"));
  if (offset % out_.alignment != 0) {
    return data_loss(ctx + ": offset " + num(offset) + " is not a multiple of the alignment " + num(out_.alignment));
  }
  t.offset = offset;  // relative for now; place_tensors makes it absolute

  auto numel = checked_product(t.dims);
  if (!numel || *numel > kInt64Max) {
    return data_loss(ctx + ": dims " + dims_text + " hold more than 2^63 - 1 elements");
  }
  if (t.dims[0] % ggml_block_elems(t.type) != 0) {
    return data_loss(ctx + ": row length " + std::to_string(t.dims[0]) + " is not a multiple of the " +
                     ggml_type_name(t.type) + " block of " + std::to_string(ggml_block_elems(t.type)) + " values");
  }
  auto row = ggml_row_bytes(t.type, t.dims[0]);
  auto nbytes = row ? checked_mul(*row, *numel / static_cast<uint64_t>(t.dims[0])) : std::nullopt;
  if (!nbytes || *nbytes > kInt64Max) {
    return data_loss(ctx + ": dims " + dims_text + " of " + ggml_type_name(t.type) + " are too large (the byte size "
                     "overflows 64-bit arithmetic)");
  }
  t.nbytes = *nbytes;
  return Status::ok_status();
}

// Makes the offsets absolute and checks that every tensor lies inside the data section and that no two
// overlap.
Status Parser::place_tensors() {
  const uint64_t size = cur_.size();
  // pos <= size and alignment <= 2^31, so this cannot overflow.
  out_.data_offset = round_up(cur_.pos(), out_.alignment);
  for (auto& t : out_.tensors) {
    auto begin = checked_add(out_.data_offset, t.offset);
    auto end = begin ? checked_add(*begin, t.nbytes) : std::nullopt;
    if (!end || *end > size) {
      return data_loss(label_ + ": tensor " + quote(t.name) + ": its " + num(t.nbytes) + " bytes of " +
                       ggml_type_name(t.type) + " at offset " + num(t.offset) +
                       " of the data section (which starts at " + num(out_.data_offset) + ") run past the end of the " +
                       num(size) + "-byte file (truncated or corrupt)");
    }
    t.offset = *begin;
    t.data = cur_.at(*begin);
  }
  std::vector<const GgufTensorInfo*> order;
  order.reserve(out_.tensors.size());
  for (const auto& t : out_.tensors) order.push_back(&t);
  std::sort(order.begin(), order.end(), [](auto* a, auto* b) { return a->offset < b->offset; });
  for (size_t k = 1; k < order.size(); ++k) {
    const GgufTensorInfo& a = *order[k - 1];
    const GgufTensorInfo& b = *order[k];
    if (b.offset < a.offset + a.nbytes) {
      return data_loss(label_ + ": tensors " + quote(a.name) + " (bytes " + num(a.offset) + " to " +
                       num(a.offset + a.nbytes) + ") and " + quote(b.name) + " (from byte " + num(b.offset) +
                       ") overlap");
    }
  }
  return Status::ok_status();
}

Result<Contents> Parser::parse() {
  uint64_t n_tensors = 0, n_kvs = 0;
  KILN_RETURN_IF_ERROR(read_header(n_tensors, n_kvs));

  // No reserve from the header's counts: a lying count then costs nothing, and a true one only the
  // vectors' doubling.
  for (uint64_t k = 0; k < n_kvs; ++k) {
    std::string key;
    KILN_RETURN_IF_ERROR(read_string(key, kMaxGgufKeyBytes, label_ + ": key/value pair " + num(k),
                                     [] { return std::string("the key"); }));
    const std::string ctx = label_ + ": key " + quote(key);
    if (key.empty()) return data_loss(label_ + ": key/value pair " + num(k) + " has an empty key");
    if (out_.kv_index.count(key) != 0) return data_loss(ctx + ": the key appears twice");
    uint32_t type_id = 0;
    KILN_RETURN_IF_ERROR(read(type_id, ctx, "its value type"));
    if (type_id > kLastGgufType) {
      return data_loss(ctx + ": value type " + num(type_id) + " is not a GGUF value type (0 to " +
                       num(kLastGgufType) + ")");
    }
    GgufValue value;
    KILN_RETURN_IF_ERROR(read_value(static_cast<GgufType>(type_id), 0, ctx, value));
    out_.kv_index.emplace(key, out_.kvs.size());
    out_.kvs.emplace_back(std::move(key), std::move(value));
  }
  KILN_RETURN_IF_ERROR(read_alignment());

  for (uint64_t k = 0; k < n_tensors; ++k) {
    GgufTensorInfo t;
    KILN_RETURN_IF_ERROR(read_tensor_info(t, k));
    out_.tensor_index.emplace(t.name, out_.tensors.size());
    out_.tensors.push_back(std::move(t));
  }
  KILN_RETURN_IF_ERROR(place_tensors());
  return std::move(out_);
}

std::string int_text(const GgufValue& v) {
  return is_signed(v.type) ? std::to_string(v.i) : num(v.u);
}

}  // namespace

const char* gguf_type_name(GgufType t) {
  switch (t) {
    case GgufType::kU8: return "u8";
    case GgufType::kI8: return "i8";
    case GgufType::kU16: return "u16";
    case GgufType::kI16: return "i16";
    case GgufType::kU32: return "u32";
    case GgufType::kI32: return "i32";
    case GgufType::kF32: return "f32";
    case GgufType::kBool: return "bool";
    case GgufType::kString: return "string";
    case GgufType::kArray: return "array";
    case GgufType::kU64: return "u64";
    case GgufType::kI64: return "i64";
    case GgufType::kF64: return "f64";
  }
  return "unknown";
}

size_t GgufValue::array_size() const {
  if (type != GgufType::kArray) return 0;
  if (elem_type == GgufType::kString) return strings.size();
  if (elem_type == GgufType::kArray) return arrays.size();
  if (is_signed(elem_type)) return ints.size();
  if (is_float(elem_type)) return floats.size();
  return uints.size();
}

std::string GgufValue::type_description() const {
  if (type != GgufType::kArray) return gguf_type_name(type);
  if (elem_type != GgufType::kArray) return std::string("array of ") + gguf_type_name(elem_type);
  // Inner arrays each carry their own element type; describe the first when there is one.
  if (!arrays.empty()) return "array of " + arrays.front().type_description();
  return "array of array";
}

int64_t GgufTensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;  // validated at open: fits in int64
  return n;
}

Result<std::shared_ptr<GgufFile>> GgufFile::open(const std::string& path) {
  KILN_ASSIGN_OR_RETURN(MappedFile mapped, MappedFile::open(path));
  Parser parser(mapped.data(), mapped.size(), path);
  KILN_ASSIGN_OR_RETURN(Contents c, parser.parse());
  std::shared_ptr<GgufFile> file(new GgufFile());
  // The tensors' data pointers point into the mapping, whose address survives the move.
  file->file_ = std::move(mapped);
  file->version_ = c.version;
  file->alignment_ = c.alignment;
  file->data_offset_ = c.data_offset;
  file->kvs_ = std::move(c.kvs);
  file->kv_index_ = std::move(c.kv_index);
  file->tensors_ = std::move(c.tensors);
  file->tensor_index_ = std::move(c.tensor_index);
  return file;
}

const GgufValue* GgufFile::find(std::string_view key) const {
  auto it = kv_index_.find(key);
  return it == kv_index_.end() ? nullptr : &kvs_[it->second].second;
}

const GgufTensorInfo* GgufFile::find_tensor(std::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

namespace {

// The value of `key`, NotFound if absent.
Result<const GgufValue*> lookup(const GgufFile& f, std::string_view key) {
  const GgufValue* v = f.find(key);
  if (v == nullptr) return not_found(f.path() + ": no key " + quote(key));
  return v;
}

Status wrong_type(const GgufFile& f, std::string_view key, const char* expected, const GgufValue& v) {
  return invalid_argument(f.path() + ": key " + quote(key) + " is " + v.type_description() + ", expected " + expected);
}

}  // namespace

Result<std::string> GgufFile::get_string(std::string_view key) const {
  KILN_ASSIGN_OR_RETURN(const GgufValue* v, lookup(*this, key));
  if (v->type != GgufType::kString) return wrong_type(*this, key, "string", *v);
  return v->s;
}

Result<uint64_t> GgufFile::get_uint(std::string_view key) const {
  KILN_ASSIGN_OR_RETURN(const GgufValue* v, lookup(*this, key));
  if (is_unsigned(v->type)) return v->u;
  if (is_signed(v->type)) {
    if (v->i < 0) {
      return invalid_argument(path() + ": key " + quote(key) + " is " + int_text(*v) + " (" + gguf_type_name(v->type) +
                              "), expected a non-negative integer");
    }
    return static_cast<uint64_t>(v->i);
  }
  return wrong_type(*this, key, "an integer", *v);
}

Result<double> GgufFile::get_float(std::string_view key) const {
  KILN_ASSIGN_OR_RETURN(const GgufValue* v, lookup(*this, key));
  if (is_float(v->type)) return v->f;
  if (is_unsigned(v->type)) return static_cast<double>(v->u);
  if (is_signed(v->type)) return static_cast<double>(v->i);
  return wrong_type(*this, key, "f32 or f64", *v);
}

Result<bool> GgufFile::get_bool(std::string_view key) const {
  KILN_ASSIGN_OR_RETURN(const GgufValue* v, lookup(*this, key));
  if (v->type != GgufType::kBool) return wrong_type(*this, key, "bool", *v);
  return v->u != 0;
}

Result<std::vector<std::string>> GgufFile::get_string_array(std::string_view key) const {
  KILN_ASSIGN_OR_RETURN(const GgufValue* v, lookup(*this, key));
  if (!v->is_array() || v->elem_type != GgufType::kString) return wrong_type(*this, key, "array of string", *v);
  return v->strings;
}

Result<std::vector<float>> GgufFile::get_float_array(std::string_view key) const {
  KILN_ASSIGN_OR_RETURN(const GgufValue* v, lookup(*this, key));
  if (!v->is_array() || !is_float(v->elem_type)) return wrong_type(*this, key, "array of f32 or f64", *v);
  return std::vector<float>(v->floats.begin(), v->floats.end());
}

Result<std::vector<int64_t>> GgufFile::get_int_array(std::string_view key) const {
  KILN_ASSIGN_OR_RETURN(const GgufValue* v, lookup(*this, key));
  if (!v->is_array()) return wrong_type(*this, key, "array of integers", *v);
  if (is_signed(v->elem_type)) return v->ints;
  if (!is_unsigned(v->elem_type)) return wrong_type(*this, key, "array of integers", *v);
  std::vector<int64_t> out;
  out.reserve(v->uints.size());
  for (size_t k = 0; k < v->uints.size(); ++k) {
    if (v->uints[k] > kInt64Max) {
      return invalid_argument(path() + ": key " + quote(key) + ": element " + std::to_string(k) + " is " +
                              num(v->uints[k]) + ", over 2^63 - 1");
    }
    out.push_back(static_cast<int64_t>(v->uints[k]));
  }
  return out;
}

}  // namespace kiln
