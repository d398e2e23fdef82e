#include "backend/cpu/qgemm.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "core/cpu_features.h"
#include "core/dtype.h"
#include "core/thread_pool.h"

namespace kiln::cpu {
namespace {

constexpr GgmlType kTypes[] = {GgmlType::kQ8_0, GgmlType::kQ4_0, GgmlType::kQ4_1};

const char* tname(GgmlType t) {
  return t == GgmlType::kQ8_0 ? "Q8_0" : t == GgmlType::kQ4_0 ? "Q4_0" : "Q4_1";
}

std::vector<Isa> available_isas() {
  std::vector<Isa> out;
  for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512})
    if (isa_available(isa)) out.push_back(isa);
  return out;
}

std::string label(Isa isa, GgmlType t) {
  return std::string(isa_name(isa)) + "/" + tname(t) + " (" + qgemm_kernel_name_for(isa, t) + ")";
}

struct AlignedBuf {
  explicit AlignedBuf(size_t bytes) : p(std::aligned_alloc(64, (bytes + 63) / 64 * 64 + 64)) {}
  ~AlignedBuf() { std::free(p); }
  AlignedBuf(const AlignedBuf&) = delete;
  AlignedBuf& operator=(const AlignedBuf&) = delete;
  void* p;
};

std::vector<float> random_floats(std::mt19937& rng, size_t n, float scale = 1.0f) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& f : v) f = d(rng);
  return v;
}

// ---- Test-local GGUF block helpers (the formats as quant.h documents them). ----
int64_t block_bytes(GgmlType t) { return detail::qblock_bytes(t); }

void put_f16(uint8_t* p, float v) {
  const uint16_t h = f32_to_f16(v);
  std::memcpy(p, &h, 2);
}
float get_f16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}

// Dequantizes one block exactly (f32 arithmetic of the format's definition).
void dequant_block(GgmlType t, const uint8_t* blk, float* out) {
  const float d = get_f16(blk);
  if (t == GgmlType::kQ8_0) {
    for (int j = 0; j < 32; ++j) out[j] = d * static_cast<float>(static_cast<int8_t>(blk[2 + j]));
    return;
  }
  const uint8_t* qs = blk + (t == GgmlType::kQ4_1 ? 4 : 2);
  const float mn = t == GgmlType::kQ4_1 ? get_f16(blk + 2) : 0.0f;
  for (int j = 0; j < 16; ++j) {
    const int lo = qs[j] & 0x0f, hi = qs[j] >> 4;
    if (t == GgmlType::kQ4_0) {
      out[j] = d * static_cast<float>(lo - 8);
      out[j + 16] = d * static_cast<float>(hi - 8);
    } else {
      out[j] = d * static_cast<float>(lo) + mn;
      out[j + 16] = d * static_cast<float>(hi) + mn;
    }
  }
}

// Quantizes one block of 32 floats roughly as ggml does (the exact rounding does not matter here: the
// tests take the stored blocks as the truth).
void quant_block(GgmlType t, const float* x, uint8_t* blk) {
  if (t == GgmlType::kQ8_0) {
    float amax = 0;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127.0f, id = d != 0 ? 1.0f / d : 0.0f;
    put_f16(blk, d);
    for (int j = 0; j < 32; ++j) blk[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(std::lround(x[j] * id)));
  } else if (t == GgmlType::kQ4_0) {
    float amax = 0, mx = 0;
    for (int j = 0; j < 32; ++j)
      if (std::fabs(x[j]) > amax) amax = std::fabs(x[j]), mx = x[j];
    const float d = mx / -8.0f, id = d != 0 ? 1.0f / d : 0.0f;
    put_f16(blk, d);
    for (int j = 0; j < 16; ++j) {
      const int a = std::min(15, static_cast<int>(x[j] * id + 8.5f));
      const int b = std::min(15, static_cast<int>(x[j + 16] * id + 8.5f));
      blk[2 + j] = static_cast<uint8_t>(a | (b << 4));
    }
  } else {
    float mn = x[0], mx = x[0];
    for (int j = 1; j < 32; ++j) mn = std::min(mn, x[j]), mx = std::max(mx, x[j]);
    const float d = (mx - mn) / 15.0f, id = d != 0 ? 1.0f / d : 0.0f;
    put_f16(blk, d);
    put_f16(blk + 2, mn);
    for (int j = 0; j < 16; ++j) {
      const int a = std::min(15, static_cast<int>((x[j] - mn) * id + 0.5f));
      const int b = std::min(15, static_cast<int>((x[j + 16] - mn) * id + 0.5f));
      blk[4 + j] = static_cast<uint8_t>(a | (b << 4));
    }
  }
}

// W [n, k] as GGUF rows of type t, and packed.
struct QWeights {
  // quantized_from_floats: realistic blocks from N(0, 0.5) weights; otherwise random bytes (every quant
  // value, Q8_0's -128 included) with random scales of both signs.
  QWeights(std::mt19937& rng, GgmlType t_, int64_t n_, int64_t k_, bool quantized_from_floats = false)
      : t(t_), n(n_), k(k_), rows(static_cast<size_t>(n_ * k_ / 32 * block_bytes(t_))), packed(packed_qweight_bytes(t_, n_, k_)) {
    const int64_t bb = block_bytes(t);
    if (quantized_from_floats) {
      std::vector<float> f = random_floats(rng, static_cast<size_t>(n * k), 0.5f);
      for (int64_t b = 0; b < n * k / 32; ++b) quant_block(t, f.data() + b * 32, rows.data() + b * bb);
    } else {
      std::uniform_int_distribution<int> byte(0, 255);
      std::uniform_real_distribution<float> scale(-0.05f, 0.05f);
      for (int64_t b = 0; b < n * k / 32; ++b) {
        uint8_t* blk = rows.data() + b * bb;
        for (int64_t j = 0; j < bb; ++j) blk[j] = static_cast<uint8_t>(byte(rng));
        put_f16(blk, scale(rng));
        if (t == GgmlType::kQ4_1) put_f16(blk + 2, scale(rng) * 4);
      }
    }
    pack_qweight(rows.data(), t, n, k, packed.p);
  }
  std::vector<float> dequantized() const {
    std::vector<float> w(static_cast<size_t>(n * k));
    for (int64_t b = 0; b < n * k / 32; ++b) dequant_block(t, rows.data() + b * block_bytes(t), w.data() + b * 32);
    return w;
  }
  GgmlType t;
  int64_t n, k;
  std::vector<uint8_t> rows;
  AlignedBuf packed;
};

// y (row stride ldy) must equal qgemm_reference bit for bit.
void expect_matches_reference(const std::vector<float>& x, int64_t ldx, int64_t m, const QWeights& w,
                              const float* bias, const float* y, int64_t ldy, const std::string& what) {
  const int64_t n = w.n, k = w.k;
  std::vector<float> xc(static_cast<size_t>(m * k));
  for (int64_t i = 0; i < m; ++i)
    for (int64_t kk = 0; kk < k; ++kk) xc[i * k + kk] = x[i * ldx + kk];
  std::vector<float> ref(static_cast<size_t>(m * n));
  qgemm_reference(xc.data(), m, w.rows.data(), w.t, n, k, bias, ref.data());
  int bad = 0;
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      const float got = y[i * ldy + j], want = ref[i * n + j];
      if (std::memcmp(&got, &want, 4) != 0 && bad++ < 5)
        ADD_FAILURE() << what << " m=" << m << " n=" << n << " k=" << k << " at (" << i << "," << j << "): got "
                      << got << " want " << want;
    }
  }
}

TEST(CpuQgemm, PackedSizesAndLayout) {
  constexpr int64_t G = kQgemmGroup, GR = kQgemmGroupRows;
  // A block of a 16-row panel: Q4_1 256 quant bytes + 32 d + 32 m, Q4_0 256 + 32, Q8_0 512 + 32.
  EXPECT_EQ(packed_qweight_bytes(GgmlType::kQ4_1, 16, 32), G * 320u);
  EXPECT_EQ(packed_qweight_bytes(GgmlType::kQ4_1, GR + 1, 64), 2 * G * 640u);
  EXPECT_EQ(packed_qweight_bytes(GgmlType::kQ4_0, 16, 32), G * 288u);
  EXPECT_EQ(packed_qweight_bytes(GgmlType::kQ8_0, 1, 64), G * 1088u);
  EXPECT_EQ(packed_qweight_bytes(GgmlType::kQ8_0, 0, 64), 0u);
  EXPECT_EQ(packed_qweight_bytes(GgmlType::kQ8_0, 5, 0), 0u);
  // SmolLM2's shapes (n a multiple of the group): exactly GGUF's bytes.
  EXPECT_EQ(packed_qweight_bytes(GgmlType::kQ4_1, 1536, 576), 1536u * 576 / 32 * 20);
  EXPECT_EQ(packed_qweight_bytes(GgmlType::kQ4_0, 576, 1536), 576u * 1536 / 32 * 18);
  EXPECT_EQ(packed_qweight_bytes(GgmlType::kQ8_0, 49152, 576), 49152u * 576 / 32 * 34);
  for (GgmlType t : kTypes) {
    EXPECT_TRUE(qgemm_supports(t));
    for (int64_t n = 1; n < 140; n += 7)
      for (int64_t k = 0; k <= 160; k += 32) EXPECT_EQ(packed_qweight_bytes(t, n, k) % 64, 0u);
  }
  EXPECT_FALSE(qgemm_supports(GgmlType::kQ4_K));
  EXPECT_FALSE(qgemm_supports(GgmlType::kF32));

  // Every quant and scale lands where qgemm.h says; padding rows are zero.
  std::mt19937 rng(11);
  for (GgmlType t : kTypes) {
    const int64_t n = GR + 19, k = 96, kb = 3;
    QWeights w(rng, t, n, k);
    const uint8_t* pk = static_cast<const uint8_t*>(w.packed.p);
    const int64_t qb = detail::qpanel_block_bytes(t), gb = detail::qgroup_block_bytes(t);
    ASSERT_EQ(packed_qweight_bytes(t, n, k), static_cast<size_t>(2 * kb * gb));
    for (int64_t r = 0; r < 2 * GR; ++r) {
      const uint8_t* group = pk + (r / GR) * kb * gb;
      const int64_t panel = (r % GR) / 16, lane = r % 16;
      for (int64_t b = 0; b < kb; ++b) {
        const uint8_t* blk = r < n ? w.rows.data() + (r * kb + b) * block_bytes(t) : nullptr;
        const uint8_t* q = group + b * gb + panel * qb;
        for (int j = 0; j < 32; ++j) {
          int want = 0, got;
          if (t == GgmlType::kQ8_0) {
            if (blk) want = static_cast<int8_t>(blk[2 + j]);
            got = static_cast<int8_t>(q[(j / 4) * 64 + 4 * lane + j % 4]);
          } else {
            if (blk) {
              const uint8_t* qs = blk + (t == GgmlType::kQ4_1 ? 4 : 2);
              want = j < 16 ? qs[j] & 15 : qs[j - 16] >> 4;
            }
            const int quad = j / 4, byte = q[(quad / 2) * 64 + 4 * lane + j % 4];
            got = quad % 2 ? byte >> 4 : byte & 15;
          }
          ASSERT_EQ(got, want) << tname(t) << " row " << r << " block " << b << " j " << j;
        }
        const uint8_t* sc = group + b * gb + G * qb + panel * 32 + 2 * lane;
        uint16_t dh, want_d = 0;
        std::memcpy(&dh, sc, 2);
        if (blk) std::memcpy(&want_d, blk, 2);
        EXPECT_EQ(dh, want_d);
        if (t == GgmlType::kQ4_1) {
          uint16_t mh, want_m = 0;
          std::memcpy(&mh, sc + G * 32, 2);
          if (blk) std::memcpy(&want_m, blk + 2, 2);
          EXPECT_EQ(mh, want_m);
        }
      }
    }
  }
}

TEST(CpuQgemm, KernelNames) {
  for (GgmlType t : kTypes) {
    EXPECT_STREQ(qgemm_kernel_name(t), qgemm_kernel_name_for(best_isa(), t));
    const std::string suffix = t == GgmlType::kQ8_0 ? "q8_0" : t == GgmlType::kQ4_0 ? "q4_0" : "q4_1";
    EXPECT_EQ(qgemm_kernel_name_for(Isa::kScalar, t), "scalar_" + suffix);
  }
  if (isa_available(Isa::kAvx2)) {
    EXPECT_STREQ(qgemm_kernel_name_for(Isa::kAvx2, GgmlType::kQ4_1), "avx2_q4_1");
  }
  if (isa_available(Isa::kAvx512)) {
    EXPECT_STREQ(qgemm_kernel_name_for(Isa::kAvx512, GgmlType::kQ4_1),
                 cpu_features().avx512_vnni ? "avx512_vnni_q4_1" : "avx2_q4_1");
  }
  std::printf("[ info ] cpu: %s; kernels: q8_0=%s q4_0=%s q4_1=%s\n", cpu_features().to_string().c_str(),
              qgemm_kernel_name(GgmlType::kQ8_0), qgemm_kernel_name(GgmlType::kQ4_0),
              qgemm_kernel_name(GgmlType::kQ4_1));
}

// The SIMD activation quantizers equal the scalar definition bit for bit, including exact ties
// (roundf: away from zero) and all-zero blocks.
TEST(CpuQgemm, ActivationQuantizersAgree) {
  std::mt19937 rng(12);
  const int64_t k = 256, kb = k / 32, rows = 5, ldx = k + 3;
  std::vector<float> x = random_floats(rng, static_cast<size_t>(rows * ldx), 3.0f);
  // Row 1: block 0 has amax 127 (d = 1, id = 1) and values at .5: ties.
  for (int j = 0; j < 32; ++j) x[ldx + j] = j == 0 ? 127.0f : (j % 2 ? 1.0f : -1.0f) * (static_cast<float>(j) + 0.5f);
  // Row 2: block 1 all zero; block 2 tiny values; block 3 huge values.
  for (int j = 0; j < 32; ++j) {
    x[2 * ldx + 32 + j] = 0.0f;
    x[2 * ldx + 64 + j] = 1e-30f * static_cast<float>(j - 16);
    x[2 * ldx + 96 + j] = 1e30f * static_cast<float>(j - 11);
  }
  std::vector<int8_t> rq(static_cast<size_t>(rows * k));
  std::vector<detail::QxBlock> rb(static_cast<size_t>(rows * kb));
  for (int64_t i = 0; i < rows; ++i) {
    std::vector<float> d(kb), s(kb);
    std::vector<int32_t> sq(kb);
    quantize_activations_reference(x.data() + i * ldx, k, rq.data() + i * k, d.data(), sq.data(), s.data());
    for (int64_t b = 0; b < kb; ++b) rb[i * kb + b] = {d[b], sq[b], s[b]};
  }
  // Ties go away from zero.
  EXPECT_EQ(rq[k + 1], 2);   // 1.5
  EXPECT_EQ(rq[k + 2], -3);  // -2.5
  EXPECT_EQ(rq[k + 0], 127);
  EXPECT_EQ(rb[2 * kb + 1].d, 0.0f);
  struct Q {
    const char* name;
    detail::QuantizeXFn fn;
    bool ok;
  };
  const Q qs[] = {{"scalar", &detail::quantize_x_scalar, true},
                  {"avx2", &detail::quantize_x_avx2, isa_available(Isa::kAvx2)},
                  {"avx512", &detail::quantize_x_avx512, isa_available(Isa::kAvx512)}};
  for (const Q& q : qs) {
    if (!q.ok) continue;
    std::vector<int8_t> gq(static_cast<size_t>(rows * k));
    std::vector<detail::QxBlock> gb(static_cast<size_t>(rows * kb));
    q.fn(x.data(), ldx, rows, k, gq.data(), k, gb.data());
    EXPECT_EQ(gq, rq) << q.name;
    for (size_t b = 0; b < gb.size(); ++b) {
      EXPECT_EQ(std::memcmp(&gb[b].d, &rb[b].d, 4), 0) << q.name << " block " << b;
      EXPECT_EQ(gb[b].sq, rb[b].sq) << q.name << " block " << b;
      EXPECT_EQ(std::memcmp(&gb[b].s, &rb[b].s, 4), 0) << q.name << " block " << b;
    }
  }
}

// Every ISA and type, m in {1,2,3,7,64,130}, n not a multiple of the panel, with and without bias:
// bit-identical to qgemm_reference.
TEST(CpuQgemm, MatchesReference) {
  ThreadPool pool(2);
  std::mt19937 rng(1);
  for (GgmlType t : kTypes) {
    for (auto [n, k] : {std::pair<int64_t, int64_t>{1, 32}, {7, 64}, {17, 96}, {33, 32}, {50, 160}, {100, 576}}) {
      QWeights w(rng, t, n, k);
      std::vector<float> bias = random_floats(rng, n);
      for (int64_t m : {1, 2, 3, 7, 64, 130}) {
        std::vector<float> x = random_floats(rng, m * k);
        for (Isa isa : available_isas()) {
          for (bool with_bias : {false, true}) {
            std::vector<float> y(m * n);
            qgemm_with_isa(isa, x.data(), k, m, w.packed.p, t, n, k, with_bias ? bias.data() : nullptr, y.data(), n,
                           pool);
            expect_matches_reference(x, k, m, w, with_bias ? bias.data() : nullptr, y.data(), n, label(isa, t));
            if (HasFailure()) return;
          }
        }
      }
    }
  }
}

// Against float math (dequantized W times the un-quantized x, in double): the only error beyond f32
// rounding is x's 8-bit quantization, at most d/2 per value of a block with scale d = amax/127.
TEST(CpuQgemm, MatchesFloatReference) {
  ThreadPool pool(2);
  std::mt19937 rng(2);
  for (GgmlType t : kTypes) {
    for (auto [m, n, k] : {std::tuple<int64_t, int64_t, int64_t>{1, 37, 576}, {7, 64, 1536}, {64, 23, 160}}) {
      QWeights w(rng, t, n, k, /*quantized_from_floats=*/true);
      const std::vector<float> wf = w.dequantized();
      std::vector<float> x = random_floats(rng, m * k);
      std::vector<float> bias = random_floats(rng, n);
      for (Isa isa : available_isas()) {
        std::vector<float> y(m * n);
        qgemm_with_isa(isa, x.data(), k, m, w.packed.p, t, n, k, bias.data(), y.data(), n, pool);
        double worst_ratio = 0;
        for (int64_t i = 0; i < m; ++i) {
          for (int64_t j = 0; j < n; ++j) {
            double exact = bias[j], bound = 0, mag = std::fabs(bias[j]);
            for (int64_t b = 0; b < k / 32; ++b) {
              double amax = 0;
              for (int jj = 0; jj < 32; ++jj) amax = std::max(amax, std::fabs(static_cast<double>(x[i * k + b * 32 + jj])));
              const double half_step = amax / 127.0 / 2.0;
              for (int jj = 0; jj < 32; ++jj) {
                const double xv = x[i * k + b * 32 + jj], wv = wf[j * k + b * 32 + jj];
                exact += xv * wv;
                bound += std::fabs(wv) * half_step;
                mag += std::fabs(xv * wv);
              }
            }
            bound = bound * (1 + 1e-4) + mag * 1e-5;
            const double err = std::fabs(y[i * n + j] - exact);
            worst_ratio = std::max(worst_ratio, err / bound);
            ASSERT_LE(err, bound) << label(isa, t) << " m=" << m << " n=" << n << " k=" << k << " at (" << i << ","
                                  << j << "): got " << y[i * n + j] << " want " << exact;
          }
        }
        // The bound is the worst case; rounding errors mostly cancel, so the typical error is far below it.
        EXPECT_LT(worst_ratio, 0.5) << label(isa, t);
      }
    }
  }
}

TEST(CpuQgemm, StridesLeaveOtherMemoryAlone) {
  ThreadPool pool(2);
  std::mt19937 rng(4);
  const float sentinel = -12345.0f;
  for (Isa isa : available_isas()) {
    for (GgmlType t : kTypes) {
      for (auto [m, n, k] : {std::tuple<int64_t, int64_t, int64_t>{5, 23, 64}, {17, 50, 96}, {1, 33, 32}, {70, 9, 64}}) {
        const int64_t ldx = k + 5, ldy = n + 9;
        QWeights w(rng, t, n, k);
        std::vector<float> x = random_floats(rng, m * ldx);
        std::vector<float> bias = random_floats(rng, n);
        std::vector<float> y(m * ldy + 16, sentinel);
        qgemm_with_isa(isa, x.data(), ldx, m, w.packed.p, t, n, k, bias.data(), y.data(), ldy, pool);
        expect_matches_reference(x, ldx, m, w, bias.data(), y.data(), ldy, label(isa, t) + " strided");
        for (int64_t i = 0; i < m; ++i)
          for (int64_t j = n; j < ldy; ++j) ASSERT_EQ(y[i * ldy + j], sentinel) << label(isa, t);
        for (size_t j = m * ldy; j < y.size(); ++j) ASSERT_EQ(y[j], sentinel);
      }
    }
  }
}

TEST(CpuQgemm, ZeroSizes) {
  ThreadPool pool(2);
  std::vector<float> bias = {1.5f, -2.0f, 3.0f};
  for (Isa isa : available_isas()) {
    for (GgmlType t : kTypes) {
      std::vector<float> y(6, 7.0f);
      qgemm_with_isa(isa, nullptr, 0, 2, nullptr, t, 3, 0, bias.data(), y.data(), 3, pool);
      EXPECT_EQ(y, (std::vector<float>{1.5f, -2.0f, 3.0f, 1.5f, -2.0f, 3.0f}));
      qgemm_with_isa(isa, nullptr, 0, 2, nullptr, t, 3, 0, nullptr, y.data(), 3, pool);
      EXPECT_EQ(y, std::vector<float>(6, 0.0f));
      qgemm_with_isa(isa, nullptr, 32, 0, nullptr, t, 3, 32, nullptr, nullptr, 3, pool);
      qgemm_with_isa(isa, nullptr, 32, 2, nullptr, t, 0, 32, nullptr, nullptr, 0, pool);
    }
  }
}

TEST(CpuQgemmDeathTest, BadShapes) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  ThreadPool pool(1);
  AlignedBuf buf(4096);
  std::vector<float> x(64), y(64);
  EXPECT_DEATH(packed_qweight_bytes(GgmlType::kQ4_1, 4, 48), "multiple of 32");
  EXPECT_DEATH(packed_qweight_bytes(GgmlType::kQ4_K, 4, 256), "unsupported");
  EXPECT_DEATH(qgemm(x.data(), 32, 1, buf.p, GgmlType::kQ8_0, 2, 32, nullptr, y.data(), 1, pool), "stride");
  EXPECT_DEATH(qgemm(x.data(), 32, 1, static_cast<char*>(buf.p) + 32, GgmlType::kQ8_0, 2, 32, nullptr, y.data(), 2,
                     pool),
               "aligned");
}

// Row i of y is bit-identical whatever m is, whatever the other rows are, whatever the thread count.
TEST(CpuQgemm, BatchInvariance) {
  ThreadPool pool1(1), pool2(2);
  std::mt19937 rng(5);
  for (Isa isa : available_isas()) {
    for (GgmlType t : kTypes) {
      for (auto [n, k] : {std::pair<int64_t, int64_t>{40, 96}, {150, 320}, {33, 64}, {600, 576}}) {
        const int64_t M = 61;
        QWeights w(rng, t, n, k);
        std::vector<float> bias = random_floats(rng, n);
        std::vector<float> x = random_floats(rng, M * k);
        for (const float* b : {static_cast<const float*>(nullptr), static_cast<const float*>(bias.data())}) {
          std::vector<float> full(M * n);
          qgemm_with_isa(isa, x.data(), k, M, w.packed.p, t, n, k, b, full.data(), n, pool2);
          for (int64_t i = 0; i < M; ++i) {
            std::vector<float> one(n);
            qgemm_with_isa(isa, x.data() + i * k, k, 1, w.packed.p, t, n, k, b, one.data(), n, pool1);
            ASSERT_EQ(std::memcmp(one.data(), full.data() + i * n, n * 4), 0)
                << label(isa, t) << " n=" << n << " k=" << k << " row " << i << " alone";
          }
          for (ThreadPool* pool : {&pool1, &pool2}) {
            for (int64_t len : {2, 3, 4, 5, 6, 7, 8, 9, 12, 13, 17, 25, 37}) {
              for (int64_t s = 0; s + len <= M; s += 11) {
                const int64_t ldy = n + 3;
                std::vector<float> part(len * ldy);
                qgemm_with_isa(isa, x.data() + s * k, k, len, w.packed.p, t, n, k, b, part.data(), ldy, *pool);
                for (int64_t i = 0; i < len; ++i)
                  ASSERT_EQ(std::memcmp(part.data() + i * ldy, full.data() + (s + i) * n, n * 4), 0)
                      << label(isa, t) << " n=" << n << " k=" << k << " rows " << s << "+" << len << " row " << i
                      << " threads " << pool->num_threads();
              }
            }
          }
          std::vector<float> x2 = random_floats(rng, 17 * k);
          std::memcpy(x2.data() + 3 * k, x.data() + 10 * k, k * 4);
          std::vector<float> y2(17 * n);
          qgemm_with_isa(isa, x2.data(), k, 17, w.packed.p, t, n, k, b, y2.data(), n, pool2);
          ASSERT_EQ(std::memcmp(y2.data() + 3 * n, full.data() + 10 * n, n * 4), 0) << label(isa, t);
        }
      }
    }
  }
}

// Large m (several row blocks; rows split over threads when n is narrow) agrees with m = 1, and other
// thread counts give the same bits.
TEST(CpuQgemm, ThreadCountAndLargeM) {
  std::mt19937 rng(10);
  struct Case {
    int64_t m, n, k;
  };
  const Case cases[] = {{1, 600, 576}, {1, 576, 64}, {1, 100, 576}, {9, 100, 64}, {7, 150, 320}, {61, 40, 64}, {515, 48, 1536}, {130, 600, 96}};
  std::vector<std::unique_ptr<QWeights>> ws;
  std::vector<std::vector<float>> xs, biases, want;
  for (const Case& c : cases) {
    for (GgmlType t : kTypes) {
      ws.push_back(std::make_unique<QWeights>(rng, t, c.n, c.k));
      xs.push_back(random_floats(rng, c.m * c.k));
      biases.push_back(random_floats(rng, c.n));
    }
  }
  for (int threads : {1, 2, 3}) {
    ThreadPool pool(threads);
    size_t idx = 0;
    for (Isa isa : available_isas()) {
      for (size_t ci = 0; ci < ws.size(); ++ci) {
        const Case& c = cases[ci / 3];
        const QWeights& w = *ws[ci];
        std::vector<float> y(c.m * c.n);
        qgemm_with_isa(isa, xs[ci].data(), c.k, c.m, w.packed.p, w.t, c.n, c.k, biases[ci].data(), y.data(), c.n,
                       pool);
        if (threads == 1) {
          want.push_back(y);
          // Rows alone equal the batch.
          for (int64_t i = 0; i < c.m; i += 37) {
            std::vector<float> one(c.n);
            qgemm_with_isa(isa, xs[ci].data() + i * c.k, c.k, 1, w.packed.p, w.t, c.n, c.k, biases[ci].data(),
                           one.data(), c.n, pool);
            ASSERT_EQ(std::memcmp(one.data(), y.data() + i * c.n, c.n * 4), 0) << label(isa, w.t) << " row " << i;
          }
        } else {
          ASSERT_EQ(std::memcmp(y.data(), want[idx].data(), y.size() * 4), 0)
              << label(isa, w.t) << " m=" << c.m << " n=" << c.n << " threads " << threads;
        }
        ++idx;
      }
    }
  }
}

// The ISAs agree bit for bit (qgemm.h's numerics: exact integer block dots, the same f32 operations).
TEST(CpuQgemm, IsasAgreeBitwise) {
  ThreadPool pool(2);
  std::mt19937 rng(8);
  std::vector<Isa> isas = available_isas();
  for (GgmlType t : kTypes) {
    for (auto [m, n, k] : {std::tuple<int64_t, int64_t, int64_t>{1, 1536, 576}, {3, 77, 1536}, {64, 96, 576}}) {
      QWeights w(rng, t, n, k, /*quantized_from_floats=*/(n % 2) == 0);
      std::vector<float> bias = random_floats(rng, n);
      std::vector<float> x = random_floats(rng, m * k);
      std::vector<float> first;
      for (Isa isa : isas) {
        std::vector<float> y(m * n);
        qgemm_with_isa(isa, x.data(), k, m, w.packed.p, t, n, k, bias.data(), y.data(), n, pool);
        if (first.empty()) {
          first = y;
        } else {
          ASSERT_EQ(std::memcmp(y.data(), first.data(), y.size() * 4), 0)
              << label(isa, t) << " vs " << label(isas[0], t) << " m=" << m;
        }
      }
    }
  }
}

}  // namespace
}  // namespace kiln::cpu
