// safetensors reading (validated, zero-copy over a memory map) and writing.
//
// Format: an 8-byte little-endian header length N, N bytes of UTF-8 JSON, then the data buffer.
// The JSON is an object: "__metadata__" (optional, string -> string) and, for every tensor,
//   "name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}
// with offsets relative to the start of the data buffer.
//
// Every number in a header is untrusted: all of it is checked before any pointer is formed, so a
// malformed file yields a DataLoss status naming the file and the tensor or field, never a crash.
// Tensor data in a file need not be aligned for its dtype: read it with memcpy (HfCheckpoint::read_as
// does), not through a typed pointer, unless you have checked the alignment.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "core/dtype.h"
#include "core/status.h"
#include "core/tensor.h"
#include "io/mapped_file.h"

namespace kiln {

// Makes untrusted text safe to put in an error message: at most `max_bytes` of input (then "..."), valid
// UTF-8 kept, control characters and invalid bytes written as \xNN. Messages may end up in JSON replies.
std::string printable_for_message(std::string_view s, size_t max_bytes = 200);

// Largest header accepted (the same limit as the reference implementation).
constexpr uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;

struct SafetensorsEntry {
  std::string name;
  DType dtype = DType::kF32;
  Shape shape;
  const void* data = nullptr;  // inside the file's mapping; possibly unaligned; may be null when nbytes == 0
  size_t nbytes = 0;
};

// One tensor of a validated header: offsets relative to the data buffer.
struct SafetensorsHeaderEntry {
  std::string name;
  DType dtype = DType::kF32;
  Shape shape;
  uint64_t begin = 0;
  uint64_t end = 0;
};

struct SafetensorsHeader {
  std::vector<SafetensorsHeaderEntry> entries;  // sorted by (begin, end, name)
  std::map<std::string, std::string> metadata;
};

// Validates the JSON header `json` of a file whose data buffer holds `data_size` bytes. `label` (usually
// the file's path) starts every error message. Errors are DataLoss. No file is needed: tests and fuzzers
// feed bytes directly.
Result<SafetensorsHeader> parse_safetensors_header(std::string_view json, uint64_t data_size,
                                                   const std::string& label);

// A whole safetensors file held in memory by the caller; entries point into `bytes`.
struct SafetensorsContents {
  uint64_t header_size = 0;                 // N, the JSON length
  std::vector<SafetensorsEntry> entries;    // sorted by offset
  std::map<std::string, std::string> metadata;
};

// Validates a complete file image (length prefix, header, offsets). Errors are DataLoss.
Result<SafetensorsContents> parse_safetensors(const uint8_t* bytes, size_t size, const std::string& label);

class SafetensorsFile {
 public:
  // Maps and fully validates `path`. Errors name the file and the tensor or field, e.g.
  // "model.safetensors: tensor 'lm_head.weight': data_offsets [0, 4096] do not match shape [64, 32] of F32
  // (8192 bytes)".
  static Result<SafetensorsFile> open(const std::string& path);

  const std::vector<SafetensorsEntry>& entries() const { return entries_; }  // in file order of offsets
  const SafetensorsEntry* find(std::string_view name) const;                  // null if absent
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::string& path() const { return file_.path(); }

 private:
  SafetensorsFile() = default;

  MappedFile file_;
  std::vector<SafetensorsEntry> entries_;
  std::map<std::string, std::string> metadata_;
  std::map<std::string, size_t, std::less<>> index_;  // name -> position in entries_
};

struct SafetensorsTensorToWrite {
  std::string name;
  DType dtype = DType::kF32;
  Shape shape;
  const void* data = nullptr;  // numel * dtype_size bytes, host byte order (little-endian)
};

// Writes a standard safetensors file: header JSON with entries sorted by name (as the Python library does),
// padded with spaces to a multiple of 8 bytes, then the data contiguous in header order. "__metadata__" is
// written only when `metadata` is non-empty. Writes path + ".tmp", then renames it over `path`.
// InvalidArgument: duplicate or reserved ("__metadata__") names, names or metadata that are not valid UTF-8,
// a negative dim, a size that overflows, null data for a non-empty tensor.
Status write_safetensors(const std::string& path, const std::vector<SafetensorsTensorToWrite>& tensors,
                         const std::map<std::string, std::string>& metadata = {});

}  // namespace kiln
