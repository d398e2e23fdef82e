// The CUDA backend through the Backend interface: cuBLASLt linear layers against a float64 reference, and
// every fixture model's Hugging Face goldens on the GPU (fp32 at the CPU's thresholds, f16/bf16 at the
// 16-bit ones). Skipped where no GPU is visible (CI compiles these; the device machine runs them).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "backend/cuda/cuda_test_util.h"
#include "backend/cpu/cpu_backend.h"
#include "backend/cuda/cuda_backend.h"
#include "model/golden_check.h"

namespace kiln {
namespace {

// f32 values rounded through `t` (what the GPU sees after upload).
float round_to(float v, DType t) {
  if (t == DType::kF16) return f16_to_f32(f32_to_f16(v));
  if (t == DType::kBF16) return bf16_to_f32(f32_to_bf16(v));
  return v;
}

std::vector<uint8_t> encode(const std::vector<float>& v, DType t) {
  std::vector<uint8_t> out(v.size() * dtype_size(t));
  for (size_t i = 0; i < v.size(); ++i) {
    if (t == DType::kF32) std::memcpy(&out[4 * i], &v[i], 4);
    else {
      const uint16_t h = t == DType::kF16 ? f32_to_f16(v[i]) : f32_to_bf16(v[i]);
      std::memcpy(&out[2 * i], &h, 2);
    }
  }
  return out;
}

std::vector<float> decode(const std::vector<uint8_t>& b, DType t, size_t n) {
  std::vector<float> out(n);
  for (size_t i = 0; i < n; ++i) {
    if (t == DType::kF32) std::memcpy(&out[i], &b[4 * i], 4);
    else {
      uint16_t h;
      std::memcpy(&h, &b[2 * i], 2);
      out[i] = t == DType::kF16 ? f16_to_f32(h) : bf16_to_f32(h);
    }
  }
  return out;
}

struct LinearCase {
  DType wt;     // weights and x
  DType yt;     // output (x's type, or f32 for an LM head)
  int64_t m, n, k;
  bool bias;
};

TEST(CudaBackend, LinearMatchesFloat64Reference) {
  if (!::kiln::test::have_cuda_device()) GTEST_SKIP() << "no CUDA device";
  auto made = CudaBackend::create();
  ASSERT_TRUE(made.ok()) << made.status().to_string();
  CudaBackend& be = **made;
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const LinearCase cases[] = {
      {DType::kF32, DType::kF32, 1, 64, 64, false},     {DType::kF32, DType::kF32, 37, 176, 64, true},
      {DType::kF16, DType::kF16, 1, 3072, 3072, false}, {DType::kF16, DType::kF16, 300, 1536, 576, true},
      {DType::kF16, DType::kF32, 5, 32064, 3072, false}, {DType::kBF16, DType::kBF16, 64, 4096, 4096, false},
      {DType::kBF16, DType::kF32, 2, 512, 64, true},    {DType::kF16, DType::kF16, 17, 8192 * 2, 3072, false},
      // m <= 4 goes to gemv.cu: remainders of the k loop (576, 1544), 1 and 2 rows per warp, bias, f32 out.
      {DType::kF16, DType::kF16, 3, 1536, 576, true},   {DType::kBF16, DType::kF32, 4, 32064, 3072, false},
      {DType::kF16, DType::kF16, 1, 576, 1544, true},   {DType::kBF16, DType::kBF16, 2, 9216, 3072, true},
  };
  for (const LinearCase& c : cases) {
    SCOPED_TRACE(std::string(dtype_name(c.wt)) + " -> " + dtype_name(c.yt) + " m=" + std::to_string(c.m) +
                 " n=" + std::to_string(c.n) + " k=" + std::to_string(c.k));
    std::vector<float> x(c.m * c.k), w(c.n * c.k), bias(c.n);
    const float ws = 1.0f / std::sqrt(static_cast<float>(c.k));
    for (float& v : x) v = round_to(nd(rng), c.wt);
    for (float& v : w) v = round_to(nd(rng) * ws, c.wt);
    for (float& v : bias) v = nd(rng);
    auto xb = be.allocate(x.size() * dtype_size(c.wt)), wb = be.allocate(w.size() * dtype_size(c.wt)),
         bb = be.allocate(bias.size() * 4), yb = be.allocate(c.m * c.n * dtype_size(c.yt));
    ASSERT_TRUE(xb.ok() && wb.ok() && bb.ok() && yb.ok());
    Tensor xt = xb->view(c.wt, {c.m, c.k}), bt = bb->view(DType::kF32, {c.n}), yt = yb->view(c.yt, {c.m, c.n});
    be.upload(encode(x, c.wt).data(), xt);
    auto wt = be.adopt_weight(Tensor{encode(w, c.wt).data(), c.wt, {c.n, c.k}}, nullptr);
    ASSERT_TRUE(wt.ok());
    be.upload(bias.data(), bt);
    ASSERT_EQ(cudaMemset(yt.data, 0xFF, yt.nbytes()), cudaSuccess);  // NaN poison: every element must be written
    LinearWeight lw{*wt, c.wt, std::nullopt, c.n, c.k};
    be.linear(xt, lw, c.bias ? &bt : nullptr, yt);
    std::vector<uint8_t> yraw(yt.nbytes());
    be.download(yt, yraw.data());
    const std::vector<float> y = decode(yraw, c.yt, c.m * c.n);
    double err = 0, ref_norm = 0;
    for (int64_t i = 0; i < c.m; ++i)
      for (int64_t j = 0; j < c.n; ++j) {
        double r = c.bias ? bias[j] : 0.0;
        for (int64_t l = 0; l < c.k; ++l) r += double(x[i * c.k + l]) * w[j * c.k + l];
        const double got = y[i * c.n + j];
        ASSERT_TRUE(std::isfinite(got)) << "y[" << i << "," << j << "] not written or not finite";
        err += (got - r) * (got - r);
        ref_norm += r * r;
      }
    const double rel = std::sqrt(err / ref_norm);
    // f32: true f32 math (no TF32); 16-bit outputs: rounding of y itself dominates.
    const double tol = c.yt == DType::kF32 ? (c.wt == DType::kF32 ? 1e-5 : 1e-4) : (c.yt == DType::kF16 ? 1e-3 : 8e-3);
    EXPECT_LT(rel, tol) << "relative error " << rel;
  }
}

TEST(CudaBackend, ArgmaxRowsMatchesCpu) {
  if (!::kiln::test::have_cuda_device()) GTEST_SKIP() << "no CUDA device";
  auto made = CudaBackend::create();
  ASSERT_TRUE(made.ok()) << made.status().to_string();
  CudaBackend& be = **made;
  CpuBackend cpu;
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.0f, 4.0f);
  for (int64_t vocab : {1, 7, 1000, 32064, 128256}) {
    const int64_t rows = 9;
    std::vector<float> logits(rows * vocab);
    for (float& v : logits) v = nd(rng);
    // Row 1: a tie of the maximum (the first wins); row 2: NaN at 0 (index 0); row 3: NaN elsewhere (ignored);
    // row 4: all equal (index 0).
    if (vocab > 5) {
      logits[1 * vocab + 2] = logits[1 * vocab + vocab - 1] = 1e6f;
      logits[2 * vocab] = NAN;
      logits[3 * vocab + 1] = NAN;
      std::fill(logits.begin() + 4 * vocab, logits.begin() + 5 * vocab, 0.5f);
    }
    std::vector<int32_t> want(rows), got(rows, -1);
    Tensor lt{logits.data(), DType::kF32, {rows, vocab}}, wt{want.data(), DType::kI32, {rows}};
    cpu.argmax_rows(lt, wt);
    auto lb = be.allocate(logits.size() * 4), ib = be.allocate(rows * 4);
    ASSERT_TRUE(lb.ok() && ib.ok());
    Tensor dl = lb->view(DType::kF32, {rows, vocab}), di = ib->view(DType::kI32, {rows});
    be.upload(logits.data(), dl);
    be.argmax_rows(dl, di);
    be.download(di, got.data());
    EXPECT_EQ(got, want) << "vocab " << vocab;
  }
}

class CudaGoldenTest : public ::testing::TestWithParam<std::string> {};

TEST_P(CudaGoldenTest, Float32MatchesTransformers) {
  if (!::kiln::test::have_cuda_device()) GTEST_SKIP() << "no CUDA device";
  const std::string dir = test::data_path("models/" + GetParam());
  test::check_model_against_goldens(dir, dir, DType::kF32, "cuda");
}

TEST_P(CudaGoldenTest, Float32ChunkedPrefillMatchesTransformers) {
  if (!::kiln::test::have_cuda_device()) GTEST_SKIP() << "no CUDA device";
  const std::string dir = test::data_path("models/" + GetParam());
  test::check_model_against_goldens(dir, dir, DType::kF32, "cuda", 16);
}

TEST_P(CudaGoldenTest, Float16WithinTolerance) {
  if (!::kiln::test::have_cuda_device()) GTEST_SKIP() << "no CUDA device";
  const std::string dir = test::data_path("models/" + GetParam());
  test::check_model_against_goldens(dir, dir, DType::kF16, "cuda");
}

TEST_P(CudaGoldenTest, BFloat16WithinTolerance) {
  if (!::kiln::test::have_cuda_device()) GTEST_SKIP() << "no CUDA device";
  const std::string dir = test::data_path("models/" + GetParam());
  test::check_model_against_goldens(dir, dir, DType::kBF16, "cuda");
}

INSTANTIATE_TEST_SUITE_P(Fixtures, CudaGoldenTest, ::testing::Values("llama", "mistral", "qwen2", "qwen3", "phi3"));

}  // namespace
}  // namespace kiln
