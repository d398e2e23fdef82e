// The engine file (rank<N>.engine): a versioned container of named, 64-byte aligned, checksummed tensors.
//
//   [0, 8)    magic "KILNENG\0"
//   [8, 12)   u32 format version (kEngineFileVersion)
//   [12, 16)  u32 header bytes (JSON)
//   [16, ..)  header JSON: {"tensors": [{name, dtype, shape, layout, offset, nbytes, xxh3}], "file_bytes"}
//   then tensor data, each at a 64-byte aligned absolute offset.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"
#include "io/mapped_file.h"

namespace kiln {

constexpr uint32_t kEngineFileVersion = 1;

struct EngineTensor {
  std::string name;
  DType dtype = DType::kF32;  // element type
  Shape shape;                // logical shape (e.g. [out, in] of a linear layer)
  std::string layout;         // "plain" (row-major) or a backend packing such as "cpu_panel16_v1"
  const void* data = nullptr;
  size_t nbytes = 0;
};

class EngineFileWriter {
 public:
  // `data` must stay valid until write() returns.
  void add(EngineTensor tensor) { tensors_.push_back(std::move(tensor)); }
  Status write(const std::string& path) const;

 private:
  std::vector<EngineTensor> tensors_;
};

class EngineFile {
 public:
  // Maps the file and checks magic, version, header, every tensor's bounds, alignment and checksum.
  static Result<std::shared_ptr<EngineFile>> open(const std::string& path);
  const EngineTensor* find(const std::string& name) const;
  const std::vector<EngineTensor>& tensors() const { return tensors_; }
  const std::string& path() const { return file_.path(); }

 private:
  MappedFile file_;
  std::vector<EngineTensor> tensors_;
  std::map<std::string, size_t> index_;
};

}  // namespace kiln
