#include "core/dtype.h"

#include <cmath>

namespace kiln {

namespace {
struct DTypeInfo {
  DType type;
  size_t size;
  const char* name;
  const char* st_name;
};
constexpr DTypeInfo kInfos[] = {
    {DType::kF32, 4, "float32", "F32"}, {DType::kF16, 2, "float16", "F16"},
    {DType::kBF16, 2, "bfloat16", "BF16"}, {DType::kF64, 8, "float64", "F64"},
    {DType::kI64, 8, "int64", "I64"},   {DType::kI32, 4, "int32", "I32"},
    {DType::kI16, 2, "int16", "I16"},   {DType::kI8, 1, "int8", "I8"},
    {DType::kU8, 1, "uint8", "U8"},     {DType::kBool, 1, "bool", "BOOL"},
};
const DTypeInfo& info(DType t) { return kInfos[static_cast<int>(t)]; }
}  // namespace

size_t dtype_size(DType t) { return info(t).size; }
const char* dtype_name(DType t) { return info(t).name; }
const char* dtype_safetensors_name(DType t) { return info(t).st_name; }

std::optional<DType> dtype_from_name(std::string_view name) {
  for (const auto& i : kInfos)
    if (name == i.name) return i.type;
  return std::nullopt;
}
std::optional<DType> dtype_from_safetensors(std::string_view name) {
  for (const auto& i : kInfos)
    if (name == i.st_name) return i.type;
  return std::nullopt;
}

float f16_to_f32(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: renormalize
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while ((mant & 0x400u) == 0);
      bits = sign | static_cast<uint32_t>(127 - 15 - e) << 23 | (mant & 0x3ffu) << 13;
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | mant << 13;
  } else {
    bits = sign | (exp + 127 - 15) << 23 | mant << 13;
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t f32_to_f16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  uint32_t abs = bits & 0x7fffffffu;
  if (abs > 0x7f800000u) return sign | 0x7e00u;  // NaN
  if (abs >= 0x477ff000u) return sign | 0x7c00u;  // rounds to inf
  if (abs < 0x38800000u) {                         // subnormal or zero in half
    // value = abs_float; half subnormal unit is 2^-24
    float a;
    std::memcpy(&a, &abs, 4);
    float scaled = a * 16777216.0f;  // exact: times 2^24
    return sign | static_cast<uint16_t>(std::nearbyint(scaled));
  }
  uint32_t mant = abs & 0x7fffffu;
  uint32_t exp = (abs >> 23) - 127 + 15;
  uint32_t half = exp << 10 | mant >> 13;
  uint32_t rest = mant & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (half & 1u))) ++half;
  return sign | static_cast<uint16_t>(half);
}

namespace {
double load_float(const void* p, DType t, size_t i) {
  switch (t) {
    case DType::kF32: return static_cast<const float*>(p)[i];
    case DType::kF64: return static_cast<const double*>(p)[i];
    case DType::kF16: return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case DType::kBF16: return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
    default: return 0;
  }
}
}  // namespace

bool convert_floats(const void* src, DType st, void* dst, DType dt, size_t n) {
  if (!dtype_is_float(st) || !dtype_is_float(dt)) return false;
  if (st == dt) {
    std::memcpy(dst, src, n * dtype_size(st));
    return true;
  }
  for (size_t i = 0; i < n; ++i) {
    double v = load_float(src, st, i);
    switch (dt) {
      case DType::kF32: static_cast<float*>(dst)[i] = static_cast<float>(v); break;
      case DType::kF64: static_cast<double*>(dst)[i] = v; break;
      case DType::kF16: static_cast<uint16_t*>(dst)[i] = f32_to_f16(static_cast<float>(v)); break;
      case DType::kBF16: static_cast<uint16_t*>(dst)[i] = f32_to_bf16(static_cast<float>(v)); break;
      default: return false;
    }
  }
  return true;
}

}  // namespace kiln
