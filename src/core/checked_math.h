// Overflow-checked size arithmetic for untrusted counts, shapes and offsets.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <optional>

namespace kiln {

inline std::optional<uint64_t> checked_add(uint64_t a, uint64_t b) {
  uint64_t r;
  if (__builtin_add_overflow(a, b, &r)) return std::nullopt;
  return r;
}
inline std::optional<uint64_t> checked_mul(uint64_t a, uint64_t b) {
  uint64_t r;
  if (__builtin_mul_overflow(a, b, &r)) return std::nullopt;
  return r;
}
// Product of non-negative dims; nullopt on a negative dim or overflow.
template <typename Range>
std::optional<uint64_t> checked_product(const Range& dims) {
  uint64_t r = 1;
  for (auto d : dims) {
    if (d < 0) return std::nullopt;
    auto m = checked_mul(r, static_cast<uint64_t>(d));
    if (!m) return std::nullopt;
    r = *m;
  }
  return r;
}

inline uint64_t round_up(uint64_t x, uint64_t to) { return (x + to - 1) / to * to; }

}  // namespace kiln
