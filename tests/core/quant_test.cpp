#include "core/quant.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "test_util.h"

namespace kiln {
namespace {

constexpr GgmlType kAllTypes[] = {GgmlType::kF32,  GgmlType::kF16,  GgmlType::kBF16, GgmlType::kQ4_0,
                                  GgmlType::kQ4_1, GgmlType::kQ5_0, GgmlType::kQ5_1, GgmlType::kQ8_0,
                                  GgmlType::kQ4_K, GgmlType::kQ5_K, GgmlType::kQ6_K};

uint16_t u16_at(const uint8_t* p) { return static_cast<uint16_t>(p[0] | p[1] << 8); }
uint32_t u32_at(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8 | static_cast<uint32_t>(p[2]) << 16 |
         static_cast<uint32_t>(p[3]) << 24;
}
float half(const uint8_t* p) { return f16_to_f32(u16_at(p)); }

// Nibble k (0..31) of a 16-byte run: values 0..15 are the low nibbles, 16..31 the high ones.
int nibble32(const uint8_t* qs, int k) { return k < 16 ? qs[k] & 15 : qs[k - 16] >> 4; }

// The 6-bit scale and min of sub-block j of a Q4_K/Q5_K scales[12], spelled out bit by bit: sub-blocks
// 0..3 hold six bits each in bytes 0..3 (scales) and 4..7 (mins); sub-blocks 4..7 hold their low four bits
// in the nibbles of bytes 8..11 and their high two bits in the top bits of bytes 0..3 (scales) / 4..7 (mins).
void scale_min_6bit(const uint8_t* s, int j, int& sc, int& m) {
  if (j < 4) {
    sc = s[j] % 64;
    m = s[4 + j] % 64;
  } else {
    sc = s[8 + (j - 4)] % 16 + 16 * (s[j - 4] / 64);
    m = s[8 + (j - 4)] / 16 + 16 * (s[j] / 64);
  }
}

// Value i of one block, evaluated straight from the format's definition, one element at a time.
float reference_value(GgmlType t, const uint8_t* b, int i) {
  switch (t) {
    case GgmlType::kF32: {
      uint32_t bits = u32_at(b);
      return std::bit_cast<float>(bits);
    }
    case GgmlType::kF16: return half(b);
    case GgmlType::kBF16: return bf16_to_f32(u16_at(b));
    case GgmlType::kQ4_0: return half(b) * static_cast<float>(nibble32(b + 2, i) - 8);
    case GgmlType::kQ4_1: return half(b) * static_cast<float>(nibble32(b + 4, i)) + half(b + 2);
    case GgmlType::kQ5_0: {
      const int q = nibble32(b + 6, i) + 16 * static_cast<int>((u32_at(b + 2) >> i) & 1);
      return half(b) * static_cast<float>(q - 16);
    }
    case GgmlType::kQ5_1: {
      const int q = nibble32(b + 8, i) + 16 * static_cast<int>((u32_at(b + 4) >> i) & 1);
      return half(b) * static_cast<float>(q) + half(b + 2);
    }
    case GgmlType::kQ8_0: return half(b) * static_cast<float>(static_cast<int8_t>(b[2 + i]));
    case GgmlType::kQ4_K:
    case GgmlType::kQ5_K: {
      // 8 sub-blocks of 32; sub-blocks 2c and 2c+1 share 32 bytes of qs (low / high nibbles).
      const int sub = i / 32, k = i % 32;
      const uint8_t* qs = b + (t == GgmlType::kQ4_K ? 16 : 48);
      const uint8_t byte = qs[32 * (sub / 2) + k];
      int q = sub % 2 == 0 ? byte & 15 : byte >> 4;
      if (t == GgmlType::kQ5_K) q += 16 * ((b[16 + k] >> sub) & 1);  // qh[k], bit `sub`
      int sc, m;
      scale_min_6bit(b + 4, sub, sc, m);
      return half(b) * static_cast<float>(sc) * static_cast<float>(q) - half(b + 2) * static_cast<float>(m);
    }
    case GgmlType::kQ6_K: {
      // Halves of 128; in a half, run r (0..3) of 32 values takes the low (r < 2) or high nibbles of
      // ql[0..31] (r even) or ql[32..63] (r odd), and bits 2r..2r+1 of qh[0..31]; a scale per 16 values.
      const int h = i / 128, r = (i % 128) / 32, l = i % 32;
      const uint8_t qlb = b[64 * h + l + (r % 2) * 32];
      const int lo = r < 2 ? qlb & 15 : qlb >> 4;
      const int hi = (b[128 + 32 * h + l] >> (2 * r)) & 3;
      const int scale = static_cast<int8_t>(b[192 + 8 * h + (i % 128) / 16]);
      return half(b + 208) * static_cast<float>(scale) * static_cast<float>(lo + 16 * hi - 32);
    }
  }
  return 0;
}

// Bit-exact, except that any NaN matches any NaN (payloads depend on operand order, which C++ leaves
// to the compiler for commutative operations).
bool same_value(float a, float b) {
  if (std::isnan(a) && std::isnan(b)) return true;
  return std::bit_cast<uint32_t>(a) == std::bit_cast<uint32_t>(b);
}

std::string bits_text(float v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.9g (0x%08x)", static_cast<double>(v), std::bit_cast<uint32_t>(v));
  return buf;
}

// Byte offsets of the half fields in one block.
std::vector<int> half_fields(GgmlType t) {
  switch (t) {
    case GgmlType::kF16: case GgmlType::kQ4_0: case GgmlType::kQ5_0: case GgmlType::kQ8_0: return {0};
    case GgmlType::kQ4_1: case GgmlType::kQ5_1: case GgmlType::kQ4_K: case GgmlType::kQ5_K: return {0, 2};
    case GgmlType::kQ6_K: return {208};
    default: return {};
  }
}

// Random blocks: random bytes, and in every other block finite half fields (exponent 0..30).
std::vector<uint8_t> random_blocks(GgmlType t, int n_blocks, std::mt19937& rng) {
  const auto bb = static_cast<size_t>(ggml_block_bytes(t));
  std::vector<uint8_t> raw(bb * n_blocks);
  std::uniform_int_distribution<int> byte(0, 255);
  for (auto& c : raw) c = static_cast<uint8_t>(byte(rng));
  std::uniform_int_distribution<int> exp(0, 30);
  for (int b = 0; b < n_blocks; b += 2) {
    for (int off : half_fields(t)) {
      uint8_t* p = raw.data() + b * bb + off;
      p[1] = static_cast<uint8_t>((p[1] & 0x83) | exp(rng) << 2);
    }
  }
  return raw;
}

std::vector<uint8_t> from_hex(const std::string& hex) {
  std::vector<uint8_t> out(hex.size() / 2);
  for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<uint8_t>(std::stoul(hex.substr(2 * i, 2), nullptr, 16));
  return out;
}

std::vector<float> floats_from_hex(const std::string& hex) {
  std::vector<uint8_t> bytes = from_hex(hex);
  std::vector<float> out(bytes.size() / 4);
  std::memcpy(out.data(), bytes.data(), out.size() * 4);
  return out;
}

nlohmann::json load_goldens() {
  std::ifstream f(test::data_path("gguf/dequant_goldens.json"));
  EXPECT_TRUE(f.good()) << "missing tests/data/gguf/dequant_goldens.json (make_dequant_goldens.py writes it)";
  if (!f.good()) return nlohmann::json::object();
  return nlohmann::json::parse(f);
}

TEST(QuantTypes, NamesSizesAndIds) {
  struct Expect {
    GgmlType t;
    uint32_t id;
    const char* name;
    int64_t elems, bytes;
  };
  const Expect expect[] = {
      {GgmlType::kF32, 0, "F32", 1, 4},        {GgmlType::kF16, 1, "F16", 1, 2},
      {GgmlType::kQ4_0, 2, "Q4_0", 32, 18},    {GgmlType::kQ4_1, 3, "Q4_1", 32, 20},
      {GgmlType::kQ5_0, 6, "Q5_0", 32, 22},    {GgmlType::kQ5_1, 7, "Q5_1", 32, 24},
      {GgmlType::kQ8_0, 8, "Q8_0", 32, 34},    {GgmlType::kQ4_K, 12, "Q4_K", 256, 144},
      {GgmlType::kQ5_K, 13, "Q5_K", 256, 176}, {GgmlType::kQ6_K, 14, "Q6_K", 256, 210},
      {GgmlType::kBF16, 30, "BF16", 1, 2},
  };
  for (const auto& e : expect) {
    EXPECT_EQ(ggml_type_from_id(e.id), e.t) << e.name;
    EXPECT_STREQ(ggml_type_name(e.t), e.name);
    std::string lower = e.name;
    for (auto& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    EXPECT_EQ(ggml_type_lower_name(e.t), lower);
    EXPECT_EQ(ggml_type_from_lower_name(lower), e.t);
    EXPECT_EQ(ggml_block_elems(e.t), e.elems) << e.name;
    EXPECT_EQ(ggml_block_bytes(e.t), e.bytes) << e.name;
  }
  for (uint32_t id : {4u, 5u, 9u, 10u, 11u, 15u, 29u, 31u, 1000u}) EXPECT_FALSE(ggml_type_from_id(id)) << id;
  EXPECT_FALSE(ggml_type_from_lower_name("Q4_0"));
  EXPECT_FALSE(ggml_type_from_lower_name("q2_k"));

  EXPECT_EQ(ggml_row_bytes(GgmlType::kQ4_0, 64), 36u);
  EXPECT_EQ(ggml_row_bytes(GgmlType::kQ4_K, 512), 288u);
  EXPECT_EQ(ggml_row_bytes(GgmlType::kF16, 3), 6u);
  EXPECT_EQ(ggml_row_bytes(GgmlType::kQ8_0, 0), 0u);
  EXPECT_FALSE(ggml_row_bytes(GgmlType::kQ4_0, 33));
  EXPECT_FALSE(ggml_row_bytes(GgmlType::kQ6_K, 128));
  EXPECT_FALSE(ggml_row_bytes(GgmlType::kF32, -4));
  EXPECT_FALSE(ggml_row_bytes(GgmlType::kF32, std::numeric_limits<int64_t>::max()));  // 4 * n overflows
}

// dequantize_row against the per-element reference, on random blocks of every type.
TEST(QuantDequantize, MatchesDefinitionOnRandomBlocks) {
  std::mt19937 rng(1234);
  for (GgmlType t : kAllTypes) {
    const int n_blocks = ggml_block_elems(t) == 1 ? 4096 : 512;
    const std::vector<uint8_t> raw = random_blocks(t, n_blocks, rng);
    const int64_t elems = ggml_block_elems(t), n = elems * n_blocks;
    std::vector<float> got(n, -12345.0f);
    dequantize_row(t, raw.data(), got.data(), n);
    int mismatches = 0;
    for (int64_t i = 0; i < n && mismatches < 5; ++i) {
      const uint8_t* block = raw.data() + (i / elems) * ggml_block_bytes(t);
      const float want = reference_value(t, block, static_cast<int>(i % elems));
      if (!same_value(got[i], want)) {
        ++mismatches;
        ADD_FAILURE() << ggml_type_name(t) << " value " << i << ": got " << bits_text(got[i]) << ", want "
                      << bits_text(want);
      }
    }
    // The random blocks really do hold both finite and non-finite values.
    int finite = 0;
    for (float v : got) finite += std::isfinite(v) ? 1 : 0;
    EXPECT_GT(finite, n / 3) << ggml_type_name(t);
    if (t != GgmlType::kF32 && t != GgmlType::kBF16) {  // these have no half fields
      EXPECT_LT(finite, n) << ggml_type_name(t);
    }
  }
}

TEST(QuantDequantize, EmptyRowAndSingleBlocksAgreeWithWholeRow) {
  std::mt19937 rng(99);
  for (GgmlType t : kAllTypes) {
    dequantize_row(t, nullptr, nullptr, 0);  // nothing to do, nothing touched
    const std::vector<uint8_t> raw = random_blocks(t, 6, rng);
    const int64_t elems = ggml_block_elems(t);
    std::vector<float> whole(elems * 6), one(elems);
    dequantize_row(t, raw.data(), whole.data(), elems * 6);
    for (int b = 0; b < 6; ++b) {
      dequantize_row(t, raw.data() + b * ggml_block_bytes(t), one.data(), elems);
      for (int64_t i = 0; i < elems; ++i) {
        ASSERT_TRUE(same_value(one[i], whole[b * elems + i])) << ggml_type_name(t) << " block " << b << " value " << i;
      }
    }
  }
}

// Goldens from gguf-py (tests/data/gguf/make_dequant_goldens.py). Every product in these formats is exact
// in f32 and at most one addition rounds, so gguf-py's numpy order of operations gives the same bits:
// the comparison is bit-exact (NaN matching any NaN).
TEST(QuantDequantize, MatchesGgufPyGoldens) {
  const nlohmann::json g = load_goldens();
  ASSERT_TRUE(g.contains("dequantize"));
  std::set<std::string> seen;
  for (const auto& c : g["dequantize"]) {
    const std::string name = c["type"];
    auto t = ggml_type_from_id(c["id"].get<uint32_t>());
    ASSERT_TRUE(t) << name;
    ASSERT_STREQ(ggml_type_name(*t), name.c_str());
    seen.insert(name);
    const std::vector<uint8_t> raw = from_hex(c["blocks"]);
    const std::vector<float> want = floats_from_hex(c["values"]);
    const int64_t n = c["n"];
    ASSERT_EQ(static_cast<int64_t>(want.size()), n) << name;
    ASSERT_EQ(static_cast<uint64_t>(raw.size()), *ggml_row_bytes(*t, n)) << name;
    std::vector<float> got(n);
    dequantize_row(*t, raw.data(), got.data(), n);
    int bad = 0, nan = 0;
    for (int64_t i = 0; i < n; ++i) {
      nan += std::isnan(want[i]) ? 1 : 0;
      if (!same_value(got[i], want[i]) && ++bad <= 5) {
        ADD_FAILURE() << name << " value " << i << ": got " << bits_text(got[i]) << ", gguf-py " << bits_text(want[i]);
      }
    }
    EXPECT_EQ(bad, 0) << name;
    EXPECT_LT(nan, n / 2) << name;
  }
  EXPECT_EQ(seen.size(), std::size(kAllTypes));
}

TEST(QuantQuantize, MatchesGgufPyGoldens) {
  const nlohmann::json g = load_goldens();
  ASSERT_TRUE(g.contains("quantize"));
  std::set<std::string> seen;
  for (const auto& c : g["quantize"]) {
    const std::string name = c["type"];
    auto t = ggml_type_from_id(c["id"].get<uint32_t>());
    ASSERT_TRUE(t) << name;
    seen.insert(name);
    const std::vector<float> x = floats_from_hex(c["input"]);
    const std::vector<uint8_t> want = from_hex(c["expected"]);
    const int64_t n = c["n"];
    ASSERT_EQ(static_cast<int64_t>(x.size()), n);
    ASSERT_EQ(static_cast<uint64_t>(want.size()), *ggml_row_bytes(*t, n)) << name;
    std::vector<uint8_t> got(want.size(), 0xee);
    quantize_row(*t, x.data(), got.data(), n);
    const int64_t bb = ggml_block_bytes(*t);
    int bad = 0;
    for (size_t b = 0; b * bb < got.size(); ++b) {
      if (std::memcmp(got.data() + b * bb, want.data() + b * bb, bb) != 0 && ++bad <= 5) {
        std::string gh, wh;
        char buf[4];
        for (int64_t k = 0; k < bb; ++k) {
          std::snprintf(buf, sizeof buf, "%02x", got[b * bb + k]);
          gh += buf;
          std::snprintf(buf, sizeof buf, "%02x", want[b * bb + k]);
          wh += buf;
        }
        ADD_FAILURE() << name << " block " << b << ":\n  got     " << gh << "\n  gguf-py " << wh;
      }
    }
    EXPECT_EQ(bad, 0) << name;
  }
  EXPECT_EQ(seen, (std::set<std::string>{"Q8_0", "Q4_0", "Q4_1"}));
}

// The rounding rules, by hand: Q8_0 rounds halves away from zero; Q4_0 truncates x / d + 8.5 and caps
// the code at 15; Q4_1 truncates (x - min) / d + 0.5.
TEST(QuantQuantize, RoundingRules) {
  float x[32] = {};
  x[0] = 127.0f;  // d = 1
  x[1] = 2.5f;
  x[2] = -2.5f;
  x[3] = 0.5f;
  x[4] = -126.5f;
  uint8_t q8[34];
  quantize_row(GgmlType::kQ8_0, x, q8, 32);
  EXPECT_EQ(u16_at(q8), f32_to_f16(1.0f));
  EXPECT_EQ(static_cast<int8_t>(q8[2 + 1]), 3);
  EXPECT_EQ(static_cast<int8_t>(q8[2 + 2]), -3);
  EXPECT_EQ(static_cast<int8_t>(q8[2 + 3]), 1);
  EXPECT_EQ(static_cast<int8_t>(q8[2 + 4]), -127);

  float y[32];
  for (int i = 0; i < 32; ++i) y[i] = static_cast<float>(i % 17) - 8.0f;  // the extreme is -8 (first), d = 1
  uint8_t q4[18];
  quantize_row(GgmlType::kQ4_0, y, q4, 32);
  EXPECT_EQ(u16_at(q4), f32_to_f16(1.0f));
  for (int i = 0; i < 32; ++i) {
    const int want = std::min(15, static_cast<int>(y[i] + 8.5f));
    EXPECT_EQ(nibble32(q4 + 2, i), want) << i;
  }

  float z[32];
  for (int i = 0; i < 32; ++i) z[i] = 1.0f + static_cast<float>(i % 16);  // min 1, max 16, d = 1
  uint8_t q41[20];
  quantize_row(GgmlType::kQ4_1, z, q41, 32);
  EXPECT_EQ(u16_at(q41), f32_to_f16(1.0f));
  EXPECT_EQ(u16_at(q41 + 2), f32_to_f16(1.0f));
  for (int i = 0; i < 32; ++i) EXPECT_EQ(nibble32(q41 + 4, i), i % 16) << i;
}

// Quantize then dequantize: each value within half a step (Q8_0, Q4_1) or one step (Q4_0, whose grid is
// asymmetric) of the input, plus the half rounding of the scale.
TEST(QuantQuantize, RoundTripError) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (GgmlType t : {GgmlType::kQ8_0, GgmlType::kQ4_0, GgmlType::kQ4_1}) {
    const int64_t n = 32 * 64;
    std::vector<float> x(n), back(n);
    for (auto& v : x) v = normal(rng) * 3.0f;
    std::vector<uint8_t> q(*ggml_row_bytes(t, n));
    quantize_row(t, x.data(), q.data(), n);
    dequantize_row(t, q.data(), back.data(), n);
    for (int64_t b = 0; b < n / 32; ++b) {
      float lo = x[b * 32], hi = lo, amax = 0;
      for (int k = 0; k < 32; ++k) {
        lo = std::min(lo, x[b * 32 + k]);
        hi = std::max(hi, x[b * 32 + k]);
        amax = std::max(amax, std::fabs(x[b * 32 + k]));
      }
      const float step = t == GgmlType::kQ8_0 ? amax / 127 : t == GgmlType::kQ4_0 ? amax / 8 : (hi - lo) / 15;
      const float tol = (t == GgmlType::kQ4_0 ? 1.0f : 0.5f) * step * 1.01f + amax * 2e-3f;
      for (int k = 0; k < 32; ++k) {
        ASSERT_NEAR(back[b * 32 + k], x[b * 32 + k], tol) << ggml_type_name(t) << " block " << b << " value " << k;
      }
    }
  }
}

}  // namespace
}  // namespace kiln
