// Build-time GEMM tuning for LtGemm: cuBLASLt's heuristic picks one algorithm per shape from a model of the
// GPU; timing its first candidates on the real shapes finds faster ones for some (m, n, k). The winners are
// kept in the engine as JSON (the algorithm is cuBLASLt's opaque 64-byte struct, valid for the same library
// version and GPU, both recorded and checked at load).
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>

#include "backend/cuda/cublaslt_gemm.h"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels.h"

namespace kiln::cuda {

namespace {

constexpr int kCandidates = 16;  // cuBLASLt candidates timed per (m, shape)
constexpr int kWarmup = 2, kTimed = 5;

std::string algo_hex(const cublasLtMatmulAlgo_t& a) {
  static_assert(sizeof(a.data) == 8 * sizeof(uint64_t));
  std::string s;
  char buf[17];
  for (uint64_t v : a.data) {
    std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
    s += buf;
  }
  return s;
}

bool algo_from_hex(const std::string& s, cublasLtMatmulAlgo_t* a) {
  if (s.size() != 8 * 16) return false;
  for (int i = 0; i < 8; ++i) {
    const std::string part = s.substr(static_cast<size_t>(i) * 16, 16);
    if (part.find_first_not_of("0123456789abcdef") != std::string::npos) return false;
    a->data[i] = std::stoull(part, nullptr, 16);
  }
  return true;
}

std::string library_version() { return std::to_string(cublasLtGetVersion()); }

// Device buffer filled with small random values of type t (so no GEMM overflows or underflows).
void* random_device(size_t elems, DType t, cudaStream_t stream) {
  std::vector<float> host(elems);
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-0.05f, 0.05f);
  for (float& v : host) v = u(rng);
  void *f32 = nullptr, *out = nullptr;
  KILN_CUDA_CHECK(cudaMalloc(&f32, elems * sizeof(float)));
  KILN_CUDA_CHECK(cudaMalloc(&out, elems * dtype_size(t)));
  KILN_CUDA_CHECK(cudaMemcpy(f32, host.data(), elems * sizeof(float), cudaMemcpyHostToDevice));
  convert(f32, DType::kF32, out, t, static_cast<int64_t>(elems), stream);
  KILN_CUDA_CHECK(cudaStreamSynchronize(stream));
  cudaFree(f32);
  return out;
}

}  // namespace

std::string LtGemm::tune(const std::vector<TuneShape>& shapes, const std::string& device, cudaStream_t stream) {
  int64_t max_m = 0, max_k = 0, max_n = 0, max_w = 0;
  for (const TuneShape& s : shapes) {
    for (int64_t m : s.ms) max_m = std::max(max_m, m);
    max_k = std::max(max_k, s.k);
    max_n = std::max(max_n, s.n);
    max_w = std::max(max_w, s.n * s.k);
  }
  nlohmann::json record = {{"library", "cublasLt"}, {"version", library_version()}, {"device", device},
                           {"entries", nlohmann::json::array()}};
  if (shapes.empty() || max_m == 0) return record.dump(1);
  // One set of buffers for all shapes (the types are those of the first shape that needs each size; all
  // shapes of one engine share x's and W's type). y is sized for f32.
  void* x = random_device(static_cast<size_t>(max_m * max_k), shapes.front().xt, stream);
  void* w = random_device(static_cast<size_t>(max_w), shapes.front().wt, stream);
  void* bias = random_device(static_cast<size_t>(max_n), DType::kF32, stream);
  void* y = nullptr;
  KILN_CUDA_CHECK(cudaMalloc(&y, static_cast<size_t>(max_m * max_n) * sizeof(float)));
  cudaEvent_t e0, e1;
  KILN_CUDA_CHECK(cudaEventCreate(&e0));
  KILN_CUDA_CHECK(cudaEventCreate(&e1));
  double total_heuristic_us = 0, total_best_us = 0;
  for (const TuneShape& s : shapes) {
    for (int64_t m : s.ms) {
      const Key key{m, s.n, s.k, static_cast<int>(s.xt), static_cast<int>(s.wt), static_cast<int>(s.yt), s.bias};
      Plan p = describe(key);
      if (s.bias) {
        const void* b = bias_in(static_cast<const float*>(bias), s.n, s.yt, stream);
        KILN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &b, sizeof(b)));
      }
      const std::vector<cublasLtMatmulAlgo_t> algos = candidates(p, kCandidates);
      const float alpha = 1.0f, beta = 0.0f;
      double heuristic_us = -1, best_us = -1;
      size_t best = 0;
      for (size_t i = 0; i < algos.size(); ++i) {
        auto launch = [&] {
          return cublasLtMatmul(handle_, p.desc, &alpha, w, p.a, x, p.b, &beta, y, p.d, y, p.d, &algos[i], workspace_,
                                workspace_bytes_, stream);
        };
        bool ok = true;
        for (int r = 0; r < kWarmup && ok; ++r) ok = launch() == CUBLAS_STATUS_SUCCESS;
        if (!ok || cudaStreamSynchronize(stream) != cudaSuccess) {
          (void)cudaGetLastError();
          continue;
        }
        KILN_CUDA_CHECK(cudaEventRecord(e0, stream));
        for (int r = 0; r < kTimed; ++r) ok = ok && launch() == CUBLAS_STATUS_SUCCESS;
        KILN_CUDA_CHECK(cudaEventRecord(e1, stream));
        KILN_CUDA_CHECK(cudaEventSynchronize(e1));
        if (!ok) continue;
        float ms = 0;
        KILN_CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
        const double us = 1000.0 * ms / kTimed;
        if (i == 0) heuristic_us = us;
        if (best_us < 0 || us < best_us) {
          best_us = us;
          best = i;
        }
      }
      destroy(p);
      if (best_us < 0) continue;  // nothing ran: the heuristic decides at load
      total_heuristic_us += heuristic_us > 0 ? heuristic_us : best_us;
      total_best_us += best_us;
      record["entries"].push_back({{"m", m}, {"n", s.n}, {"k", s.k}, {"x", dtype_name(s.xt)}, {"w", dtype_name(s.wt)},
                                   {"y", dtype_name(s.yt)}, {"bias", s.bias}, {"algo", algo_hex(algos[best])},
                                   {"us", best_us}, {"heuristic_us", heuristic_us}, {"candidates", algos.size()}});
      tuned_[ShapeKey{s.n, s.k, static_cast<int>(s.xt), static_cast<int>(s.wt), static_cast<int>(s.yt), s.bias}][m] =
          algos[best];
      if (best != 0)
        std::fprintf(stderr, "kiln tune: m=%-5ld n=%-6ld k=%-6ld %8.1f us (heuristic's choice %8.1f us, %zu timed)\n",
                     static_cast<long>(m), static_cast<long>(s.n), static_cast<long>(s.k), best_us, heuristic_us,
                     algos.size());
    }
  }
  std::fprintf(stderr, "kiln tune: %zu GEMM shapes timed: %.0f us with the heuristic's choices, %.0f us tuned (%.1f%%)\n",
               record["entries"].size(), total_heuristic_us, total_best_us,
               total_heuristic_us > 0 ? 100.0 * (total_heuristic_us - total_best_us) / total_heuristic_us : 0.0);
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaFree(x);
  cudaFree(w);
  cudaFree(bias);
  cudaFree(y);
  // bias_in cached a converted copy of the random bias under its address; drop it (the address is freed).
  for (auto it = bias_copies_.begin(); it != bias_copies_.end();)
    if (it->first.first == bias) {
      cudaFree(it->second);
      it = bias_copies_.erase(it);
    } else {
      ++it;
    }
  plans_.clear();  // none made above; tuned_ now feeds plan_for
  return record.dump(1);
}

bool LtGemm::use_record(const std::string& text, const std::string& device, std::string* note) {
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || !j.contains("entries") || !j["entries"].is_array()) {
    *note = "the GEMM tuning record is not valid JSON of the expected form";
    return false;
  }
  if (j.value("version", "") != library_version() || j.value("device", "") != device) {
    *note = "the GEMM tuning was made with cuBLASLt " + j.value("version", "?") + " on " + j.value("device", "?") +
            ", this is cuBLASLt " + library_version() + " on " + device;
    return false;
  }
  std::map<ShapeKey, std::map<int64_t, cublasLtMatmulAlgo_t>> tuned;
  for (const nlohmann::json& e : j["entries"]) {
    const auto dt = [&](const char* field) { return dtype_from_name(e.value(field, "")); };
    cublasLtMatmulAlgo_t algo{};
    if (!e.is_object() || !e.contains("m") || !e["m"].is_number_integer() || !dt("x") || !dt("w") || !dt("y") ||
        !algo_from_hex(e.value("algo", ""), &algo)) {
      *note = "a GEMM tuning entry is malformed: " + e.dump();
      return false;
    }
    tuned[ShapeKey{e.value("n", int64_t{0}), e.value("k", int64_t{0}), static_cast<int>(*dt("x")),
                   static_cast<int>(*dt("w")), static_cast<int>(*dt("y")), e.value("bias", false)}]
         [e["m"].get<int64_t>()] = algo;
  }
  tuned_ = std::move(tuned);
  for (auto& [key, p] : plans_) {
    destroy(p);
  }
  plans_.clear();
  return true;
}

}  // namespace kiln::cuda
