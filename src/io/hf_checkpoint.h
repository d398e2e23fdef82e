// HfCheckpoint: the weights of a Hugging Face model folder, in safetensors form.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/dtype.h"
#include "core/status.h"
#include "core/tensor.h"
#include "io/safetensors.h"

namespace kiln {

class HfCheckpoint {
 public:
  // Opens the weights of folder `dir`, first match wins:
  //  1. model.safetensors;
  //  2. model.safetensors.index.json + the shards its "weight_map" (tensor name -> shard file) names. Every
  //     shard must be a plain file name inside the folder (no '/', '\', "." or ".."), must exist and must
  //     hold every tensor the index assigns to it. Tensors a shard holds but the index does not list are
  //     ignored;
  //  3. exactly one *.safetensors file of any name.
  // Errors: NotFound when the folder is missing or holds no safetensors weights (the message says so and,
  // if pytorch_model.bin is there, that it is not supported); InvalidArgument for a non-folder or several
  // *.safetensors files without an index; DataLoss for a bad index or shard.
  static Result<HfCheckpoint> open(const std::string& dir);

  const SafetensorsEntry* find(std::string_view name) const;  // null if absent
  std::vector<std::string> names() const;                     // all tensor names, sorted
  size_t size() const { return tensors_.size(); }
  const std::string& dir() const { return dir_; }
  std::vector<std::string> shard_paths() const;  // the files opened, in the order opened

  // Reads tensor `name` converted to float dtype `to` into a new host buffer (numel * dtype_size(to) bytes).
  // NotFound: no such tensor. InvalidArgument: `to` or the stored dtype is not a float type.
  Result<HostBuffer> read_as(std::string_view name, DType to) const;

 private:
  HfCheckpoint() = default;

  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> shards_;  // heap objects: entry pointers survive moves
  std::map<std::string, const SafetensorsEntry*, std::less<>> tensors_;
};

}  // namespace kiln
