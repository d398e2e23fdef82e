// Linear layers of real model shapes on the GPU: cuBLASLt vs Kiln's gemv (m <= 4), f16, at the batch sizes
// of decode (m = 1..64) and prefill (m = 1024, 4096). Weights rotate over enough copies to miss the 50 MB L2,
// as a forward does. Prints time, GB/s (W + x + y bytes) and TFLOP/s per shape.
//   cuda_linear_bench [phi3|llama3]
#include <cuda_runtime.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "backend/cuda/cublaslt_gemm.h"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/gemv.h"
#include "core/dtype.h"

using namespace kiln;

struct Shape {
  const char* name;
  int64_t n, k;
};

int main(int argc, char** argv) {
  const std::string model = argc > 1 ? argv[1] : "phi3";
  std::vector<Shape> shapes;
  if (model == "llama3")
    shapes = {{"qkv", 6144, 4096}, {"o", 4096, 4096}, {"gate_up", 28672, 4096}, {"down", 4096, 14336},
              {"lm_head", 128256, 4096}};
  else
    shapes = {{"qkv", 9216, 3072}, {"o", 3072, 3072}, {"gate_up", 16384, 3072}, {"down", 3072, 8192},
              {"lm_head", 32064, 3072}};
  cudaStream_t s;
  KILN_CUDA_CHECK(cudaStreamCreate(&s));
  cuda::LtGemm lt;
  cudaEvent_t e0, e1;
  KILN_CUDA_CHECK(cudaEventCreate(&e0));
  KILN_CUDA_CHECK(cudaEventCreate(&e1));
  std::printf("%-8s %6s %6s %6s | %-9s %9s %8s %8s\n", "shape", "n", "k", "m", "kernel", "us", "GB/s", "TFLOP/s");
  for (const Shape& sh : shapes) {
    const size_t wbytes = static_cast<size_t>(sh.n) * sh.k * 2;
    const int copies = static_cast<int>(std::max<size_t>(2, (400u << 20) / wbytes + 1));
    std::vector<void*> w(copies);
    for (void*& p : w) {
      KILN_CUDA_CHECK(cudaMalloc(&p, wbytes));
      // Random-ish f16 bits in [-1, 1) (never zeros: zeros can run faster than real data).
      std::vector<uint16_t> h(std::min<size_t>(wbytes / 2, 1 << 20));
      for (size_t i = 0; i < h.size(); ++i) h[i] = f32_to_f16(static_cast<float>((i * 2654435761u) % 2001) / 1000.0f - 1.0f);
      for (size_t off = 0; off < wbytes; off += h.size() * 2)
        KILN_CUDA_CHECK(cudaMemcpy(static_cast<char*>(p) + off, h.data(), std::min(h.size() * 2, wbytes - off), cudaMemcpyHostToDevice));
    }
    for (int64_t m : {1, 2, 4, 16, 64, 1024, 4096}) {
      void *x, *y;
      KILN_CUDA_CHECK(cudaMalloc(&x, m * sh.k * 2));
      KILN_CUDA_CHECK(cudaMalloc(&y, m * sh.n * 2));
      KILN_CUDA_CHECK(cudaMemset(x, 0x3c, m * sh.k * 2));  // 1.0-ish halves
      for (int which = 0; which < 2; ++which) {
        const bool gemv = which == 1;
        if (gemv && !cuda::gemv_supported(DType::kF16, DType::kF16, DType::kF16, m, sh.n, sh.k, x, w[0])) continue;
        auto run = [&](int i) {
          if (gemv) cuda::gemv(x, DType::kF16, m, w[i % copies], sh.n, sh.k, nullptr, y, DType::kF16, s);
          else lt.run(x, DType::kF16, m, w[i % copies], DType::kF16, sh.n, sh.k, nullptr, y, DType::kF16, s);
        };
        for (int i = 0; i < 10; ++i) run(i);
        const int reps = m >= 1024 ? 20 : 100;
        KILN_CUDA_CHECK(cudaEventRecord(e0, s));
        for (int i = 0; i < reps; ++i) run(i);
        KILN_CUDA_CHECK(cudaEventRecord(e1, s));
        KILN_CUDA_CHECK(cudaEventSynchronize(e1));
        float ms = 0;
        KILN_CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
        const double us = 1e3 * ms / reps;
        const double bytes = static_cast<double>(wbytes) + 2.0 * m * (sh.k + sh.n);
        const double flops = 2.0 * m * sh.n * sh.k;
        std::printf("%-8s %6ld %6ld %6ld | %-9s %9.1f %8.0f %8.1f\n", sh.name, static_cast<long>(sh.n),
                    static_cast<long>(sh.k), static_cast<long>(m), gemv ? "gemv" : "cublasLt", us, bytes / us / 1e3,
                    flops / us / 1e6);
      }
      cudaFree(x);
      cudaFree(y);
    }
    for (void* p : w) cudaFree(p);
  }
  return 0;
}
