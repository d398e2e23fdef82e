// Element types and scalar conversions (IEEE half, bfloat16).
#pragma once

#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>

namespace kiln {

enum class DType : uint8_t { kF32, kF16, kBF16, kF64, kI64, kI32, kI16, kI8, kU8, kBool };

size_t dtype_size(DType t);
// Kiln's own lower-case names: "float32", "float16", "bfloat16", "int32", ...
const char* dtype_name(DType t);
std::optional<DType> dtype_from_name(std::string_view name);
// safetensors spellings: "F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL".
const char* dtype_safetensors_name(DType t);
std::optional<DType> dtype_from_safetensors(std::string_view name);
inline bool dtype_is_float(DType t) {
  return t == DType::kF32 || t == DType::kF16 || t == DType::kBF16 || t == DType::kF64;
}

// bfloat16 <-> float. Narrowing rounds to nearest even; NaN stays NaN.
inline float bf16_to_f32(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
inline uint16_t f32_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);  // quiet NaN
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

// IEEE 754 binary16 <-> float, exact widening, round-to-nearest-even narrowing.
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

// Converts n elements between float types (F32/F16/BF16/F64). Returns false for other types.
bool convert_floats(const void* src, DType src_type, void* dst, DType dst_type, size_t n);

}  // namespace kiln
