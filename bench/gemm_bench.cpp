// GEMM benchmark: decode (m = 1, memory bound) and prefill (m = 512, compute bound) shapes of a
// small LLM, for f32, bf16 and f16 weights; compared with the measured memory read bandwidth and
// the measured vdpbf16ps / FMA peak of the machine.
//
//   gemm_bench [--isa scalar|avx2|avx512] [--wtype float32|bfloat16|float16] [--threads N] [--quick]
//
// Decode is timed twice: "hot" calls the same W over and over (it may sit in L2/L3), "cold" rotates
// through copies of W totalling >= 512 MiB so that every call streams W from DRAM, as in a real
// forward pass over all layers; "sum GB/s" is a plain 2-thread sum over the same copies, measured in
// alternation with the GEMM (the bandwidth of a shared machine drifts), and %sum the GEMM's share of it.
#include <immintrin.h>

#include <algorithm>
#include <utility>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "backend/cpu/gemm.h"
#include "core/cpu_features.h"
#include "core/dtype.h"
#include "core/thread_pool.h"

namespace {

using kiln::DType;
using kiln::ThreadPool;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// The 1-minute load average: the numbers are only meaningful on an otherwise idle machine.
std::string load_average() {
  std::FILE* f = std::fopen("/proc/loadavg", "r");
  if (!f) return "?";
  char buf[64] = {};
  const char* ok = std::fgets(buf, sizeof buf, f);
  std::fclose(f);
  std::string s = ok ? buf : "?";
  return s.substr(0, s.find(' '));
}

struct Aligned {
  explicit Aligned(size_t bytes) : p(std::aligned_alloc(64, (bytes + 63) / 64 * 64)), size(bytes) {
    if (!p) {
      std::fprintf(stderr, "out of memory\n");
      std::exit(1);
    }
  }
  ~Aligned() { std::free(p); }
  Aligned(const Aligned&) = delete;
  Aligned& operator=(const Aligned&) = delete;
  void* p;
  size_t size;
};

// ---- Memory read bandwidth: every thread sums its part of a buffer, reading S sequential streams
// at once (S = 1: one stream per thread; S = 4: like a decode GEMM tile, which reads 4 panels). ----
template <int S>
__attribute__((target("avx512f"))) float sum_avx512(const float* p, size_t n) {
  const size_t part = n / S / 64 * 64;
  __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
  for (size_t i = 0; i < part; i += 64) {
#pragma GCC unroll 4
    for (int s = 0; s < S; ++s) {
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) acc[j] = _mm512_add_ps(acc[j], _mm512_load_ps(p + s * part + i + 16 * j));
    }
  }
  alignas(64) float t[16];
  _mm512_store_ps(t, _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
  float sum = 0;
  for (float v : t) sum += v;
  return sum;
}
template <int S>
__attribute__((target("avx2"))) float sum_avx2(const float* p, size_t n) {
  const size_t part = n / S / 32 * 32;
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  for (size_t i = 0; i < part; i += 32) {
#pragma GCC unroll 4
    for (int s = 0; s < S; ++s) {
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) acc[j] = _mm256_add_ps(acc[j], _mm256_load_ps(p + s * part + i + 8 * j));
    }
  }
  alignas(32) float t[8];
  _mm256_store_ps(t, _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
  float sum = 0;
  for (float v : t) sum += v;
  return sum;
}
template <int S>
float sum_scalar(const float* p, size_t n) {
  float s = 0;
  for (size_t i = 0; i < n; ++i) s += p[i];
  return s;
}

// Best GB/s of `reps` passes over a 512 MiB buffer, each thread summing its half with S streams.
template <int S>
double memory_read_gbps(ThreadPool& pool, int reps) {
  const size_t bytes = size_t{512} << 20;
  Aligned buf(bytes);
  const size_t n = bytes / 4;
  float* f = static_cast<float*>(buf.p);
  pool.parallel_for(static_cast<int64_t>(n), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) f[i] = static_cast<float>(i % 1021);
  });
  const auto& cf = kiln::cpu_features();
  auto sum = cf.avx512f ? &sum_avx512<S> : cf.avx2 ? &sum_avx2<S> : &sum_scalar<S>;
  double best = 0;
  std::atomic<float> sink{0};
  for (int r = 0; r < reps; ++r) {
    auto t0 = Clock::now();
    pool.run([&](int t, int nt) {
      size_t b = n * t / nt / 1024 * 1024, e = n * (t + 1) / nt / 1024 * 1024;
      sink = sink + sum(f + b, e - b);
    });
    best = std::max(best, bytes / seconds_since(t0) / 1e9);
  }
  return best;
}

// ---- Arithmetic peak: independent accumulator chains in registers, on every thread. ----
__attribute__((target("avx512f,avx512bf16"))) float dpbf16_loop(int64_t iters) {
  __m512 acc[24];
  for (auto& a : acc) a = _mm512_setzero_ps();
  __m512i x = _mm512_set1_epi32(0x3f803f80), w = _mm512_set1_epi32(0x3c003c00);
  for (int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 24
    for (int j = 0; j < 24; ++j) acc[j] = _mm512_dpbf16_ps(acc[j], (__m512bh)x, (__m512bh)w);
    __asm__ volatile("" : "+v"(x));
  }
  __m512 s = acc[0];
  for (int j = 1; j < 24; ++j) s = _mm512_add_ps(s, acc[j]);
  alignas(64) float t[16];
  _mm512_store_ps(t, s);
  return t[0] + t[15];
}
__attribute__((target("avx512f,fma"))) float fma512_loop(int64_t iters) {
  __m512 acc[24];
  for (auto& a : acc) a = _mm512_setzero_ps();
  __m512 x = _mm512_set1_ps(1.0f), w = _mm512_set1_ps(1e-8f);
  for (int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 24
    for (int j = 0; j < 24; ++j) acc[j] = _mm512_fmadd_ps(x, w, acc[j]);
    __asm__ volatile("" : "+v"(x));
  }
  __m512 s = acc[0];
  for (int j = 1; j < 24; ++j) s = _mm512_add_ps(s, acc[j]);
  alignas(64) float t[16];
  _mm512_store_ps(t, s);
  return t[0] + t[15];
}

// GFLOP/s of `loop` (flops_per_iter per iteration) on all threads.
double peak_gflops(ThreadPool& pool, float (*loop)(int64_t), double flops_per_iter) {
  const int64_t iters = 2000000;
  double best = 0;
  std::atomic<float> sink{0};
  for (int r = 0; r < 6; ++r) {
    auto t0 = Clock::now();
    pool.run([&](int, int) { sink = sink + loop(iters); });
    best = std::max(best, flops_per_iter * iters * pool.num_threads() / seconds_since(t0) / 1e9);
  }
  return best;
}


// Writes the copy number into the first weights of every 4 KiB page, so that no two copies share a
// page's content (a hypervisor merging identical pages would otherwise serve the "cold" copies from
// one physical page, i.e. from cache).
void make_pages_unique(void* p, size_t bytes, DType wtype, uint32_t copy) {
  for (size_t off = 0; off + 16 <= bytes; off += 4096) {
    for (int b = 0; b < 3; ++b) {
      const float v = static_cast<float>((copy >> (8 * b)) & 255u);  // exact in every weight type
      if (wtype == DType::kF32) {
        std::memcpy(static_cast<char*>(p) + off + 4 * b, &v, 4);
      } else {
        const uint16_t h = wtype == DType::kBF16 ? kiln::f32_to_bf16(v) : kiln::f32_to_f16(v);
        std::memcpy(static_cast<char*>(p) + off + 2 * b, &h, 2);
      }
    }
  }
}

// Times gemm over `copies` packed copies of W (rotating), at least min_seconds in all.
double time_gemm(kiln::cpu::Isa isa, const std::vector<Aligned*>& copies, DType wtype, int64_t m, int64_t n,
                 int64_t k, const float* x, const float* bias, float* y, ThreadPool& pool, double min_seconds) {
  // Warm-up (also grows the per-thread scratch).
  kiln::cpu::gemm_with_isa(isa, x, k, m, copies[0]->p, wtype, n, k, bias, y, n, pool);
  double best = 1e30;
  // Best of 8 rounds (other processes on the machine only ever make a round slower), each at least
  // min_seconds / 8 long and a whole number of passes over the copies.
  for (int round = 0; round < 8; ++round) {
    int64_t calls = 0;
    auto t0 = Clock::now();
    double el = 0;
    do {
      for (Aligned* c : copies) kiln::cpu::gemm_with_isa(isa, x, k, m, c->p, wtype, n, k, bias, y, n, pool);
      calls += static_cast<int64_t>(copies.size());
      el = seconds_since(t0);
    } while (el < min_seconds / 8);
    best = std::min(best, el / calls);
  }
  return best;
}

// Decode from DRAM: rounds alternate a gemm pass over all copies with a plain sum over the same
// copies (each thread summing the half of every copy it would stream, 4 streams at once), so the
// GEMM is compared with what a trivial reader gets from the same memory at the same time (the
// machine's bandwidth varies with what its neighbours do). Returns {seconds per gemm, sum GB/s}.
std::pair<double, double> time_cold(kiln::cpu::Isa isa, const std::vector<Aligned*>& copies, DType wtype,
                                    int64_t n, int64_t k, const float* x, const float* bias, float* y,
                                    ThreadPool& pool, int rounds) {
  kiln::cpu::gemm_with_isa(isa, x, k, 1, copies[0]->p, wtype, n, k, bias, y, n, pool);
  const auto& cf = kiln::cpu_features();
  auto sum = cf.avx512f ? &sum_avx512<4> : cf.avx2 ? &sum_avx2<4> : &sum_scalar<4>;
  const size_t floats = copies[0]->size / 4;
  std::atomic<float> sink{0};
  double best_gemm = 1e30, best_sum = 0;
  for (int round = 0; round < rounds; ++round) {
    auto t0 = Clock::now();
    for (Aligned* c : copies) kiln::cpu::gemm_with_isa(isa, x, k, 1, c->p, wtype, n, k, bias, y, n, pool);
    best_gemm = std::min(best_gemm, seconds_since(t0) / copies.size());
    t0 = Clock::now();
    std::atomic<size_t> bytes_read{0};
    pool.run([&](int t, int nt) {
      const size_t b = floats * t / nt / 16 * 16, e = floats * (t + 1) / nt / 16 * 16;
      const size_t part = (e - b) / 4 / 64 * 64;  // what sum_*<4> reads of [b, e)
      float acc = 0;
      for (Aligned* c : copies) acc += sum(static_cast<const float*>(c->p) + b, e - b);
      sink = sink + acc;
      bytes_read += copies.size() * part * 4 * 4;
    });
    best_sum = std::max(best_sum, bytes_read / seconds_since(t0) / 1e9);
  }
  return {best_gemm, best_sum};
}

}  // namespace

int main(int argc, char** argv) {
  using kiln::cpu::Isa;
  Isa isa = kiln::cpu::best_isa();
  int threads = 0;
  bool quick = false;
  std::vector<DType> wtypes = {DType::kF32, DType::kBF16, DType::kF16};
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--isa" && i + 1 < argc) {
      std::string v = argv[++i];
      if (v != "scalar" && v != "avx2" && v != "avx512") {
        std::fprintf(stderr, "unknown ISA %s\n", v.c_str());
        return 2;
      }
      isa = v == "scalar" ? Isa::kScalar : v == "avx2" ? Isa::kAvx2 : Isa::kAvx512;
    } else if (a == "--wtype" && i + 1 < argc) {
      auto t = kiln::dtype_from_name(argv[++i]);
      if (!t || (*t != DType::kF32 && *t != DType::kBF16 && *t != DType::kF16)) {
        std::fprintf(stderr, "--wtype: expected float32, bfloat16 or float16\n");
        return 2;
      }
      wtypes = {*t};
    } else if (a == "--threads" && i + 1 < argc) {
      threads = std::atoi(argv[++i]);
    } else if (a == "--quick") {
      quick = true;
    } else {
      std::fprintf(stderr, "usage: %s [--isa scalar|avx2|avx512] [--wtype float32|bfloat16|float16] [--threads N] [--quick]\n",
                   argv[0]);
      return 2;
    }
  }
  if (!kiln::cpu::isa_available(isa)) {
    std::fprintf(stderr, "ISA %s not available on this CPU\n", kiln::cpu::isa_name(isa));
    return 1;
  }
  ThreadPool pool(threads > 0 ? threads : 2);
  const double min_s = quick ? 0.15 : 0.6;

  const auto& cf = kiln::cpu_features();
  std::printf("cpu: %s; threads: %d; isa: %s; load average before: %s\n", cf.to_string().c_str(),
              pool.num_threads(), kiln::cpu::isa_name(isa), load_average().c_str());
  const double mem_bw1 = memory_read_gbps<1>(pool, quick ? 4 : 12);
  const double mem_bw4 = memory_read_gbps<4>(pool, quick ? 4 : 12);
  std::printf("memory read bandwidth (%d threads summing 512 MiB): %.1f GB/s with 1 stream per thread, "
              "%.1f GB/s with 4\n",
              pool.num_threads(), mem_bw1, mem_bw4);
  double peak_bf16 = 0, peak_fma = 0;
  if (cf.avx512f && cf.avx512_bf16) peak_bf16 = peak_gflops(pool, &dpbf16_loop, 24.0 * 64);
  if (cf.avx512f && cf.fma) peak_fma = peak_gflops(pool, &fma512_loop, 24.0 * 32);
  if (peak_bf16 > 0) std::printf("vdpbf16ps peak (%d threads): %.0f GFLOP/s\n", pool.num_threads(), peak_bf16);
  if (peak_fma > 0) std::printf("zmm FMA peak    (%d threads): %.0f GFLOP/s\n", pool.num_threads(), peak_fma);

  struct ShapeDef {
    int64_t m, n, k;
  };
  const ShapeDef shapes[] = {{1, 576, 576},   {1, 1536, 576},  {1, 576, 1536},  {1, 49152, 576},
                             {512, 576, 576}, {512, 1536, 576}, {512, 576, 1536}};
  std::mt19937 rng(42);
  std::normal_distribution<float> nd(0.0f, 1.0f);

  for (DType wtype : wtypes) {
    std::printf("\n== W %s, kernel %s ==\n", kiln::dtype_name(wtype), kiln::cpu::gemm_kernel_name_for(isa, wtype));
    std::printf("%5s %6s %6s %8s %9s %8s %9s %9s %9s %8s %6s\n", "m", "n", "k", "W MiB", "hot us", "GFLOP/s",
                "hot GB/s", "cold us", "cold GB/s", "sum GB/s", "%sum");
    for (const ShapeDef& s : shapes) {
      const size_t wbytes = kiln::cpu::packed_weight_bytes(wtype, s.n, s.k);
      std::vector<float> w(static_cast<size_t>(s.n * s.k));
      for (auto& v : w) v = nd(rng) * 0.05f;
      std::vector<Aligned*> copies;
      copies.push_back(new Aligned(wbytes));
      kiln::cpu::pack_weight(w.data(), DType::kF32, s.n, s.k, wtype, copies[0]->p);
      std::vector<float> x(static_cast<size_t>(s.m * s.k)), bias(static_cast<size_t>(s.n)),
          y(static_cast<size_t>(s.m * s.n));
      for (auto& v : x) v = nd(rng);
      for (auto& v : bias) v = nd(rng);
      const double flops = 2.0 * s.m * s.n * s.k;

      const double hot = time_gemm(isa, copies, wtype, s.m, s.n, s.k, x.data(), bias.data(), y.data(), pool, min_s);
      double cold = 0, sum_gbps = 0;
      if (s.m == 1) {
        const size_t want = std::max<size_t>(2, ((size_t{512} << 20) + wbytes - 1) / wbytes);
        while (copies.size() < want) {
          copies.push_back(new Aligned(wbytes));
          std::memcpy(copies.back()->p, copies[0]->p, wbytes);
          make_pages_unique(copies.back()->p, wbytes, wtype, static_cast<uint32_t>(copies.size()));
        }
        std::tie(cold, sum_gbps) =
            time_cold(isa, copies, wtype, s.n, s.k, x.data(), bias.data(), y.data(), pool, quick ? 4 : 12);
      }
      std::printf("%5lld %6lld %6lld %8.2f %9.1f %8.1f %9.1f", static_cast<long long>(s.m),
                  static_cast<long long>(s.n), static_cast<long long>(s.k), wbytes / 1048576.0, hot * 1e6,
                  flops / hot / 1e9, wbytes / hot / 1e9);
      if (s.m == 1) {
        std::printf(" %9.1f %9.1f %8.1f %5.0f%%\n", cold * 1e6, wbytes / cold / 1e9, sum_gbps,
                    100.0 * wbytes / cold / 1e9 / sum_gbps);
      } else {
        const double peak = wtype == DType::kBF16 && kiln::cpu::gemm_kernel_name_for(isa, wtype) ==
                                                         std::string("avx512_bf16")
                                ? peak_bf16
                                : peak_fma;
        if (peak > 0 && isa == Isa::kAvx512) {
          std::printf("   (%.0f%% of the %s peak)\n", 100.0 * flops / hot / 1e9 / peak,
                      wtype == DType::kBF16 ? "vdpbf16ps" : "FMA");
        } else {
          std::printf("\n");
        }
      }
      for (Aligned* c : copies) delete c;
    }
  }
  std::printf("\nload average after: %s\n", load_average().c_str());
  return 0;
}
