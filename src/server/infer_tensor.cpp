#include "server/infer_tensor.h"

#include <climits>
#include <cstring>

#include "core/checked_math.h"

namespace kiln::server {

namespace {

struct TypeInfo {
  TensorType type;
  const char* name;
  size_t size;
};

constexpr TypeInfo kTypes[] = {
    {TensorType::kBool, "BOOL", 1},   {TensorType::kUint8, "UINT8", 1},   {TensorType::kUint16, "UINT16", 2},
    {TensorType::kUint32, "UINT32", 4}, {TensorType::kUint64, "UINT64", 8}, {TensorType::kInt8, "INT8", 1},
    {TensorType::kInt16, "INT16", 2}, {TensorType::kInt32, "INT32", 4},   {TensorType::kInt64, "INT64", 8},
    {TensorType::kFp16, "FP16", 2},   {TensorType::kBf16, "BF16", 2},     {TensorType::kFp32, "FP32", 4},
    {TensorType::kFp64, "FP64", 8},   {TensorType::kBytes, "BYTES", 0},
};

}  // namespace

std::optional<TensorType> tensor_type_from_name(const std::string& name) {
  for (const TypeInfo& t : kTypes)
    if (name == t.name) return t.type;
  return std::nullopt;
}

const char* tensor_type_name(TensorType type) {
  for (const TypeInfo& t : kTypes)
    if (t.type == type) return t.name;
  return "?";
}

size_t tensor_type_size(TensorType type) {
  for (const TypeInfo& t : kTypes)
    if (t.type == type) return t.size;
  return 0;
}

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? "," : "") + std::to_string(shape[i]);
  return s + "]";
}

Result<int64_t> InferTensor::num_elements() const {
  for (int64_t d : shape)
    if (d < 0) return invalid_argument("input '" + name + "': shape " + shape_string(shape) + " has a negative dimension");
  auto n = checked_product(shape);
  if (!n || *n > static_cast<uint64_t>(INT64_MAX))
    return invalid_argument("input '" + name + "': shape " + shape_string(shape) + " overflows 64-bit element counts");
  return static_cast<int64_t>(*n);
}

Status InferTensor::validate() const {
  KILN_ASSIGN_OR_RETURN(int64_t n, num_elements());
  if (type == TensorType::kBytes) {
    size_t off = 0;
    for (int64_t i = 0; i < n; ++i) {
      uint32_t len = 0;
      if (data.size() - off < 4)
        return invalid_argument("input '" + name + "': BYTES data holds fewer than the " + std::to_string(n) +
                                " elements of shape " + shape_string(shape));
      std::memcpy(&len, data.data() + off, 4);
      off += 4;
      if (data.size() - off < len) return invalid_argument("input '" + name + "': a BYTES element runs past the data");
      off += len;
    }
    if (off != data.size()) return invalid_argument("input '" + name + "': BYTES data is longer than its shape says");
    return {};
  }
  const auto bytes = checked_mul(static_cast<uint64_t>(n), tensor_type_size(type));
  if (!bytes || *bytes != data.size())
    return invalid_argument("input '" + name + "': " + std::to_string(data.size()) + " bytes of data for shape " +
                            shape_string(shape) + " of " + tensor_type_name(type) +
                            (bytes ? " (expected " + std::to_string(*bytes) + ")" : std::string(" (overflows)")));
  return {};
}

Result<std::vector<std::string>> InferTensor::strings() const {
  if (type != TensorType::kBytes) return invalid_argument("input '" + name + "' must be BYTES");
  KILN_RETURN_IF_ERROR(validate());
  std::vector<std::string> out;
  for (size_t off = 0; off < data.size();) {
    uint32_t len = 0;
    std::memcpy(&len, data.data() + off, 4);
    out.push_back(data.substr(off + 4, len));
    off += 4 + len;
  }
  return out;
}

InferTensor InferTensor::make_strings(std::string name, std::vector<int64_t> shape, const std::vector<std::string>& v) {
  InferTensor t{std::move(name), TensorType::kBytes, std::move(shape), {}};
  for (const std::string& s : v) {
    const uint32_t len = static_cast<uint32_t>(s.size());
    t.data.append(reinterpret_cast<const char*>(&len), 4);
    t.data += s;
  }
  return t;
}

}  // namespace kiln::server
