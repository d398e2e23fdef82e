#include "core/quant.h"

#include <algorithm>
#include <bit>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <string>
#include <utility>

#include "core/checked_math.h"
#include "core/dtype.h"
#include "core/status.h"

namespace kiln {

// Blocks are read byte by byte with little-endian loads of their half and 32-bit fields.
static_assert(std::endian::native == std::endian::little, "Kiln's block formats assume a little-endian host");

namespace {

struct TypeInfo {
  GgmlType type;
  const char* name;
  const char* lower;
  int64_t block_elems;
  int64_t block_bytes;
};

constexpr TypeInfo kTypes[] = {
    {GgmlType::kF32, "F32", "f32", 1, 4},         {GgmlType::kF16, "F16", "f16", 1, 2},
    {GgmlType::kQ4_0, "Q4_0", "q4_0", 32, 18},    {GgmlType::kQ4_1, "Q4_1", "q4_1", 32, 20},
    {GgmlType::kQ5_0, "Q5_0", "q5_0", 32, 22},    {GgmlType::kQ5_1, "Q5_1", "q5_1", 32, 24},
    {GgmlType::kQ8_0, "Q8_0", "q8_0", 32, 34},    {GgmlType::kQ4_K, "Q4_K", "q4_k", 256, 144},
    {GgmlType::kQ5_K, "Q5_K", "q5_k", 256, 176},  {GgmlType::kQ6_K, "Q6_K", "q6_k", 256, 210},
    {GgmlType::kBF16, "BF16", "bf16", 1, 2},
};

const TypeInfo* find_info(GgmlType t) {
  for (const auto& i : kTypes)
    if (i.type == t) return &i;
  return nullptr;
}

// A GgmlType value outside the enum can only come from a bad cast: a bug, not input.
const TypeInfo& info(GgmlType t) {
  const TypeInfo* i = find_info(t);
  KILN_CHECK(i != nullptr, "GgmlType " + std::to_string(static_cast<uint32_t>(t)) + " is not a type Kiln knows");
  return *i;
}

inline float half_at(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}

inline uint32_t u32_at(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// In every block format below the products (half scale) x (small integer), and for the K-quants
// (half) x (6-bit scale) x (small integer), need at most 24 significant bits, so they are exact in f32:
// only a final "+ m" / "- min" rounds. Any evaluation order therefore gives ggml's bits.

void dequant_q4_0(const uint8_t* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, b += 18, y += 32) {
    const float d = half_at(b);
    const uint8_t* qs = b + 2;
    for (int j = 0; j < 16; ++j) {
      y[j] = static_cast<float>((qs[j] & 0x0f) - 8) * d;
      y[j + 16] = static_cast<float>((qs[j] >> 4) - 8) * d;
    }
  }
}

void dequant_q4_1(const uint8_t* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, b += 20, y += 32) {
    const float d = half_at(b);
    const float m = half_at(b + 2);
    const uint8_t* qs = b + 4;
    for (int j = 0; j < 16; ++j) {
      y[j] = static_cast<float>(qs[j] & 0x0f) * d + m;
      y[j + 16] = static_cast<float>(qs[j] >> 4) * d + m;
    }
  }
}

void dequant_q5_0(const uint8_t* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, b += 22, y += 32) {
    const float d = half_at(b);
    const uint32_t qh = u32_at(b + 2);
    const uint8_t* qs = b + 6;
    for (int j = 0; j < 16; ++j) {
      const int lo = (qs[j] & 0x0f) | static_cast<int>((qh >> j) & 1u) << 4;
      const int hi = (qs[j] >> 4) | static_cast<int>((qh >> (j + 16)) & 1u) << 4;
      y[j] = static_cast<float>(lo - 16) * d;
      y[j + 16] = static_cast<float>(hi - 16) * d;
    }
  }
}

void dequant_q5_1(const uint8_t* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, b += 24, y += 32) {
    const float d = half_at(b);
    const float m = half_at(b + 2);
    const uint32_t qh = u32_at(b + 4);
    const uint8_t* qs = b + 8;
    for (int j = 0; j < 16; ++j) {
      const int lo = (qs[j] & 0x0f) | static_cast<int>((qh >> j) & 1u) << 4;
      const int hi = (qs[j] >> 4) | static_cast<int>((qh >> (j + 16)) & 1u) << 4;
      y[j] = static_cast<float>(lo) * d + m;
      y[j + 16] = static_cast<float>(hi) * d + m;
    }
  }
}

void dequant_q8_0(const uint8_t* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, b += 34, y += 32) {
    const float d = half_at(b);
    const auto* qs = reinterpret_cast<const int8_t*>(b + 2);
    for (int j = 0; j < 32; ++j) y[j] = static_cast<float>(qs[j]) * d;
  }
}

// The 6-bit scale and min of sub-block j (0..7) of a Q4_K/Q5_K block, packed into 12 bytes: sub-blocks
// 0..3 keep both in the low 6 bits of bytes j (scale) and j + 4 (min); sub-blocks 4..7 keep their low 4
// bits in byte j + 4 (scale: low nibble, min: high nibble) and their top 2 bits in the spare bits 6..7 of
// bytes j - 4 (scale) and j (min).
inline void k_scale_min(const uint8_t* s, int j, int& scale, int& min) {
  if (j < 4) {
    scale = s[j] & 63;
    min = s[j + 4] & 63;
  } else {
    scale = (s[j + 4] & 0x0f) | (s[j - 4] >> 6) << 4;
    min = (s[j + 4] >> 4) | (s[j] >> 6) << 4;
  }
}

// Sub-block j's scale and min in f32: d * its 6-bit scale, dmin * its 6-bit min.
std::pair<float, float> k_sub_block(const uint8_t* scales, int j, float d, float dmin) {
  int sc, m;
  k_scale_min(scales, j, sc, m);
  return {d * static_cast<float>(sc), dmin * static_cast<float>(m)};
}

void dequant_q4_k(const uint8_t* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, b += 144) {
    const float d = half_at(b);
    const float dmin = half_at(b + 2);
    const uint8_t* scales = b + 4;
    const uint8_t* qs = b + 16;
    // Four chunks of 64 values: the low nibbles of 32 bytes are one sub-block, their high nibbles the next.
    for (int c = 0; c < 4; ++c, qs += 32, y += 64) {
      const auto [d_lo, m_lo] = k_sub_block(scales, 2 * c, d, dmin);
      const auto [d_hi, m_hi] = k_sub_block(scales, 2 * c + 1, d, dmin);
      for (int l = 0; l < 32; ++l) {
        y[l] = d_lo * static_cast<float>(qs[l] & 0x0f) - m_lo;
        y[l + 32] = d_hi * static_cast<float>(qs[l] >> 4) - m_hi;
      }
    }
  }
}

void dequant_q5_k(const uint8_t* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, b += 176) {
    const float d = half_at(b);
    const float dmin = half_at(b + 2);
    const uint8_t* scales = b + 4;
    const uint8_t* qh = b + 16;
    const uint8_t* qs = b + 48;
    // As Q4_K, plus a fifth bit per value: bit s of qh[l] belongs to value l of sub-block s.
    for (int c = 0; c < 4; ++c, qs += 32, y += 64) {
      const auto [d_lo, m_lo] = k_sub_block(scales, 2 * c, d, dmin);
      const auto [d_hi, m_hi] = k_sub_block(scales, 2 * c + 1, d, dmin);
      const int s_lo = 2 * c, s_hi = 2 * c + 1;
      for (int l = 0; l < 32; ++l) {
        const int lo = (qs[l] & 0x0f) | ((qh[l] >> s_lo) & 1) << 4;
        const int hi = (qs[l] >> 4) | ((qh[l] >> s_hi) & 1) << 4;
        y[l] = d_lo * static_cast<float>(lo) - m_lo;
        y[l + 32] = d_hi * static_cast<float>(hi) - m_hi;
      }
    }
  }
}

void dequant_q6_k(const uint8_t* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, b += 210) {
    const uint8_t* ql = b;
    const uint8_t* qh = b + 128;
    const auto* scales = reinterpret_cast<const int8_t*>(b + 192);
    const float d = half_at(b + 208);
    // Two halves of 128 values, each from 64 ql bytes (nibbles) and 32 qh bytes (2 bits per value), in
    // four runs of 32: low nibbles of ql[0..31], of ql[32..63], high nibbles of ql[0..31], of ql[32..63],
    // with qh bits 0-1, 2-3, 4-5, 6-7. Each run of 16 values has its own int8 scale.
    for (int h = 0; h < 2; ++h, ql += 64, qh += 32, scales += 8, y += 128) {
      for (int l = 0; l < 32; ++l) {
        const int s = l / 16;
        const int q0 = ((ql[l] & 0x0f) | ((qh[l] >> 0) & 3) << 4) - 32;
        const int q1 = ((ql[l + 32] & 0x0f) | ((qh[l] >> 2) & 3) << 4) - 32;
        const int q2 = ((ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4) - 32;
        const int q3 = ((ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4) - 32;
        y[l] = d * static_cast<float>(scales[s]) * static_cast<float>(q0);
        y[l + 32] = d * static_cast<float>(scales[s + 2]) * static_cast<float>(q1);
        y[l + 64] = d * static_cast<float>(scales[s + 4]) * static_cast<float>(q2);
        y[l + 96] = d * static_cast<float>(scales[s + 6]) * static_cast<float>(q3);
      }
    }
  }
}

// The quantizers reproduce ggml's reference ones (ggml-quants.c, *_ref) step for step: the same f32
// operations in the same order, the scale used unrounded for the codes and stored as half (round to
// nearest even), so that the bytes match what ggml and gguf-py write.

// The reference rounds x * id before adding the offset. Where FMA is enabled, -ffp-contract=fast (GCC's
// default in GNU mode) may fuse the two into one rounding and change some codes; the empty asm keeps
// the rounded product.
inline float rounded(float p) {
#if defined(__FMA__) && (defined(__x86_64__) || defined(__i386__))
  __asm__("" : "+x"(p));
#elif defined(__aarch64__)
  __asm__("" : "+w"(p));
#endif
  return p;
}

void quant_q8_0(const float* x, uint8_t* b, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += 32, b += 34) {
    float amax = 0.0f;
    for (int j = 0; j < 32; ++j) {
      const float a = std::fabs(x[j]);
      amax = amax > a ? amax : a;
    }
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const uint16_t dh = f32_to_f16(d);
    std::memcpy(b, &dh, 2);
    // roundf: halves away from zero, as ggml (not nearbyint's ties-to-even).
    for (int j = 0; j < 32; ++j) b[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(std::roundf(x[j] * id)));
  }
}

void quant_q4_0(const float* x, uint8_t* b, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += 32, b += 18) {
    // The value of largest magnitude (the first one on ties) maps to code 0, i.e. -8 * d.
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < 32; ++j) {
      if (amax < std::fabs(x[j])) {
        amax = std::fabs(x[j]);
        max = x[j];
      }
    }
    const float d = max / -8.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const uint16_t dh = f32_to_f16(d);
    std::memcpy(b, &dh, 2);
    for (int j = 0; j < 16; ++j) {
      const int lo = std::min(15, static_cast<int>(static_cast<int8_t>(rounded(x[j] * id) + 8.5f)));
      const int hi = std::min(15, static_cast<int>(static_cast<int8_t>(rounded(x[j + 16] * id) + 8.5f)));
      b[2 + j] = static_cast<uint8_t>(lo | hi << 4);
    }
  }
}

void quant_q4_1(const float* x, uint8_t* b, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += 32, b += 20) {
    float min = FLT_MAX, max = -FLT_MAX;
    for (int j = 0; j < 32; ++j) {
      if (x[j] < min) min = x[j];
      if (x[j] > max) max = x[j];
    }
    const float d = (max - min) / 15.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const uint16_t dh = f32_to_f16(d), mh = f32_to_f16(min);
    std::memcpy(b, &dh, 2);
    std::memcpy(b + 2, &mh, 2);
    for (int j = 0; j < 16; ++j) {
      const int lo = std::min(15, static_cast<int>(static_cast<int8_t>(rounded((x[j] - min) * id) + 0.5f)));
      const int hi = std::min(15, static_cast<int>(static_cast<int8_t>(rounded((x[j + 16] - min) * id) + 0.5f)));
      b[4 + j] = static_cast<uint8_t>(lo | hi << 4);
    }
  }
}

}  // namespace

std::optional<GgmlType> ggml_type_from_id(uint32_t id) {
  for (const auto& i : kTypes)
    if (static_cast<uint32_t>(i.type) == id) return i.type;
  return std::nullopt;
}

const char* ggml_type_name(GgmlType t) { return info(t).name; }
const char* ggml_type_lower_name(GgmlType t) { return info(t).lower; }

std::optional<GgmlType> ggml_type_from_lower_name(std::string_view name) {
  for (const auto& i : kTypes)
    if (name == i.lower) return i.type;
  return std::nullopt;
}

int64_t ggml_block_elems(GgmlType t) { return info(t).block_elems; }
int64_t ggml_block_bytes(GgmlType t) { return info(t).block_bytes; }

std::optional<uint64_t> ggml_row_bytes(GgmlType t, int64_t n) {
  const TypeInfo& i = info(t);
  if (n < 0 || n % i.block_elems != 0) return std::nullopt;
  return checked_mul(static_cast<uint64_t>(n / i.block_elems), static_cast<uint64_t>(i.block_bytes));
}

void dequantize_row(GgmlType t, const void* src, float* dst, int64_t n) {
  const TypeInfo& ti = info(t);
  KILN_CHECK(n >= 0 && n % ti.block_elems == 0,
             std::string("dequantize_row: ") + ti.name + " row of " + std::to_string(n) +
                 " values is not a whole number of blocks of " + std::to_string(ti.block_elems));
  const auto* b = static_cast<const uint8_t*>(src);
  const int64_t nb = n / ti.block_elems;
  switch (t) {
    case GgmlType::kF32:
      if (n > 0) std::memcpy(dst, src, static_cast<size_t>(n) * 4);
      return;
    case GgmlType::kF16:
      for (int64_t i = 0; i < n; ++i) dst[i] = half_at(b + 2 * i);
      return;
    case GgmlType::kBF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, b + 2 * i, 2);
        dst[i] = bf16_to_f32(h);
      }
      return;
    case GgmlType::kQ4_0: return dequant_q4_0(b, dst, nb);
    case GgmlType::kQ4_1: return dequant_q4_1(b, dst, nb);
    case GgmlType::kQ5_0: return dequant_q5_0(b, dst, nb);
    case GgmlType::kQ5_1: return dequant_q5_1(b, dst, nb);
    case GgmlType::kQ8_0: return dequant_q8_0(b, dst, nb);
    case GgmlType::kQ4_K: return dequant_q4_k(b, dst, nb);
    case GgmlType::kQ5_K: return dequant_q5_k(b, dst, nb);
    case GgmlType::kQ6_K: return dequant_q6_k(b, dst, nb);
  }
}

void quantize_row(GgmlType t, const float* src, void* dst, int64_t n) {
  const TypeInfo& ti = info(t);
  KILN_CHECK(t == GgmlType::kQ8_0 || t == GgmlType::kQ4_0 || t == GgmlType::kQ4_1,
             std::string("quantize_row: Kiln has no quantizer for ") + ti.name);
  KILN_CHECK(n >= 0 && n % ti.block_elems == 0,
             std::string("quantize_row: ") + ti.name + " row of " + std::to_string(n) +
                 " values is not a whole number of blocks of " + std::to_string(ti.block_elems));
  auto* b = static_cast<uint8_t*>(dst);
  const int64_t nb = n / ti.block_elems;
  if (t == GgmlType::kQ8_0) return quant_q8_0(src, b, nb);
  if (t == GgmlType::kQ4_0) return quant_q4_0(src, b, nb);
  return quant_q4_1(src, b, nb);
}

}  // namespace kiln
