#include "backend/cpu/gemm.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/cpu_features.h"
#include "core/dtype.h"
#include "core/thread_pool.h"

namespace kiln::cpu {
namespace {

constexpr DType kWeightTypes[] = {DType::kF32, DType::kBF16, DType::kF16};

std::vector<Isa> available_isas() {
  std::vector<Isa> out;
  for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512})
    if (isa_available(isa)) out.push_back(isa);
  return out;
}

std::string label(Isa isa, DType wtype) {
  return std::string(isa_name(isa)) + "/" + dtype_name(wtype) + " (" + gemm_kernel_name_for(isa, wtype) + ")";
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

// W [n,k] as f32, converted to `wtype` (stored) and packed.
struct Weights {
  Weights(std::mt19937& rng, DType wtype_, int64_t n_, int64_t k_)
      : wtype(wtype_), n(n_), k(k_), packed(packed_weight_bytes(wtype_, n_, k_)) {
    std::vector<float> f = random_floats(rng, static_cast<size_t>(n * k), 0.5f);
    stored.resize(static_cast<size_t>(n * k) * dtype_size(wtype));
    EXPECT_TRUE(convert_floats(f.data(), DType::kF32, stored.data(), wtype, static_cast<size_t>(n * k)));
    pack_weight(stored.data(), wtype, n, k, wtype, packed.p);
  }
  float at(int64_t r, int64_t c) const {
    size_t i = static_cast<size_t>(r * k + c);
    switch (wtype) {
      case DType::kF32: return reinterpret_cast<const float*>(stored.data())[i];
      case DType::kBF16: return bf16_to_f32(reinterpret_cast<const uint16_t*>(stored.data())[i]);
      default: return f16_to_f32(reinterpret_cast<const uint16_t*>(stored.data())[i]);
    }
  }
  DType wtype;
  int64_t n, k;
  std::vector<uint8_t> stored;
  AlignedBuf packed;
};

// Checks y (row stride ldy) against gemm_reference with an error bound relative to sum |x||w| + |b|.
void expect_close(const std::vector<float>& x, int64_t ldx, int64_t m, const Weights& w, const float* bias,
                  const float* y, int64_t ldy, const std::string& what) {
  const int64_t n = w.n, k = w.k;
  std::vector<float> xc(static_cast<size_t>(m * k));
  for (int64_t i = 0; i < m; ++i)
    for (int64_t kk = 0; kk < k; ++kk) xc[i * k + kk] = x[i * ldx + kk];
  std::vector<float> ref(static_cast<size_t>(m * n));
  gemm_reference(xc.data(), m, w.stored.data(), w.wtype, n, k, bias, ref.data());
  const double rel = std::max(1e-5, (k + 2) * std::ldexp(1.0, -23));
  int bad = 0;
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double mag = bias ? std::fabs(bias[j]) : 0.0;
      for (int64_t kk = 0; kk < k; ++kk) {
        float xv = xc[i * k + kk];
        if (w.wtype == DType::kBF16) xv = bf16_to_f32(f32_to_bf16(xv));
        mag += std::fabs(static_cast<double>(xv) * w.at(j, kk));
      }
      const double err = std::fabs(static_cast<double>(y[i * ldy + j]) - ref[i * n + j]);
      if (!(err <= rel * mag + 1e-30) && bad++ < 5)
        ADD_FAILURE() << what << " m=" << m << " n=" << n << " k=" << k << " at (" << i << "," << j
                      << "): got " << y[i * ldy + j] << " want " << ref[i * n + j] << " err " << err << " bound "
                      << rel * mag;
    }
  }
}

TEST(CpuGemm, PackedSizesAndLayout) {
  EXPECT_EQ(packed_weight_bytes(DType::kF32, 16, 3), 16u * 3 * 4);
  EXPECT_EQ(packed_weight_bytes(DType::kF32, 17, 3), 32u * 3 * 4);
  EXPECT_EQ(packed_weight_bytes(DType::kBF16, 1, 3), 16u * 4 * 2);
  EXPECT_EQ(packed_weight_bytes(DType::kF16, 40, 7), 48u * 8 * 2);
  EXPECT_EQ(packed_weight_bytes(DType::kBF16, 0, 7), 0u);
  for (DType t : kWeightTypes) {
    for (int64_t n = 1; n < 40; n += 3) {
      for (int64_t k = 1; k < 20; ++k) EXPECT_EQ(packed_weight_bytes(t, n, k) % 64, 0u);
    }
  }

  // Element (r, c) of W lands where the documented layout says; padding is zero.
  const int64_t n = 19, k = 5;
  std::vector<float> w(n * k);
  for (int64_t i = 0; i < n * k; ++i) w[i] = static_cast<float>(i + 1);
  AlignedBuf f32(packed_weight_bytes(DType::kF32, n, k)), bf(packed_weight_bytes(DType::kBF16, n, k)),
      h(packed_weight_bytes(DType::kF16, n, k));
  pack_weight(w.data(), DType::kF32, n, k, DType::kF32, f32.p);
  pack_weight(w.data(), DType::kF32, n, k, DType::kBF16, bf.p);
  pack_weight(w.data(), DType::kF32, n, k, DType::kF16, h.p);
  const float* pf = static_cast<const float*>(f32.p);
  const uint16_t* pb = static_cast<const uint16_t*>(bf.p);
  const uint16_t* ph = static_cast<const uint16_t*>(h.p);
  for (int64_t r = 0; r < 32; ++r) {
    for (int64_t c = 0; c < 6; ++c) {
      const float want = (r < n && c < k) ? w[r * k + c] : 0.0f;
      const int64_t panel = r / 16, col = r % 16;
      if (c < k) {
        EXPECT_EQ(pf[(panel * k + c) * 16 + col], want);
      }
      EXPECT_EQ(bf16_to_f32(pb[panel * 6 * 16 + (c / 2) * 32 + col * 2 + c % 2]), bf16_to_f32(f32_to_bf16(want)));
      EXPECT_EQ(f16_to_f32(ph[(panel * 6 + c) * 16 + col]), f16_to_f32(f32_to_f16(want)));
    }
  }
}

TEST(CpuGemm, PackConvertsFromEverySourceType) {
  std::mt19937 rng(7);
  const int64_t n = 21, k = 13;
  std::vector<float> f = random_floats(rng, n * k);
  for (DType src : kWeightTypes) {
    std::vector<uint8_t> s(n * k * dtype_size(src));
    ASSERT_TRUE(convert_floats(f.data(), DType::kF32, s.data(), src, n * k));
    for (DType dst : kWeightTypes) {
      // Expected: the source values converted to dst element by element, then packed.
      std::vector<float> sf(n * k);
      ASSERT_TRUE(convert_floats(s.data(), src, sf.data(), DType::kF32, n * k));
      std::vector<uint8_t> d(n * k * dtype_size(dst));
      ASSERT_TRUE(convert_floats(sf.data(), DType::kF32, d.data(), dst, n * k));
      AlignedBuf a(packed_weight_bytes(dst, n, k)), b(packed_weight_bytes(dst, n, k));
      pack_weight(s.data(), src, n, k, dst, a.p);
      pack_weight(d.data(), dst, n, k, dst, b.p);
      EXPECT_EQ(std::memcmp(a.p, b.p, packed_weight_bytes(dst, n, k)), 0)
          << dtype_name(src) << " -> " << dtype_name(dst);
    }
  }
}

TEST(CpuGemm, KernelNames) {
  const std::string best = gemm_kernel_name(DType::kBF16);
  EXPECT_EQ(best, gemm_kernel_name_for(best_isa(), DType::kBF16));
  EXPECT_STREQ(gemm_kernel_name_for(Isa::kScalar, DType::kF32), "scalar");
  if (isa_available(Isa::kAvx2)) {
    EXPECT_STREQ(gemm_kernel_name_for(Isa::kAvx2, DType::kF32), "avx2_fma");
  }
  if (isa_available(Isa::kAvx512)) {
    EXPECT_STREQ(gemm_kernel_name_for(Isa::kAvx512, DType::kF32), "avx512_fma");
    EXPECT_STREQ(gemm_kernel_name_for(Isa::kAvx512, DType::kBF16),
                 cpu_features().avx512_bf16 ? "avx512_bf16" : "avx2_bf16");
  }
  std::printf("[ info ] cpu: %s; kernels: f32=%s bf16=%s f16=%s\n", cpu_features().to_string().c_str(),
              gemm_kernel_name(DType::kF32), gemm_kernel_name(DType::kBF16), gemm_kernel_name(DType::kF16));
}

// Every n in 1..40 with every k in 1..70 (m varying over 1..20), all ISAs and weight types, with and
// without bias.
TEST(CpuGemm, MatchesReferenceOddSizes) {
  ThreadPool pool(2);
  std::mt19937 rng(1);
  for (Isa isa : available_isas()) {
    for (DType wt : kWeightTypes) {
      for (int64_t n = 1; n <= 40; ++n) {
        for (int64_t k = 1; k <= 70; ++k) {
          const int64_t m = 1 + (n * 7 + k * 3) % 20;
          Weights w(rng, wt, n, k);
          std::vector<float> x = random_floats(rng, m * k);
          std::vector<float> bias = random_floats(rng, n);
          const bool with_bias = (n + k) % 2 == 0;
          std::vector<float> y(m * n);
          gemm_with_isa(isa, x.data(), k, m, w.packed.p, wt, n, k, with_bias ? bias.data() : nullptr, y.data(), n,
                        pool);
          expect_close(x, k, m, w, with_bias ? bias.data() : nullptr, y.data(), n, label(isa, wt));
          if (HasFailure()) return;
        }
      }
    }
  }
}

TEST(CpuGemm, MatchesReferenceEveryM) {
  ThreadPool pool(2);
  std::mt19937 rng(2);
  for (Isa isa : available_isas()) {
    for (DType wt : kWeightTypes) {
      for (auto [n, k] : {std::pair<int64_t, int64_t>{37, 29}, {64, 64}, {200, 131}}) {
        Weights w(rng, wt, n, k);
        std::vector<float> bias = random_floats(rng, n);
        for (int64_t m = 1; m <= 20; ++m) {
          std::vector<float> x = random_floats(rng, m * k);
          std::vector<float> y(m * n);
          gemm_with_isa(isa, x.data(), k, m, w.packed.p, wt, n, k, bias.data(), y.data(), n, pool);
          expect_close(x, k, m, w, bias.data(), y.data(), n, label(isa, wt));
        }
      }
    }
  }
}

TEST(CpuGemm, LargerShapes) {
  ThreadPool pool(2);
  std::mt19937 rng(3);
  for (Isa isa : available_isas()) {
    for (DType wt : kWeightTypes) {
      // Prefill-like (several row blocks and tiles, m remainder) and a thread split over m (n < 48).
      for (auto [m, n, k] : {std::tuple<int64_t, int64_t, int64_t>{77, 96, 576}, {130, 40, 300}, {3, 600, 1537}}) {
        Weights w(rng, wt, n, k);
        std::vector<float> bias = random_floats(rng, n);
        std::vector<float> x = random_floats(rng, m * k);
        std::vector<float> y(m * n);
        gemm_with_isa(isa, x.data(), k, m, w.packed.p, wt, n, k, bias.data(), y.data(), n, pool);
        expect_close(x, k, m, w, bias.data(), y.data(), n, label(isa, wt));
      }
    }
  }
}

TEST(CpuGemm, StridesLeaveOtherMemoryAlone) {
  ThreadPool pool(2);
  std::mt19937 rng(4);
  const float sentinel = -12345.0f;
  for (Isa isa : available_isas()) {
    for (DType wt : kWeightTypes) {
      for (auto [m, n, k] : {std::tuple<int64_t, int64_t, int64_t>{5, 23, 19}, {17, 50, 64}, {1, 33, 7}}) {
        const int64_t ldx = k + 5, ldy = n + 9;
        Weights w(rng, wt, n, k);
        std::vector<float> x = random_floats(rng, m * ldx);
        std::vector<float> y(m * ldy + 16, sentinel);
        gemm_with_isa(isa, x.data(), ldx, m, w.packed.p, wt, n, k, nullptr, y.data(), ldy, pool);
        expect_close(x, ldx, m, w, nullptr, y.data(), ldy, label(isa, wt) + " strided");
        for (int64_t i = 0; i < m; ++i)
          for (int64_t j = n; j < ldy; ++j) ASSERT_EQ(y[i * ldy + j], sentinel) << label(isa, wt);
        for (size_t j = m * ldy; j < y.size(); ++j) ASSERT_EQ(y[j], sentinel);
      }
    }
  }
}

TEST(CpuGemm, ZeroSizes) {
  ThreadPool pool(2);
  std::vector<float> bias = {1.5f, -2.0f, 3.0f};
  for (Isa isa : available_isas()) {
    for (DType wt : kWeightTypes) {
      // k == 0: y = bias (or 0).
      std::vector<float> y(6, 7.0f);
      gemm_with_isa(isa, nullptr, 0, 2, nullptr, wt, 3, 0, bias.data(), y.data(), 3, pool);
      EXPECT_EQ(y, (std::vector<float>{1.5f, -2.0f, 3.0f, 1.5f, -2.0f, 3.0f}));
      gemm_with_isa(isa, nullptr, 0, 2, nullptr, wt, 3, 0, nullptr, y.data(), 3, pool);
      EXPECT_EQ(y, std::vector<float>(6, 0.0f));
      // m == 0 / n == 0: nothing written.
      gemm_with_isa(isa, nullptr, 4, 0, nullptr, wt, 3, 4, nullptr, nullptr, 3, pool);
      gemm_with_isa(isa, nullptr, 4, 2, nullptr, wt, 0, 4, nullptr, nullptr, 0, pool);
    }
  }
}

// Row i of y must be bit-identical whatever m is, whatever the other rows are, whatever the thread count.
// (Calls are grouped by pool: the pool's workers spin for a while after each job, so alternating
// between live pools would oversubscribe the cores.)
TEST(CpuGemm, BatchInvariance) {
  ThreadPool pool1(1), pool2(2);
  std::mt19937 rng(5);
  for (Isa isa : available_isas()) {
    for (DType wt : kWeightTypes) {
      for (auto [n, k] : {std::pair<int64_t, int64_t>{40, 70}, {150, 333}, {33, 64}, {600, 576}}) {
        const int64_t M = 61;
        Weights w(rng, wt, n, k);
        std::vector<float> bias = random_floats(rng, n);
        std::vector<float> x = random_floats(rng, M * k);
        for (const float* b : {static_cast<const float*>(nullptr), static_cast<const float*>(bias.data())}) {
          std::vector<float> full(M * n);
          gemm_with_isa(isa, x.data(), k, M, w.packed.p, wt, n, k, b, full.data(), n, pool2);
          // Every row alone, on one thread.
          for (int64_t i = 0; i < M; ++i) {
            std::vector<float> one(n);
            gemm_with_isa(isa, x.data() + i * k, k, 1, w.packed.p, wt, n, k, b, one.data(), n, pool1);
            ASSERT_EQ(std::memcmp(one.data(), full.data() + i * n, n * 4), 0)
                << label(isa, wt) << " n=" << n << " k=" << k << " row " << i << " alone";
          }
          // Sub-batches [s, s+len) of many lengths (every decode and prefill tile height, their
          // remainders), with a row stride, on one and on two threads.
          for (ThreadPool* pool : {&pool1, &pool2}) {
            for (int64_t len : {2, 3, 4, 5, 6, 7, 8, 9, 12, 13, 16, 17, 20, 25, 37}) {
              for (int64_t s = 0; s + len <= M; s += 9) {
                const int64_t ldy = n + 3;
                std::vector<float> part(len * ldy);
                gemm_with_isa(isa, x.data() + s * k, k, len, w.packed.p, wt, n, k, b, part.data(), ldy, *pool);
                for (int64_t i = 0; i < len; ++i)
                  ASSERT_EQ(std::memcmp(part.data() + i * ldy, full.data() + (s + i) * n, n * 4), 0)
                      << label(isa, wt) << " n=" << n << " k=" << k << " rows " << s << "+" << len << " row " << i
                      << " threads " << pool->num_threads();
              }
            }
          }
          // Same row inside a batch whose other rows differ.
          std::vector<float> x2 = random_floats(rng, 17 * k);
          std::memcpy(x2.data() + 3 * k, x.data() + 10 * k, k * 4);
          std::vector<float> y2(17 * n);
          gemm_with_isa(isa, x2.data(), k, 17, w.packed.p, wt, n, k, b, y2.data(), n, pool2);
          ASSERT_EQ(std::memcmp(y2.data() + 3 * n, full.data() + 10 * n, n * 4), 0) << label(isa, wt);
        }
      }
    }
  }
}

// Other thread counts split n and m differently (3 threads: uneven panel chunks, m split when n is
// narrow); the result must not change.
TEST(CpuGemm, ThreadCountInvariance) {
  std::mt19937 rng(10);
  struct Case {
    int64_t m, n, k;
  };
  const Case cases[] = {{1, 600, 576}, {7, 150, 333}, {61, 40, 70}, {61, 33, 64}, {130, 600, 100}};
  std::vector<std::vector<float>> want;
  std::vector<std::unique_ptr<Weights>> ws;
  std::vector<std::vector<float>> xs;
  std::vector<std::vector<float>> biases;
  for (const Case& c : cases) {
    for (DType wt : kWeightTypes) {
      ws.push_back(std::make_unique<Weights>(rng, wt, c.n, c.k));
      xs.push_back(random_floats(rng, c.m * c.k));
      biases.push_back(random_floats(rng, c.n));
    }
  }
  for (int threads : {1, 2, 3, 4}) {
    ThreadPool pool(threads);
    size_t idx = 0;
    for (Isa isa : available_isas()) {
      for (size_t ci = 0; ci < ws.size(); ++ci) {
        const Case& c = cases[ci / 3];
        const Weights& w = *ws[ci];
        std::vector<float> y(c.m * c.n);
        gemm_with_isa(isa, xs[ci].data(), c.k, c.m, w.packed.p, w.wtype, c.n, c.k, biases[ci].data(), y.data(), c.n,
                      pool);
        if (threads == 1) {
          want.push_back(y);
        } else {
          ASSERT_EQ(std::memcmp(y.data(), want[idx].data(), y.size() * 4), 0)
              << label(isa, w.wtype) << " m=" << c.m << " n=" << c.n << " threads " << threads;
        }
        ++idx;
      }
    }
  }
}

// Large-m blocks (several L2 row blocks, split over threads by rows when n is small) agree with m = 1.
TEST(CpuGemm, BatchInvarianceLargeM) {
  ThreadPool pool2(2);
  std::mt19937 rng(6);
  for (Isa isa : available_isas()) {
    for (DType wt : kWeightTypes) {
      for (auto [n, k] : {std::pair<int64_t, int64_t>{48, 1536}, {130, 576}}) {
        const int64_t M = 515;
        Weights w(rng, wt, n, k);
        std::vector<float> bias = random_floats(rng, n);
        std::vector<float> x = random_floats(rng, M * k);
        std::vector<float> full(M * n);
        gemm_with_isa(isa, x.data(), k, M, w.packed.p, wt, n, k, bias.data(), full.data(), n, pool2);
        for (int64_t i = 0; i < M; i += 13) {
          std::vector<float> one(n);
          gemm_with_isa(isa, x.data() + i * k, k, 1, w.packed.p, wt, n, k, bias.data(), one.data(), n, pool2);
          ASSERT_EQ(std::memcmp(one.data(), full.data() + i * n, n * 4), 0) << label(isa, wt) << " row " << i;
        }
      }
    }
  }
}

// The ISAs agree bit for bit where gemm.h promises it: bf16 on all paths (exact products, same
// order as vdpbf16ps), f32/f16 between AVX2 and AVX-512 (same FMA chain).
TEST(CpuGemm, IsasAgreeBitwise) {
  ThreadPool pool(2);
  std::mt19937 rng(8);
  std::vector<Isa> isas = available_isas();
  for (DType wt : kWeightTypes) {
    for (auto [m, n, k] : {std::tuple<int64_t, int64_t, int64_t>{1, 40, 70}, {19, 77, 65}, {64, 96, 576}}) {
      Weights w(rng, wt, n, k);
      std::vector<float> bias = random_floats(rng, n);
      std::vector<float> x = random_floats(rng, m * k);
      std::vector<std::vector<float>> ys;
      for (Isa isa : isas) {
        ys.emplace_back(m * n);
        gemm_with_isa(isa, x.data(), k, m, w.packed.p, wt, n, k, bias.data(), ys.back().data(), n, pool);
      }
      for (size_t a = 0; a < isas.size(); ++a) {
        for (size_t b = a + 1; b < isas.size(); ++b) {
          if (wt != DType::kBF16 && isas[a] == Isa::kScalar) continue;
          EXPECT_EQ(std::memcmp(ys[a].data(), ys[b].data(), m * n * 4), 0)
              << dtype_name(wt) << " " << isa_name(isas[a]) << " vs " << isa_name(isas[b]) << " m=" << m;
        }
      }
    }
  }
}

// A NaN or Inf in one row of x poisons that row of y only.
TEST(CpuGemm, NonFiniteRowsStayInTheirRow) {
  ThreadPool pool(2);
  std::mt19937 rng(9);
  const int64_t m = 11, n = 70, k = 45;
  for (Isa isa : available_isas()) {
    for (DType wt : kWeightTypes) {
      Weights w(rng, wt, n, k);
      std::vector<float> x = random_floats(rng, m * k);
      std::vector<float> clean(m * n), y(m * n);
      gemm_with_isa(isa, x.data(), k, m, w.packed.p, wt, n, k, nullptr, clean.data(), n, pool);
      x[4 * k + 7] = std::nanf("");
      x[9 * k + 44] = INFINITY;
      gemm_with_isa(isa, x.data(), k, m, w.packed.p, wt, n, k, nullptr, y.data(), n, pool);
      for (int64_t i = 0; i < m; ++i) {
        for (int64_t j = 0; j < n; ++j) {
          if (i == 4) {
            EXPECT_TRUE(std::isnan(y[i * n + j])) << label(isa, wt);
          } else if (i == 9) {
            EXPECT_TRUE(std::isinf(y[i * n + j]) && (y[i * n + j] > 0) == (w.at(j, 44) > 0)) << label(isa, wt);
          } else {
            EXPECT_EQ(y[i * n + j], clean[i * n + j]) << label(isa, wt);
          }
        }
      }
    }
  }
}

TEST(CpuGemm, Bf16RoundsActivationsToNearestEven) {
  // bf16 values near 1 are 2^-7 apart. 1 + 2^-8 is a tie between 1 and 1 + 2^-7: even gives 1;
  // 1 + 3*2^-8 is a tie between 1 + 2^-7 and 1 + 2^-6: even gives 1 + 2^-6; 1 + 2^-8 + 2^-20 rounds up.
  ThreadPool pool(1);
  const int64_t n = 1, k = 3;
  const float w_f[3] = {1.0f, 1.0f, 1.0f};
  AlignedBuf packed(packed_weight_bytes(DType::kBF16, n, k));
  pack_weight(w_f, DType::kF32, n, k, DType::kBF16, packed.p);
  const float x[3] = {1.0f + std::ldexp(1.0f, -8), 1.0f + 3 * std::ldexp(1.0f, -8),
                      1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20)};
  const float want = 1.0f + (1.0f + std::ldexp(1.0f, -6)) + (1.0f + std::ldexp(1.0f, -7));
  for (Isa isa : available_isas()) {
    float y = 0;
    gemm_with_isa(isa, x, k, 1, packed.p, DType::kBF16, n, k, nullptr, &y, n, pool);
    EXPECT_EQ(y, want) << isa_name(isa);
  }
}

}  // namespace
}  // namespace kiln::cpu
