#include "core/tensor.h"

#include <cstdlib>
#include <new>

#include "core/checked_math.h"

namespace kiln {

std::string Shape::to_string() const {
  std::string s = "[";
  for (int i = 0; i < ndim; ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

Tensor Tensor::rows(int64_t begin, int64_t end) const {
  KILN_CHECK(shape.ndim >= 1 && begin >= 0 && begin <= end && end <= shape[0], "row range out of bounds");
  Tensor t = *this;
  int64_t row_elems = shape[0] ? numel() / shape[0] : 0;
  t.data = static_cast<char*>(data) + begin * row_elems * static_cast<int64_t>(dtype_size(dtype));
  t.shape.dims[0] = end - begin;
  return t;
}

Tensor Tensor::reshaped(Shape s) const {
  KILN_CHECK(s.numel() == numel(), "reshape changes element count");
  Tensor t = *this;
  t.shape = s;
  return t;
}

HostBuffer::HostBuffer(size_t bytes) : bytes_(bytes) {
  size_t rounded = round_up(bytes ? bytes : 1, 64);
  void* p = std::aligned_alloc(64, rounded);
  if (!p) throw std::bad_alloc();
  mem_.reset(p);
}

void HostBuffer::Free::operator()(void* p) const { std::free(p); }

Tensor HostBuffer::view(DType dtype, Shape shape) const {
  Tensor t{data(), dtype, shape};
  KILN_CHECK(t.nbytes() <= bytes_, "view larger than buffer");
  return t;
}

}  // namespace kiln
