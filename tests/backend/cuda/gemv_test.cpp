// The skinny linear kernel (src/backend/cuda/gemv.cu) against a float64 host reference that applies the
// same roundings as the GPU (inputs and the prologue's output rounded to the activation type, the residual
// add rounded as linear-then-add), for m = 1..4, f16 / bf16 (f32 outputs too), odd n, k not a multiple of
// the tile; the fused prologues / epilogue against the unfused kernels (rmsnorm, silu_mul, add) followed by
// the plain gemv (also the RMSNorm prologue with f32 outputs: the final norm before the LM head's logits).
// Outputs are poisoned (NaN bytes) first so that an element left unwritten fails.
// Every test skips without a CUDA device (CI builds this but has no GPU).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "backend/cuda/cuda_test_util.h"
#include "backend/cuda/gemv.h"
#include "backend/cuda/kernels.h"
#include "core/dtype.h"

namespace kiln::cuda {
namespace {

bool is_sm90() {
  int dev = 0, major = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
  return major >= 9;
}

// One stream for all the launches (created once; the kernels launch as programmatic dependent launches).
cudaStream_t stream() {
  static cudaStream_t s = [] {
    cudaStream_t made = nullptr;
    EXPECT_EQ(cudaStreamCreate(&made), cudaSuccess);
    return made;
  }();
  return s;
}

// Bytes of `v` in t (round to nearest even), and back.
std::vector<uint8_t> encode(const std::vector<float>& v, DType t) {
  std::vector<uint8_t> out(v.size() * dtype_size(t));
  EXPECT_TRUE(convert_floats(v.data(), DType::kF32, out.data(), t, v.size()));
  return out;
}
std::vector<float> decode(const std::vector<uint8_t>& b, DType t) {
  std::vector<float> out(b.size() / dtype_size(t));
  EXPECT_TRUE(convert_floats(b.data(), t, out.data(), DType::kF32, out.size()));
  return out;
}
float round_to(double v, DType t) {
  const float f = static_cast<float>(v);
  if (t == DType::kF16) return f16_to_f32(f32_to_f16(f));
  if (t == DType::kBF16) return bf16_to_f32(f32_to_bf16(f));
  return f;
}
// Relative size of one unit in the last place of t.
double ulp(DType t) { return t == DType::kF16 ? 1.0 / 1024 : t == DType::kBF16 ? 1.0 / 128 : 0.0; }

class Dev {
 public:
  explicit Dev(size_t bytes) : bytes_(bytes) { EXPECT_EQ(cudaMalloc(&p_, std::max<size_t>(bytes, 16)), cudaSuccess); }
  ~Dev() { cudaFree(p_); }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  void* get() const { return p_; }
  void put(const std::vector<uint8_t>& b) { EXPECT_EQ(cudaMemcpy(p_, b.data(), b.size(), cudaMemcpyHostToDevice), cudaSuccess); }
  void put(const std::vector<float>& f) { EXPECT_EQ(cudaMemcpy(p_, f.data(), f.size() * 4, cudaMemcpyHostToDevice), cudaSuccess); }
  std::vector<uint8_t> get_bytes() const {
    std::vector<uint8_t> b(bytes_);
    EXPECT_EQ(cudaMemcpy(b.data(), p_, bytes_, cudaMemcpyDeviceToHost), cudaSuccess);
    return b;
  }
  void poison() { EXPECT_EQ(cudaMemset(p_, 0xFF, bytes_), cudaSuccess); }

 private:
  void* p_ = nullptr;
  size_t bytes_;
};

// Zero-mean values of standard deviation `scale` (uniform: cheap enough for millions of weights).
std::vector<float> random_values(size_t n, std::mt19937& rng, float scale) {
  uint64_t s = rng() | (uint64_t{rng()} << 32) | 1;
  const float a = scale * std::sqrt(3.0f) / 2147483648.0f;
  std::vector<float> v(n);
  for (float& x : v) {
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;
    x = a * static_cast<float>(static_cast<int32_t>(s >> 32));
  }
  return v;
}

// The product's input as the GPU sees it (rounded to t) for each prologue, from raw x values (already in t).
std::vector<float> prologue_ref(const std::vector<float>& x, int64_t m, int64_t k, GemvFusion::Prologue pro,
                                const std::vector<float>& nw, float eps, DType t) {
  std::vector<float> out(m * k);
  for (int64_t i = 0; i < m; ++i) {
    if (pro == GemvFusion::Prologue::kRmsNorm) {
      double ss = 0;
      for (int64_t l = 0; l < k; ++l) ss += double(x[i * k + l]) * x[i * k + l];
      const double inv = 1.0 / std::sqrt(ss / double(k) + eps);
      for (int64_t l = 0; l < k; ++l) out[i * k + l] = round_to(double(x[i * k + l]) * inv * nw[l], t);
    } else if (pro == GemvFusion::Prologue::kSiluMul) {
      for (int64_t l = 0; l < k; ++l) {
        const double g = x[i * 2 * k + l], u = x[i * 2 * k + k + l];
        out[i * k + l] = round_to(g / (1.0 + std::exp(-g)) * u, t);
      }
    } else {
      for (int64_t l = 0; l < k; ++l) out[i * k + l] = x[i * k + l];
    }
  }
  return out;
}

struct Result {
  int64_t bad = 0;       // elements outside the per-element tolerance
  int64_t nonfinite = 0;
  double rel = 0;        // norm-wise relative error
  std::string first;     // the first bad element
};

// Runs one gemv (fused as `f`) on random data and checks it against the float64 reference.
// Also, for fusions, against the unfused kernels followed by the plain gemv (`unfused_*` counts).
struct Check {
  Result ref;
  int64_t unfused_diff = 0;   // elements differing from the unfused result at all
  int64_t unfused_bad = 0;    // ... by more than the tolerance (a rounding flip of the prologue's output)
  int64_t unfused_rows = 0;   // x rows with an output differing from the unfused result
};

Check run_case(DType t, DType yt, int64_t m, int64_t n, int64_t k, bool with_bias, const GemvFusion& f0,
               std::mt19937& rng) {
  Check out;
  GemvFusion f = f0;
  const int64_t xk = f.prologue == GemvFusion::Prologue::kSiluMul ? 2 * k : k;
  std::vector<float> x = random_values(m * xk, rng, f.prologue == GemvFusion::Prologue::kRmsNorm ? 3.0f : 1.0f);
  for (float& v : x) v = round_to(v, t);
  std::vector<float> w = random_values(n * k, rng, 1.0f / std::sqrt(static_cast<float>(k)));
  for (float& v : w) v = round_to(v, t);
  std::vector<float> bias = random_values(n, rng, 1.0f), nw = random_values(k, rng, 0.5f), y0 = random_values(m * n, rng, 2.0f);
  for (float& v : nw) v += 1.0f;
  for (float& v : y0) v = round_to(v, t);
  const size_t ts = dtype_size(t), yts = dtype_size(yt);
  Dev dx(m * xk * ts), dw(n * k * ts), db(n * 4), dnw(k * 4), dy(m * n * yts), dtmp(m * k * ts), dy2(m * n * yts);
  dx.put(encode(x, t));
  dw.put(encode(w, t));
  db.put(bias);
  dnw.put(nw);
  f.norm_weight = static_cast<const float*>(dnw.get());
  if (f.add_to_y) dy.put(encode(y0, yt));
  else dy.poison();
  const float* b = with_bias ? static_cast<const float*>(db.get()) : nullptr;
  EXPECT_TRUE(gemv_supported(t, t, yt, m, n, k, dx.get(), dw.get(), f));
  gemv(dx.get(), t, m, dw.get(), n, k, b, dy.get(), yt, stream(), f);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::vector<float> y = decode(dy.get_bytes(), yt);

  // float64 reference with the GPU's roundings.
  const std::vector<float> xin = prologue_ref(x, m, k, f.prologue, nw, f.eps, t);
  // The largest |x_l w_jl| of each output: a prologue output rounded the other way (its f32 arithmetic against
  // float64 here, or another summation order of the unfused kernel) moves the dot product by up to ulp(t) of
  // it, which an f32 output (unlike one of type t) does not round away.
  std::vector<double> maxp(m * n, 0.0);
  double err2 = 0, ref2 = 0;
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double acc = with_bias ? bias[j] : 0.0, sabs = with_bias ? std::fabs(bias[j]) : 0.0;
      for (int64_t l = 0; l < k; ++l) {
        const double p = double(xin[i * k + l]) * w[j * k + l];
        acc += p;
        sabs += std::fabs(p);
        maxp[i * n + j] = std::max(maxp[i * n + j], std::fabs(p));
      }
      double ref = acc, tol = ulp(yt) * std::fabs(acc) + 4e-5 * sabs + 1e-6;
      if (f.prologue != GemvFusion::Prologue::kNone && yt != t) tol += 2 * ulp(t) * maxp[i * n + j];
      if (f.add_to_y) {
        ref = double(y0[i * n + j]) + round_to(acc, t);
        tol += ulp(yt) * std::fabs(ref);
      }
      const double got = y[i * n + j];
      if (!std::isfinite(got)) {
        if (out.ref.nonfinite++ == 0) out.ref.first = "y[" + std::to_string(i) + "," + std::to_string(j) + "] not finite";
        continue;
      }
      err2 += (got - ref) * (got - ref);
      ref2 += ref * ref;
      if (std::fabs(got - ref) > tol && out.ref.bad++ == 0 && out.ref.first.empty())
        out.ref.first = "y[" + std::to_string(i) + "," + std::to_string(j) + "] = " + std::to_string(got) + ", want " +
                        std::to_string(ref) + " +- " + std::to_string(tol);
    }
  out.ref.rel = std::sqrt(err2 / std::max(ref2, 1e-30));

  if (f.prologue != GemvFusion::Prologue::kNone || f.add_to_y) {
    // Unfused: the prologue's kernel into a buffer, the plain gemv, then add.
    const void* xin_dev = dx.get();
    if (f.prologue == GemvFusion::Prologue::kRmsNorm) {
      rmsnorm(dx.get(), static_cast<const float*>(dnw.get()), f.eps, dtmp.get(), m, k, t, stream());
      xin_dev = dtmp.get();
    } else if (f.prologue == GemvFusion::Prologue::kSiluMul) {
      silu_mul(dx.get(), dtmp.get(), m, k, t, stream());
      xin_dev = dtmp.get();
    }
    dy2.poison();
    gemv(xin_dev, t, m, dw.get(), n, k, b, dy2.get(), yt, stream());
    Dev dyu(m * n * yts);
    if (f.add_to_y) {
      dyu.put(encode(y0, yt));
      add(dyu.get(), dy2.get(), m * n, t, stream());
    }
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const std::vector<float> yu = decode((f.add_to_y ? dyu : dy2).get_bytes(), yt);
    std::vector<bool> row_diff(m, false);
    for (int64_t i = 0; i < m * n; ++i) {
      if (y[i] == yu[i] || (std::isnan(y[i]) && std::isnan(yu[i]))) continue;
      ++out.unfused_diff;
      row_diff[i / n] = true;
      // A prologue output that rounds the other way moves a dot product by about ulp * |x_l w_jl|, which can
      // flip the rounding of the product (of the size of y0 when the add cancels) and of the sum; an f32 y
      // keeps the move itself (two such flips allowed).
      const double y0i = f.add_to_y ? std::fabs(y0[i]) : 0.0;
      const double tol = yt == t ? ulp(yt) * (2 * std::fabs(yu[i]) + 2 * y0i + 0.05) : 2 * ulp(t) * maxp[i];
      if (!(std::fabs(y[i] - yu[i]) <= tol)) ++out.unfused_bad;
    }
    for (bool d : row_diff) out.unfused_rows += d ? 1 : 0;
  }
  return out;
}

std::string describe(DType t, DType yt, int64_t m, int64_t n, int64_t k, bool bias, const GemvFusion& f) {
  const char* pro = f.prologue == GemvFusion::Prologue::kRmsNorm   ? " rmsnorm"
                    : f.prologue == GemvFusion::Prologue::kSiluMul ? " silu_mul"
                                                                   : "";
  return std::string(dtype_name(t)) + "->" + dtype_name(yt) + " m=" + std::to_string(m) + " n=" + std::to_string(n) +
         " k=" + std::to_string(k) + (bias ? " bias" : "") + pro + (f.add_to_y ? " +y" : "");
}

void expect_good(const Check& c, DType yt) {
  EXPECT_EQ(c.ref.nonfinite, 0) << c.ref.first;
  EXPECT_EQ(c.ref.bad, 0) << c.ref.first;
  EXPECT_LT(c.ref.rel, yt == DType::kF32 ? 1e-4 : yt == DType::kF16 ? 1e-3 : 8e-3);
}

struct Shape {
  int64_t n, k;
};
// Odd n, k not a multiple of the tile's columns, one row, 16384 columns at m = 4 (128 KB of x: the budget).
constexpr Shape kShapes[] = {{1, 8}, {33, 24}, {37, 576}, {1001, 1544}, {3072, 3072}, {515, 8200}, {7, 16384}};

TEST(CudaGemv, PlainMatchesFloat64Reference) {
  if (!::kiln::test::have_cuda_device()) GTEST_SKIP() << "no CUDA device";
  std::mt19937 rng(11);
  const std::pair<DType, DType> types[] = {
      {DType::kF16, DType::kF16}, {DType::kBF16, DType::kBF16}, {DType::kF16, DType::kF32}, {DType::kBF16, DType::kF32}};
  int i = 0;
  for (const auto& [t, yt] : types)
    for (int64_t m = 1; m <= 4; ++m)
      for (const Shape& s : kShapes) {
        const bool bias = (i++ % 2) == 0;
        SCOPED_TRACE(describe(t, yt, m, s.n, s.k, bias, {}));
        expect_good(run_case(t, yt, m, s.n, s.k, bias, {}, rng), yt);
      }
}

TEST(CudaGemv, FusedMatchesReferenceAndUnfused) {
  if (!::kiln::test::have_cuda_device()) GTEST_SKIP() << "no CUDA device";
  if (!is_sm90()) GTEST_SKIP() << "fusions need sm_90";
  std::mt19937 rng(12);
  using P = GemvFusion::Prologue;
  const GemvFusion fusions[] = {
      {P::kRmsNorm, nullptr, 1e-5f, false},
      {P::kSiluMul, nullptr, 0.0f, false},
      {P::kNone, nullptr, 0.0f, true},
      {P::kSiluMul, nullptr, 0.0f, true},
      {P::kRmsNorm, nullptr, 1e-6f, true},
  };
  constexpr Shape shapes[] = {{37, 576}, {1001, 1544}, {3072, 3072}, {515, 8200}, {3, 16384}};
  int64_t diffs = 0, total = 0;
  int i = 0;
  for (DType t : {DType::kF16, DType::kBF16})
    for (const GemvFusion& f : fusions)
      for (int64_t m = 1; m <= 4; ++m)
        for (const Shape& s : shapes) {
          const int64_t k = f.prologue == P::kSiluMul && s.k == 16384 ? 8192 : s.k;  // x [m, 2k] in memory
          const bool bias = (i++ % 2) == 1;
          SCOPED_TRACE(describe(t, t, m, s.n, k, bias, f));
          if (f.prologue == P::kSiluMul && m > kGemvMaxSiluMulRows) {  // unfused is faster there
            Dev x(m * 2 * k * 2), w(s.n * k * 2);
            EXPECT_FALSE(gemv_supported(t, t, t, m, s.n, k, x.get(), w.get(), f));
            continue;
          }
          const Check c = run_case(t, t, m, s.n, k, bias, f, rng);
          expect_good(c, t);
          // silu_mul and the add are elementwise with the same f32 arithmetic: bit-identical. RMSNorm's sum of
          // squares is summed in another order, so its 1/rms may differ in the last bit and flip a rounding.
          if (f.prologue != P::kRmsNorm) {
            EXPECT_EQ(c.unfused_diff, 0);
          }
          EXPECT_EQ(c.unfused_bad, 0);
          EXPECT_LE(c.unfused_diff, m * s.n / 20 + 1);
          diffs += c.unfused_diff;
          total += m * s.n;
        }
  std::printf("fused vs unfused: %ld of %ld outputs differ (all within a rounding flip)\n", static_cast<long>(diffs),
              static_cast<long>(total));
}

// The final RMSNorm fused into the LM head: f16/bf16 x, f32 logits (y), m = 1..4, Phi-3's LM-head shape
// (32064 x 3072) among others; against the float64 reference and against
// rmsnorm() then the plain f32-output gemv. Same f32 arithmetic but for the sum of squares' order: an
// output row either equals the unfused one bit for bit or (its 1/rms off by a last bit, some x_l rounded the
// other way) differs by at most two such roundings' moves.
TEST(CudaGemv, FusedRmsNormF32Logits) {
  if (!::kiln::test::have_cuda_device()) GTEST_SKIP() << "no CUDA device";
  if (!is_sm90()) GTEST_SKIP() << "fusions need sm_90";
  std::mt19937 rng(14);
  using P = GemvFusion::Prologue;
  constexpr Shape shapes[] = {{37, 576}, {1001, 1544}, {32064, 3072}, {515, 8200}, {3, 16384}};
  int64_t diff_rows = 0, rows = 0, diffs = 0, total = 0;
  int i = 0;
  for (DType t : {DType::kF16, DType::kBF16})
    for (int64_t m = 1; m <= 4; ++m)
      for (const Shape& s : shapes) {
        const GemvFusion f{P::kRmsNorm, nullptr, i % 2 ? 1e-6f : 1e-5f, false};
        const bool bias = (i++ % 3) == 1;
        SCOPED_TRACE(describe(t, DType::kF32, m, s.n, s.k, bias, f));
        Dev x(m * s.k * 2), w(s.n * s.k * 2), nw(s.k * 4);
        EXPECT_TRUE(gemv_supported(t, t, DType::kF32, m, s.n, s.k, x.get(), w.get(),
                                   GemvFusion{P::kRmsNorm, static_cast<const float*>(nw.get()), 1e-5f, false}));
        const Check c = run_case(t, DType::kF32, m, s.n, s.k, bias, f, rng);
        expect_good(c, DType::kF32);
        EXPECT_EQ(c.unfused_bad, 0);
        diff_rows += c.unfused_rows;
        rows += m;
        diffs += c.unfused_diff;
        total += m * s.n;
      }
  std::printf("fused f32-logits vs unfused: %ld of %ld rows differ (%ld of %ld outputs, all within two rounding "
              "moves)\n", static_cast<long>(diff_rows), static_cast<long>(rows), static_cast<long>(diffs),
              static_cast<long>(total));
  // A last-bit difference of 1/rms is rare: most rows must be bit-identical.
  EXPECT_LE(diff_rows, rows / 4);
}

// Other geometries (the ones cuda_linear_bench sweeps) and the legacy kernel give the same answers.
TEST(CudaGemv, TuningsMatchReference) {
  if (!::kiln::test::have_cuda_device()) GTEST_SKIP() << "no CUDA device";
  std::mt19937 rng(13);
  const GemvTuning tunings[] = {
      {0, 0, 0, 0, 0, true},  {8, 8, 1, 4, 1, false}, {4, 4, 1, 12, 1, false},
      {4, 8, 2, 3, 1, false}, {4, 8, 1, 6, 2, false}, {2, 8, 1, 2, 1, false},
  };
  constexpr Shape shapes[] = {{37, 576}, {1001, 1544}, {515, 8200}, {64, 16384}};
  for (const GemvTuning& tu : tunings) {
    gemv_set_tuning(tu);
    for (int64_t m : {1, 2, 4})
      for (const Shape& s : shapes) {
        const DType t = m == 2 ? DType::kBF16 : DType::kF16;
        SCOPED_TRACE("tuning " + std::to_string(tu.consumer_warps) + "/" + std::to_string(tu.rows_per_tile) + "/" +
                     std::to_string(tu.vectors_per_lane) + "/" + std::to_string(tu.max_stages) + "/" +
                     std::to_string(tu.blocks_per_sm) + (tu.legacy ? " legacy " : " ") + describe(t, t, m, s.n, s.k, true, {}));
        expect_good(run_case(t, t, m, s.n, s.k, true, {}, rng), t);
      }
  }
  gemv_set_tuning({});
}

TEST(CudaGemv, SupportedSaysWhere) {
  if (!::kiln::test::have_cuda_device()) GTEST_SKIP() << "no CUDA device";
  Dev x(4 * 16400 * 2), w(16 * 16400 * 2), nw(16400 * 4);
  using P = GemvFusion::Prologue;
  const GemvFusion rms{P::kRmsNorm, static_cast<const float*>(nw.get()), 1e-5f, false};
  const GemvFusion add_y{P::kNone, nullptr, 0.0f, true};
  const DType h = DType::kF16;
  EXPECT_TRUE(gemv_supported(h, h, h, 4, 16, 16400, x.get(), w.get()));  // plain: the legacy kernel takes it
  EXPECT_FALSE(gemv_supported(h, h, h, 4, 16, 16400, x.get(), w.get(), rms));  // x past kGemvMaxFusedXBytes
  EXPECT_FALSE(gemv_supported(h, h, DType::kF32, 1, 16, 64, x.get(), w.get(), add_y));  // the add needs y of x's type
  const GemvFusion silu{P::kSiluMul, nullptr, 0.0f, false};
  EXPECT_FALSE(gemv_supported(h, h, DType::kF32, 1, 16, 64, x.get(), w.get(), silu));
  const GemvFusion rms_add{P::kRmsNorm, static_cast<const float*>(nw.get()), 1e-5f, true};
  EXPECT_FALSE(gemv_supported(h, h, DType::kF32, 1, 16, 64, x.get(), w.get(), rms_add));
  EXPECT_EQ(gemv_supported(h, h, DType::kF32, 4, 16, 64, x.get(), w.get(), rms), is_sm90());  // final norm + LM head
  EXPECT_FALSE(gemv_supported(h, h, h, 1, 16, 64, x.get(), w.get(), GemvFusion{P::kRmsNorm, nullptr, 1e-5f, false}));
  EXPECT_FALSE(gemv_supported(h, h, h, 5, 16, 64, x.get(), w.get()));
  EXPECT_FALSE(gemv_supported(h, h, h, 1, 16, 60, x.get(), w.get()));
  EXPECT_EQ(gemv_supported(h, h, h, 4, 16, 16384, x.get(), w.get(), rms), is_sm90());
  EXPECT_EQ(gemv_supported(h, h, h, 1, 16, 64, x.get(), w.get(), add_y), is_sm90());
}

}  // namespace
}  // namespace kiln::cuda
