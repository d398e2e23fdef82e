// A tensor as the KServe v2 protocol carries it (HTTP JSON / binary extension, gRPC raw contents),
// independent of either transport: a name, a datatype name, a shape and little-endian bytes.
#pragma once

#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "core/status.h"

namespace kiln::server {

enum class TensorType { kBool, kUint8, kUint16, kUint32, kUint64, kInt8, kInt16, kInt32, kInt64,
                        kFp16, kBf16, kFp32, kFp64, kBytes };

// "INT32" <-> kInt32 (KServe v2 names); nullopt for an unknown name.
std::optional<TensorType> tensor_type_from_name(const std::string& name);
const char* tensor_type_name(TensorType t);
// Bytes per element; 0 for BYTES (length-prefixed strings).
size_t tensor_type_size(TensorType t);

struct InferTensor {
  std::string name;
  TensorType type = TensorType::kInt32;
  std::vector<int64_t> shape;
  std::string data;  // raw little-endian elements (BYTES: 4-byte length + bytes, per element)

  // Elements implied by the shape, with checked arithmetic; an error for negative or overflowing dims.
  Result<int64_t> num_elements() const;
  // Checks that `data` holds exactly the elements the shape says (BYTES: walks the length prefixes).
  Status validate() const;

  // Typed views and builders (the caller has validated the tensor).
  template <typename T>
  std::vector<T> values() const {
    std::vector<T> v(data.size() / sizeof(T));
    if (!v.empty()) std::memcpy(v.data(), data.data(), v.size() * sizeof(T));
    return v;
  }
  template <typename T>
  static InferTensor make(std::string name, TensorType type, std::vector<int64_t> shape, const std::vector<T>& v) {
    InferTensor t{std::move(name), type, std::move(shape), {}};
    t.data.assign(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
    return t;
  }
  // BYTES elements, each as a string.
  Result<std::vector<std::string>> strings() const;
  static InferTensor make_strings(std::string name, std::vector<int64_t> shape, const std::vector<std::string>& v);
};

std::string shape_string(const std::vector<int64_t>& shape);

}  // namespace kiln::server
