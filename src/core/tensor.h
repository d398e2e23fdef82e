// Tensor: a typed, shaped, contiguous (row-major) view of memory that someone else owns.
// On the CPU backend `data` is host memory; on a GPU backend it is device memory.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/status.h"

namespace kiln {

constexpr int kMaxDims = 6;

struct Shape {
  std::array<int64_t, kMaxDims> dims{};
  int ndim = 0;

  Shape() = default;
  Shape(std::initializer_list<int64_t> d) {
    KILN_CHECK(d.size() <= kMaxDims, "too many dims");
    for (int64_t v : d) dims[ndim++] = v;
  }
  static Shape from(const std::vector<int64_t>& d) {
    Shape s;
    KILN_CHECK(d.size() <= kMaxDims, "too many dims");
    for (int64_t v : d) s.dims[s.ndim++] = v;
    return s;
  }
  int64_t operator[](int i) const { return dims[i < 0 ? ndim + i : i]; }
  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= dims[i];
    return n;
  }
  std::vector<int64_t> to_vector() const { return {dims.begin(), dims.begin() + ndim}; }
  bool operator==(const Shape& o) const {
    if (ndim != o.ndim) return false;
    for (int i = 0; i < ndim; ++i)
      if (dims[i] != o.dims[i]) return false;
    return true;
  }
  bool operator!=(const Shape& o) const { return !(*this == o); }
  std::string to_string() const;
};

struct Tensor {
  void* data = nullptr;
  DType dtype = DType::kF32;
  Shape shape;

  int64_t numel() const { return shape.numel(); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype); }
  int64_t dim(int i) const { return shape[i]; }
  template <typename T>
  T* as() const { return static_cast<T*>(data); }
  // Rows [begin, end) of the leading dimension.
  Tensor rows(int64_t begin, int64_t end) const;
  Tensor reshaped(Shape s) const;
};

// Owned, 64-byte aligned host memory.
class HostBuffer {
 public:
  HostBuffer() = default;
  explicit HostBuffer(size_t bytes);
  void* data() const { return mem_.get(); }
  size_t size() const { return bytes_; }
  Tensor view(DType dtype, Shape shape) const;

 private:
  struct Free {
    void operator()(void* p) const;
  };
  std::unique_ptr<void, Free> mem_;
  size_t bytes_ = 0;
};

}  // namespace kiln
