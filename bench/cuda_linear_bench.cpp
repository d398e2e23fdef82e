// Linear layers of real model shapes on the GPU, f16: at decode's batch sizes (m = 1..4) cuBLASLt vs Kiln's
// gemv (the Hopper kernel, and the legacy one it replaced) vs gemv fused with the op before / after it
// (RMSNorm prologue for qkv / gate_up / lm_head, SiLU·mul prologue and residual add for down, residual add
// for o) against the same ops unfused; then cuBLASLt alone at m = 16, 64 (decode) and 1024, 4096
// (prefill). Weights rotate over enough copies to miss the 50 MB L2, as a forward does; launches go back to
// back on one stream (programmatic dependent launch on unless KILN_CUDA_PDL=0, so a kernel's W stream may
// start under its predecessor's tail, as in a forward). Prints time per call, W TB/s (weight bytes / time:
// the figure that matters at m <= 4), GB/s of all bytes and TFLOP/s.
//   cuda_linear_bench [phi3|llama3] [sweep]
// sweep: instead, the gemv kernel's geometries (gemv_set_tuning) at m = 1 and 4, W TB/s per shape, each
// checked against the legacy kernel's output.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "backend/cuda/cublaslt_gemm.h"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/gemv.h"
#include "backend/cuda/kernels.h"
#include "core/dtype.h"

using namespace kiln;
using Fusion = cuda::GemvFusion;
using Pro = cuda::GemvFusion::Prologue;

namespace {

struct Shape {
  const char* name;
  int64_t n, k;
};

struct Weights {
  std::vector<void*> copies;
  size_t bytes = 0;
  Weights(int64_t n, int64_t k) : bytes(static_cast<size_t>(n) * k * 2) {
    const int count = static_cast<int>(std::max<size_t>(2, (400u << 20) / bytes + 1));
    copies.resize(count);
    // Random-ish f16 bits in [-1, 1) (never zeros: zeros can run faster than real data).
    std::vector<uint16_t> h(std::min<size_t>(bytes / 2, 1 << 20));
    for (size_t i = 0; i < h.size(); ++i) h[i] = f32_to_f16(static_cast<float>((i * 2654435761u) % 2001) / 1000.0f - 1.0f);
    for (void*& p : copies) {
      KILN_CUDA_CHECK(cudaMalloc(&p, bytes));
      for (size_t off = 0; off < bytes; off += h.size() * 2)
        KILN_CUDA_CHECK(cudaMemcpy(static_cast<char*>(p) + off, h.data(), std::min(h.size() * 2, bytes - off),
                                   cudaMemcpyHostToDevice));
    }
  }
  ~Weights() {
    for (void* p : copies) cudaFree(p);
  }
  void* operator[](int i) const { return copies[i % copies.size()]; }
};

struct Timer {
  cudaStream_t s;
  cudaEvent_t e0, e1;
  explicit Timer(cudaStream_t stream) : s(stream) {
    KILN_CUDA_CHECK(cudaEventCreate(&e0));
    KILN_CUDA_CHECK(cudaEventCreate(&e1));
  }
  // Microseconds per call of run(i), i counting up (to rotate the weights).
  double us(const std::function<void(int)>& run, int reps) {
    for (int i = 0; i < 10; ++i) run(i);
    KILN_CUDA_CHECK(cudaEventRecord(e0, s));
    for (int i = 0; i < reps; ++i) run(i);
    KILN_CUDA_CHECK(cudaEventRecord(e1, s));
    KILN_CUDA_CHECK(cudaEventSynchronize(e1));
    float ms = 0;
    KILN_CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
    return 1e3 * ms / reps;
  }
};

void* dmalloc(size_t bytes, int fill) {
  void* p;
  KILN_CUDA_CHECK(cudaMalloc(&p, bytes));
  KILN_CUDA_CHECK(cudaMemset(p, fill, bytes));
  return p;
}

std::vector<Shape> shapes_of(const std::string& model) {
  if (model == "llama3")
    return {{"qkv", 6144, 4096}, {"o", 4096, 4096}, {"gate_up", 28672, 4096}, {"down", 4096, 14336},
            {"lm_head", 128256, 4096}};
  return {{"qkv", 9216, 3072}, {"o", 3072, 3072}, {"gate_up", 16384, 3072}, {"down", 3072, 8192},
          {"lm_head", 32064, 3072}};
}

void table(const std::vector<Shape>& shapes, cudaStream_t s) {
  cuda::LtGemm lt;
  Timer timer(s);
  const DType h = DType::kF16;
  std::printf("%-8s %6s %6s %4s | %-16s %9s %8s %8s %8s\n", "shape", "n", "k", "m", "kernel", "us", "W TB/s", "GB/s",
              "TFLOP/s");
  for (const Shape& sh : shapes) {
    Weights w(sh.n, sh.k);
    float* norm_w = static_cast<float*>(dmalloc(sh.k * 4, 0));
    {
      std::vector<float> ones(sh.k, 1.0f);
      KILN_CUDA_CHECK(cudaMemcpy(norm_w, ones.data(), sh.k * 4, cudaMemcpyHostToDevice));
    }
    const bool rms_fit = sh.name != std::string("o") && sh.name != std::string("down");
    for (int64_t m : {1, 2, 3, 4, 16, 64, 1024, 4096}) {
      void* x = dmalloc(m * sh.k * 2 * 2, 0x3c);  // 1.0-ish halves; [m, 2k] for the silu_mul input
      void* y = dmalloc(m * sh.n * 2, 0);
      const bool small = m <= cuda::kGemvMaxRows;
      void* t = small ? dmalloc(m * sh.k * 2, 0x3c) : nullptr;  // the unfused prologue's output
      void* t2 = small ? dmalloc(m * sh.n * 2, 0) : nullptr;    // the unfused linear's output before the add
      const double bytes = static_cast<double>(w.bytes) + 2.0 * m * (sh.k + sh.n);
      const double flops = 2.0 * m * sh.n * sh.k;
      const int reps = m >= 1024 ? 20 : 100;
      auto row = [&](const char* kernel, const std::function<void(int)>& run) {
        const double us = timer.us(run, reps);
        std::printf("%-8s %6ld %6ld %4ld | %-16s %9.2f %8.2f %8.0f %8.1f\n", sh.name, static_cast<long>(sh.n),
                    static_cast<long>(sh.k), static_cast<long>(m), kernel, us, w.bytes / us / 1e6, bytes / us / 1e3,
                    flops / us / 1e6);
      };
      row("cublasLt", [&](int i) { lt.run(x, h, m, w[i], h, sh.n, sh.k, nullptr, y, h, s); });
      if (m <= cuda::kGemvMaxRows) {
        cuda::gemv_set_tuning({.legacy = true});
        row("gemv legacy", [&](int i) { cuda::gemv(x, h, m, w[i], sh.n, sh.k, nullptr, y, h, s); });
        cuda::gemv_set_tuning({});
        row("gemv", [&](int i) { cuda::gemv(x, h, m, w[i], sh.n, sh.k, nullptr, y, h, s); });
        const Fusion rms{Pro::kRmsNorm, norm_w, 1e-5f, false}, silu_add{Pro::kSiluMul, nullptr, 0, true},
            add_y{Pro::kNone, nullptr, 0, true};
        if (rms_fit && cuda::gemv_supported(h, h, h, m, sh.n, sh.k, x, w[0], rms)) {
          row("rmsnorm, gemv", [&](int i) {
            cuda::rmsnorm(x, norm_w, 1e-5f, t, m, sh.k, h, s);
            cuda::gemv(t, h, m, w[i], sh.n, sh.k, nullptr, y, h, s);
          });
          row("gemv<rmsnorm", [&](int i) { cuda::gemv(x, h, m, w[i], sh.n, sh.k, nullptr, y, h, s, rms); });
        }
        if (sh.name == std::string("o") && cuda::gemv_supported(h, h, h, m, sh.n, sh.k, x, w[0], add_y)) {
          row("gemv, add", [&](int i) {
            cuda::gemv(x, h, m, w[i], sh.n, sh.k, nullptr, t2, h, s);
            cuda::add(y, t2, m * sh.n, h, s);
          });
          row("gemv>add", [&](int i) { cuda::gemv(x, h, m, w[i], sh.n, sh.k, nullptr, y, h, s, add_y); });
        }
        if (sh.name == std::string("down") && cuda::gemv_supported(h, h, h, m, sh.n, sh.k, x, w[0], silu_add)) {
          row("silu, gemv, add", [&](int i) {
            cuda::silu_mul(x, t, m, sh.k, h, s);
            cuda::gemv(t, h, m, w[i], sh.n, sh.k, nullptr, t2, h, s);
            cuda::add(y, t2, m * sh.n, h, s);
          });
          row("silu>gemv>add", [&](int i) { cuda::gemv(x, h, m, w[i], sh.n, sh.k, nullptr, y, h, s, silu_add); });
        }
      }
      KILN_CUDA_CHECK(cudaStreamSynchronize(s));
      cudaFree(x);
      cudaFree(y);
      cudaFree(t);
      cudaFree(t2);
    }
    cudaFree(norm_w);
  }
}

void sweep(const std::vector<Shape>& shapes, cudaStream_t s) {
  struct Config {
    const char* name;
    cuda::GemvTuning t;
  };
  const Config configs[] = {
      {"legacy", {.legacy = true}},
      {"default", {}},
      {"w8 s3", {8, 8, 1, 3, 1}},   {"w8 s4", {8, 8, 1, 4, 1}},   {"w8 s5", {8, 8, 1, 5, 1}},
      {"w8 s6", {8, 8, 1, 6, 1}},   {"w4 s6", {4, 8, 1, 6, 1}},   {"w4 s8", {4, 8, 1, 8, 1}},
      {"w4 s4 b2", {4, 8, 1, 4, 2}}, {"w8 r4 s6", {8, 4, 1, 6, 1}},
  };
  const DType h = DType::kF16;
  Timer timer(s);
  std::vector<std::vector<double>> tbs(std::size(configs));
  std::vector<std::string> worst(std::size(configs));
  std::vector<double> worst_err(std::size(configs), 0.0);
  std::printf("W TB/s per shape (m = 1, then m = 4):\n%-16s", "config");
  for (int64_t m : {1, 4})
    for (const Shape& sh : shapes) std::printf(" %7s%ld", sh.name, static_cast<long>(m));
  std::printf("\n");
  for (int64_t m : {1, 4})
    for (const Shape& sh : shapes) {
      Weights w(sh.n, sh.k);
      std::vector<uint16_t> xh(m * sh.k);
      for (size_t i = 0; i < xh.size(); ++i) xh[i] = f32_to_f16(static_cast<float>((i * 7919) % 201) / 100.0f - 1.0f);
      void* x = dmalloc(m * sh.k * 2, 0);
      KILN_CUDA_CHECK(cudaMemcpy(x, xh.data(), xh.size() * 2, cudaMemcpyHostToDevice));
      void* y = dmalloc(m * sh.n * 2, 0);
      std::vector<uint16_t> want(m * sh.n), got(m * sh.n);
      for (size_t c = 0; c < std::size(configs); ++c) {
        cuda::gemv_set_tuning(configs[c].t);
        KILN_CUDA_CHECK(cudaMemset(y, 0xFF, m * sh.n * 2));
        cuda::gemv(x, h, m, w[0], sh.n, sh.k, nullptr, y, h, s);
        KILN_CUDA_CHECK(cudaMemcpy((c == 0 ? want : got).data(), y, m * sh.n * 2, cudaMemcpyDeviceToHost));
        if (c > 0) {
          double err = 0, norm = 0;
          for (size_t i = 0; i < got.size(); ++i) {
            const double a = f16_to_f32(got[i]), b = f16_to_f32(want[i]);
            err = std::isfinite(a) ? std::max(err, std::fabs(a - b)) : INFINITY;
            norm = std::max(norm, std::fabs(b));
          }
          if (!(err <= 1e-2 * norm) && !(err < worst_err[c])) {
            worst_err[c] = err;
            worst[c] = std::string(sh.name) + " m=" + std::to_string(m) + ": max diff " + std::to_string(err);
          }
        }
        const double us = timer.us([&](int i) { cuda::gemv(x, h, m, w[i], sh.n, sh.k, nullptr, y, h, s); }, 200);
        tbs[c].push_back(w.bytes / us / 1e6);
      }
      KILN_CUDA_CHECK(cudaStreamSynchronize(s));
      cudaFree(x);
      cudaFree(y);
    }
  cuda::gemv_set_tuning({});
  for (size_t c = 0; c < std::size(configs); ++c) {
    std::printf("%-16s", configs[c].name);
    for (double v : tbs[c]) std::printf(" %8.2f", v);
    std::printf("%s%s\n", worst[c].empty() ? "" : "  BAD vs legacy: ", worst[c].c_str());
  }
}

}  // namespace

int main(int argc, char** argv) {
  const std::string model = argc > 1 ? argv[1] : "phi3";
  const bool do_sweep = argc > 2 && std::string(argv[2]) == "sweep";
  cudaStream_t s;
  KILN_CUDA_CHECK(cudaStreamCreate(&s));
  const char* pdl = std::getenv("KILN_CUDA_PDL");
  std::printf("%s, f16, PDL %s\n", model.c_str(), pdl && std::string(pdl) == "0" ? "off" : "on (sm_90)");
  {
    // Warm-up (clocks, lazy module loading): a quarter second of gemv before anything is timed.
    Weights w(8192, 4096);
    void* x = dmalloc(4096 * 2, 0x3c);
    void* y = dmalloc(8192 * 2, 0);
    Timer timer(s);
    timer.us([&](int i) { cuda::gemv(x, DType::kF16, 1, w[i], 8192, 4096, nullptr, y, DType::kF16, s); }, 10000);
    KILN_CUDA_CHECK(cudaStreamSynchronize(s));
    cudaFree(x);
    cudaFree(y);
  }
  if (do_sweep) sweep(shapes_of(model), s);
  else table(shapes_of(model), s);
  return 0;
}
