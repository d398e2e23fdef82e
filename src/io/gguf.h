// GGUF reading (versions 2 and 3), validated and zero-copy over a memory map.
//
// Layout (all little-endian): "GGUF", u32 version, u64 tensor count, u64 key/value count; the key/value
// pairs (string key, u32 value type, value); the tensor infos (string name, u32 n_dims, u64 dims[n_dims]
// with dims[0] the row length, u32 ggml type id, u64 offset from the start of the data section); padding
// to `general.alignment` (default 32); the data section. A string is a u64 length and that many bytes (no
// terminator); an array is a u32 element type, a u64 count and the elements.
//
// Every count, length and offset in the file is untrusted and is checked against the bytes that remain
// before anything is allocated, so a malformed file yields a DataLoss status (Unimplemented for a tensor
// type Kiln does not read) naming the file, the key or tensor and the offending value, never a crash.
// Tensor data is as aligned as the file says (general.alignment, relative to the start of the file's
// mapping, which is page-aligned), but read it with memcpy unless you checked.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/quant.h"
#include "core/status.h"
#include "io/mapped_file.h"

namespace kiln {

// GGUF value types, with GGUF's numbers.
enum class GgufType : uint32_t {
  kU8 = 0,
  kI8 = 1,
  kU16 = 2,
  kI16 = 3,
  kU32 = 4,
  kI32 = 5,
  kF32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kU64 = 10,
  kI64 = 11,
  kF64 = 12,
};

// "u8", "i32", "f32", "bool", "string", "array", ...
const char* gguf_type_name(GgufType t);

// Limits on untrusted files. Keys and tensor names are at most 65535 bytes (the GGUF spec's limit);
// other strings are bounded only by the file. Arrays nest at most kMaxGgufArrayDepth deep (an array of
// arrays of scalars is depth 2).
constexpr uint64_t kMaxGgufKeyBytes = 65535;
constexpr int kMaxGgufArrayDepth = 8;
constexpr int kMaxGgufDims = 4;
constexpr uint64_t kDefaultGgufAlignment = 32;

// One metadata value. Scalars live in the field their type picks; an array has `elem_type` and its
// elements in the one vector that type picks (ints of every width widened, f32 widened exactly).
struct GgufValue {
  GgufType type = GgufType::kU8;
  uint64_t u = 0;      // u8, u16, u32, u64; bool (0 or 1)
  int64_t i = 0;       // i8, i16, i32, i64
  double f = 0;        // f32, f64
  std::string s;       // string

  GgufType elem_type = GgufType::kU8;  // arrays only
  std::vector<uint64_t> uints;         // elements of unsigned and bool arrays
  std::vector<int64_t> ints;           // signed
  std::vector<double> floats;          // f32 and f64
  std::vector<std::string> strings;    // string
  std::vector<GgufValue> arrays;       // array (nested)

  bool is_array() const { return type == GgufType::kArray; }
  size_t array_size() const;
  // "u32", "string", "array of string", "array of array of i32"
  std::string type_description() const;
};

struct GgufTensorInfo {
  std::string name;
  GgmlType type = GgmlType::kF32;
  std::vector<int64_t> dims;  // GGUF order: dims[0] is the row length (the fastest-varying dim)
  uint64_t offset = 0;        // absolute in the file
  uint64_t nbytes = 0;
  const void* data = nullptr;  // inside the mapping

  int64_t numel() const;
};

class GgufFile {
 public:
  // Maps and fully validates `path`. Errors: those of MappedFile::open; DataLoss for a malformed or
  // truncated file; Unimplemented for GGUF v1, a big-endian file or a tensor type Kiln does not read.
  static Result<std::shared_ptr<GgufFile>> open(const std::string& path);

  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  const std::string& path() const { return file_.path(); }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }  // start of the data section in the file

  // Metadata in file order; find() is null when the key is absent.
  const std::vector<std::pair<std::string, GgufValue>>& metadata() const { return kvs_; }
  const GgufValue* find(std::string_view key) const;

  // Typed getters. A missing key is NotFound naming it; a value of another type is InvalidArgument
  // naming the key, the expected and the actual type.
  Result<std::string> get_string(std::string_view key) const;
  // Any integer type whose value is >= 0 (a negative one is InvalidArgument).
  Result<uint64_t> get_uint(std::string_view key) const;
  // f32 or f64, or any integer type (converted to the nearest double).
  Result<double> get_float(std::string_view key) const;
  Result<bool> get_bool(std::string_view key) const;
  Result<std::vector<std::string>> get_string_array(std::string_view key) const;
  // An array of f32 (exact) or f64 (rounded to float).
  Result<std::vector<float>> get_float_array(std::string_view key) const;
  // An array of any integer type; u64 elements above INT64_MAX are InvalidArgument.
  Result<std::vector<int64_t>> get_int_array(std::string_view key) const;

  // Tensors in file order (of their infos); find_tensor() is null when absent.
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* find_tensor(std::string_view name) const;

 private:
  GgufFile() = default;

  MappedFile file_;
  uint32_t version_ = 0;
  uint64_t alignment_ = kDefaultGgufAlignment;
  uint64_t data_offset_ = 0;
  std::vector<std::pair<std::string, GgufValue>> kvs_;
  std::map<std::string, size_t, std::less<>> kv_index_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> tensor_index_;
};

}  // namespace kiln
