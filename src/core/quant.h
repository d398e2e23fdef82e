// Block-quantized weight formats as GGUF / ggml define them, and their exact dequantization.
//
// A quantized row of n values is n / block_elems(t) blocks stored back to back (n must be a multiple of
// the block). The block layouts (little-endian, no padding; d/m/dmin are IEEE half):
//   Q4_0  (32 values, 18 B): d, qs[16]           value = d * (q - 8),  q = 4-bit, low nibbles are
//                                                 values 0..15 of the block, high nibbles 16..31
//   Q4_1  (32, 20 B): d, m, qs[16]                value = d * q + m
//   Q5_0  (32, 22 B): d, qh[4], qs[16]            q = nibble | (bit i of qh) << 4; value = d * (q - 16)
//   Q5_1  (32, 24 B): d, m, qh[4], qs[16]         value = d * q + m
//   Q8_0  (32, 34 B): d, qs[32] (int8)            value = d * q
//   Q4_K  (256, 144 B): d, dmin, scales[12], qs[128]      8 sub-blocks of 32 with 6-bit scale and min
//   Q5_K  (256, 176 B): d, dmin, scales[12], qh[32], qs[128]
//   Q6_K  (256, 210 B): ql[128], qh[64], scales[16] (int8), d
// F32, F16 and BF16 are "blocks" of one value. The type ids are GGUF's (ggml_type).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace kiln {

enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kBF16 = 30,
};

// The GgmlType with this GGUF id, if Kiln reads it (other ids: nullopt).
std::optional<GgmlType> ggml_type_from_id(uint32_t id);
// "F32", "Q4_1", ... (GGUF's own spellings); "q4_1" etc. from ggml_type_lower_name.
const char* ggml_type_name(GgmlType t);
const char* ggml_type_lower_name(GgmlType t);
std::optional<GgmlType> ggml_type_from_lower_name(std::string_view name);
// Values per block (1 for float types) and bytes per block.
int64_t ggml_block_elems(GgmlType t);
int64_t ggml_block_bytes(GgmlType t);
// Bytes of a row of n values; nullopt when n is not a multiple of the block or the size overflows.
std::optional<uint64_t> ggml_row_bytes(GgmlType t, int64_t n);

// Writes the n values of a row (n a multiple of the block) as f32. Exact: every block's arithmetic is
// the format's definition evaluated in f32 (the half scales widened exactly).
void dequantize_row(GgmlType t, const void* src, float* dst, int64_t n);

// The formats Kiln keeps quantized in an engine (the CPU has kernels for them); others are dequantized.
inline bool is_kept_quant(GgmlType t) { return t == GgmlType::kQ8_0 || t == GgmlType::kQ4_0 || t == GgmlType::kQ4_1; }

// Reference quantizers of the formats Kiln keeps quantized in an engine (Q8_0, Q4_0, Q4_1), as ggml
// rounds them; for tests and for quantizing activations. The inputs must be finite (as in ggml, a NaN or
// infinity leaves the codes unspecified).
void quantize_row(GgmlType t, const float* src, void* dst, int64_t n);

}  // namespace kiln
