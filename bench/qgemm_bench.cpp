// Quantized-weight GEMM benchmark: SmolLM2-135M's linear shapes at decode (m = 1, memory bound: GB/s of
// weight bytes) and prefill (m = 512: GFLOP/s), for Q4_1, Q8_0 and Q4_0 weights, with the float GEMM
// (bf16 and f32 weights) on the same shapes in the same run, and the machine's memory bandwidth as the
// floor the decode numbers are to be read against.
//
//   qgemm_bench [--isa scalar|avx2|avx512] [--threads N] [--quick] [--only q4_1,q8_0,q4_0,bf16,f32]
//               [--shape NxK] [--m 1|512]
//
// Decode is timed two ways: "hot" repeats the call on one copy of W (which may then sit in L2/L3),
// "cold" rotates through copies of W totalling >= 512 MiB, so every call streams W from DRAM as a
// forward pass over all layers does. "read GB/s" is a plain all-thread sum over the same copies, timed
// in alternation with the cold calls (a shared machine's bandwidth drifts), and %read the GEMM's share
// of it. Every time is the best of several rounds: other processes only ever make a round slower.
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/gemm.h"
#include "backend/cpu/qgemm.h"
#include "core/cpu_features.h"
#include "core/dtype.h"
#include "core/thread_pool.h"

namespace {

using kiln::DType;
using kiln::GgmlType;
using kiln::ThreadPool;
using kiln::cpu::Isa;
using Clock = std::chrono::steady_clock;

double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::string loadavg() {
  std::FILE* f = std::fopen("/proc/loadavg", "r");
  if (!f) return "?";
  char buf[64] = {};
  const bool ok = std::fgets(buf, sizeof buf, f) != nullptr;
  std::fclose(f);
  std::string s = ok ? buf : "?";
  return s.substr(0, s.find(' '));
}

struct Buffer {
  explicit Buffer(size_t n) : bytes(n), p(static_cast<uint8_t*>(std::aligned_alloc(64, std::max<size_t>(64, (n + 63) / 64 * 64)))) {
    if (!p) {
      std::fprintf(stderr, "out of memory\n");
      std::exit(1);
    }
  }
  ~Buffer() { std::free(p); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  size_t bytes;
  uint8_t* p;
};

// ---- Memory floors. ----
// Sums n floats (4 interleaved streams like a 4-panel decode tile); the result only defeats dead-code removal.
__attribute__((target("avx512f"))) float sum_avx512(const float* p, size_t n) {
  const size_t part = n / 4 / 64 * 64;
  __m512 a[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
  for (size_t i = 0; i < part; i += 64)
    for (int s = 0; s < 4; ++s)
      for (int j = 0; j < 4; ++j) a[j] = _mm512_add_ps(a[j], _mm512_load_ps(p + s * part + i + 16 * j));
  alignas(64) float t[16];
  _mm512_store_ps(t, _mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3])));
  return t[0] + t[7] + t[15];
}
__attribute__((target("avx2"))) float sum_avx2(const float* p, size_t n) {
  const size_t part = n / 4 / 32 * 32;
  __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  for (size_t i = 0; i < part; i += 32)
    for (int s = 0; s < 4; ++s)
      for (int j = 0; j < 4; ++j) a[j] = _mm256_add_ps(a[j], _mm256_load_ps(p + s * part + i + 8 * j));
  alignas(32) float t[8];
  _mm256_store_ps(t, _mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3])));
  return t[0] + t[7];
}
float sum_scalar(const float* p, size_t n) {
  float s = 0;
  for (size_t i = 0; i < n; ++i) s += p[i];
  return s;
}
using SumFn = float (*)(const float*, size_t);
SumFn pick_sum() {
  const auto& f = kiln::cpu_features();
  return f.avx512f ? &sum_avx512 : f.avx2 ? &sum_avx2 : &sum_scalar;
}
// Bytes that sum_* reads of n floats.
size_t sum_bytes(size_t n, bool avx512) { return n / 4 / (avx512 ? 64 : 32) * (avx512 ? 64 : 32) * 4 * 4; }

// Best copy and read bandwidth over 512 MiB on all threads: copy counts the bytes copied (each read once
// and written once), read the bytes summed.
void memory_floors(ThreadPool& pool, int reps, double* copy_gbps, double* read_gbps) {
  const size_t bytes = size_t{256} << 20;
  Buffer a(bytes), b(bytes);
  pool.parallel_for(static_cast<int64_t>(bytes / 4096), [&](int64_t s, int64_t e) {
    std::memset(a.p + s * 4096, 1, static_cast<size_t>(e - s) * 4096);
    std::memset(b.p + s * 4096, 2, static_cast<size_t>(e - s) * 4096);
  });
  const SumFn sum = pick_sum();
  std::atomic<float> sink{0};
  *copy_gbps = *read_gbps = 0;
  for (int r = 0; r < reps; ++r) {
    auto t0 = Clock::now();
    pool.run([&](int t, int nt) {
      const size_t s = bytes * t / nt / 4096 * 4096, e = bytes * (t + 1) / nt / 4096 * 4096;
      std::memcpy(b.p + s, a.p + s, e - s);
    });
    *copy_gbps = std::max(*copy_gbps, bytes / since(t0) / 1e9);
    t0 = Clock::now();
    std::atomic<size_t> read{0};
    pool.run([&](int t, int nt) {
      const size_t n = bytes / 4;
      const size_t s = n * t / nt / 64 * 64, e = n * (t + 1) / nt / 64 * 64;
      const float* f = reinterpret_cast<const float*>(a.p);
      sink = sink + sum(f + s, e - s);
      read += sum_bytes(e - s, kiln::cpu_features().avx512f);
    });
    *read_gbps = std::max(*read_gbps, read / since(t0) / 1e9);
  }
}

// ---- vpdpbusd peak: 24 independent accumulator chains on every thread (64 multiply-adds = 128 ops each),
// in asm so that the accumulators stay in registers. ----
__attribute__((target("avx512f,avx512vnni"))) void dpbusd_loop(int64_t iters) {
  __asm__ volatile(
      "vpternlogd $0xff, %%zmm30, %%zmm30, %%zmm30\n\t"
      "vpternlogd $0xff, %%zmm31, %%zmm31, %%zmm31\n\t"
      "1:\n\t"
      "vpdpbusd %%zmm30, %%zmm31, %%zmm0\n\t" "vpdpbusd %%zmm30, %%zmm31, %%zmm1\n\t" "vpdpbusd %%zmm30, %%zmm31, %%zmm2\n\t" "vpdpbusd %%zmm30, %%zmm31, %%zmm3\n\t" "vpdpbusd %%zmm30, %%zmm31, %%zmm4\n\t" "vpdpbusd %%zmm30, %%zmm31, %%zmm5\n\t" "vpdpbusd %%zmm30, %%zmm31, %%zmm6\n\t" "vpdpbusd %%zmm30, %%zmm31, %%zmm7\n\t" "vpdpbusd %%zmm30, %%zmm31, %%zmm8\n\t" "vpdpbusd %%zmm30, %%zmm31, %%zmm9\n\t" "vpdpbusd %%zmm30, %%zmm31, %%zmm10\n\t" "vpdpbusd %%zmm30, %%zmm31, %%zmm11\n\t" "vpdpbusd %%zmm30, %%zmm31, %%zmm12\n\t" "vpdpbusd %%zmm30, %%zmm31, %%zmm13\n\t" "vpdpbusd %%zmm30, %%zmm31, %%zmm14\n\t" "vpdpbusd %%zmm30, %%zmm31, %%zmm15\n\t" "vpdpbusd %%zmm30, %%zmm31, %%zmm16\n\t" "vpdpbusd %%zmm30, %%zmm31, %%zmm17\n\t" "vpdpbusd %%zmm30, %%zmm31, %%zmm18\n\t" "vpdpbusd %%zmm30, %%zmm31, %%zmm19\n\t" "vpdpbusd %%zmm30, %%zmm31, %%zmm20\n\t" "vpdpbusd %%zmm30, %%zmm31, %%zmm21\n\t" "vpdpbusd %%zmm30, %%zmm31, %%zmm22\n\t" "vpdpbusd %%zmm30, %%zmm31, %%zmm23\n\t"
      "dec %0\n\t"
      "jnz 1b\n\t"
      : "+r"(iters)
      :
      : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", "xmm23", "xmm30", "xmm31", "cc");
}

double dpbusd_peak_gops(ThreadPool& pool) {
  const int64_t iters = 1000000;
  double best = 0;
  for (int r = 0; r < 5; ++r) {
    auto t0 = Clock::now();
    pool.run([&](int, int) { dpbusd_loop(iters); });
    best = std::max(best, 24.0 * 128 * iters * pool.num_threads() / since(t0) / 1e9);
  }
  return best;
}

// ---- One weight format on one shape. ----
struct Format {
  std::string name;
  bool quant;
  GgmlType qt;
  DType ft;
};

// Packed bytes of W for a format.
size_t packed_bytes(const Format& f, int64_t n, int64_t k) {
  return f.quant ? kiln::cpu::packed_qweight_bytes(f.qt, n, k) : kiln::cpu::packed_weight_bytes(f.ft, n, k);
}

// Packs a random W: for quantized formats random GGUF blocks (quants uniform, scales ~0.01).
void make_weights(const Format& f, int64_t n, int64_t k, std::mt19937& rng, Buffer& out) {
  if (f.quant) {
    const int64_t bb = kiln::cpu::detail::qblock_bytes(f.qt);
    std::vector<uint8_t> rows(static_cast<size_t>(n * (k / 32) * bb));
    std::uniform_int_distribution<int> byte(0, 255);
    std::uniform_real_distribution<float> sc(-0.02f, 0.02f);
    for (size_t b = 0; b < rows.size() / bb; ++b) {
      uint8_t* blk = rows.data() + b * bb;
      for (int64_t j = 0; j < bb; ++j) blk[j] = static_cast<uint8_t>(byte(rng));
      const uint16_t d = kiln::f32_to_f16(sc(rng)), m = kiln::f32_to_f16(sc(rng));
      std::memcpy(blk, &d, 2);
      if (f.qt == GgmlType::kQ4_1) std::memcpy(blk + 2, &m, 2);
    }
    kiln::cpu::pack_qweight(rows.data(), f.qt, n, k, out.p);
  } else {
    std::normal_distribution<float> nd(0.0f, 0.05f);
    std::vector<float> w(static_cast<size_t>(n * k));
    for (auto& v : w) v = nd(rng);
    kiln::cpu::pack_weight(w.data(), DType::kF32, n, k, f.ft, out.p);
  }
}

void run_linear(const Format& f, Isa isa, const uint8_t* w, int64_t m, int64_t n, int64_t k, const float* x,
                const float* bias, float* y, ThreadPool& pool) {
  if (f.quant)
    kiln::cpu::qgemm_with_isa(isa, x, k, m, w, f.qt, n, k, bias, y, n, pool);
  else
    kiln::cpu::gemm_with_isa(isa, x, k, m, w, f.ft, n, k, bias, y, n, pool);
}

// Marks every 4 KiB page of a copy with its copy number (no two copies share a page's content, so a
// hypervisor cannot merge them into one cached page). The marks are small integers for float weights;
// for quantized ones two bytes that are quants or (rarely) half of an f16 scale: timing is unaffected.
void mark_pages(const Format& f, Buffer& b, uint32_t copy) {
  for (size_t off = 0; off + 16 <= b.bytes; off += 4096) {
    if (f.quant) {
      b.p[off] = static_cast<uint8_t>(copy);
      b.p[off + 1] = static_cast<uint8_t>(copy >> 8);
    } else {
      const float v = static_cast<float>(copy & 255u);
      if (f.ft == DType::kF32) {
        std::memcpy(b.p + off, &v, 4);
      } else {
        const uint16_t h = kiln::f32_to_bf16(v);
        std::memcpy(b.p + off, &h, 2);
      }
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  Isa isa = kiln::cpu::best_isa();
  int threads = 2;
  bool quick = false;
  std::string only, shape_filter;
  int64_t m_filter = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--isa" && i + 1 < argc) {
      const std::string v = argv[++i];
      if (v != "scalar" && v != "avx2" && v != "avx512") {
        std::fprintf(stderr, "unknown ISA %s\n", v.c_str());
        return 2;
      }
      isa = v == "scalar" ? Isa::kScalar : v == "avx2" ? Isa::kAvx2 : Isa::kAvx512;
    } else if (a == "--threads" && i + 1 < argc) {
      threads = std::atoi(argv[++i]);
    } else if (a == "--quick") {
      quick = true;
    } else if (a == "--only" && i + 1 < argc) {
      only = std::string(",") + argv[++i] + ",";
    } else if (a == "--shape" && i + 1 < argc) {
      shape_filter = argv[++i];
    } else if (a == "--m" && i + 1 < argc) {
      m_filter = std::atoll(argv[++i]);
    } else {
      std::fprintf(stderr,
                   "usage: %s [--isa scalar|avx2|avx512] [--threads N] [--quick] [--only q4_1,q8_0,q4_0,bf16,f32] "
                   "[--shape NxK] [--m 1|512]\n",
                   argv[0]);
      return 2;
    }
  }
  if (!kiln::cpu::isa_available(isa)) {
    std::fprintf(stderr, "ISA %s not available on this CPU\n", kiln::cpu::isa_name(isa));
    return 1;
  }
  ThreadPool pool(threads);
  const double min_s = quick ? 0.15 : 0.5;
  const int cold_rounds = quick ? 3 : 8;

  std::printf("cpu: %s; threads: %d; isa: %s; load average before: %s\n", kiln::cpu_features().to_string().c_str(),
              pool.num_threads(), kiln::cpu::isa_name(isa), loadavg().c_str());
  double copy_gbps, read_gbps;
  memory_floors(pool, quick ? 3 : 8, &copy_gbps, &read_gbps);
  std::printf("memory (%d threads, 256 MiB): memcpy %.1f GB/s copied (%.1f GB/s of traffic), plain read %.1f GB/s\n",
              pool.num_threads(), copy_gbps, 2 * copy_gbps, read_gbps);

  const bool vnni = isa == Isa::kAvx512 && kiln::cpu_features().avx512_vnni;
  const double peak = vnni ? dpbusd_peak_gops(pool) : 0;
  if (vnni) std::printf("vpdpbusd peak (%d threads): %.0f GOP/s (int8 multiply-adds x 2)\n", pool.num_threads(), peak);

  const std::vector<Format> all = {{"q4_1", true, GgmlType::kQ4_1, DType::kF32},
                                   {"q8_0", true, GgmlType::kQ8_0, DType::kF32},
                                   {"q4_0", true, GgmlType::kQ4_0, DType::kF32},
                                   {"bf16", false, GgmlType::kF32, DType::kBF16},
                                   {"f32", false, GgmlType::kF32, DType::kF32}};
  struct Shape {
    int64_t n, k;
  };
  const Shape shapes[] = {{1536, 576}, {49152, 576}, {576, 1536}};
  std::mt19937 rng(42);
  std::normal_distribution<float> nd(0.0f, 1.0f);

  std::printf("\n%-6s %-18s %5s %6s %5s %8s %9s %9s %9s %9s %9s %6s %9s\n", "W", "kernel", "m", "n", "k", "W MiB",
              "hot us", "hot GB/s", "cold us", "cold GB/s", "read GB/s", "%read", "GFLOP/s");
  for (const Shape& s : shapes) {
    if (!shape_filter.empty() && shape_filter != std::to_string(s.n) + "x" + std::to_string(s.k)) continue;
    for (int64_t m : {int64_t{1}, int64_t{512}}) {
      if (m_filter && m != m_filter) continue;
      for (const Format& f : all) {
        if (!only.empty() && only.find("," + f.name + ",") == std::string::npos) continue;
        const size_t wbytes = packed_bytes(f, s.n, s.k);
        std::vector<std::unique_ptr<Buffer>> copies;
        copies.push_back(std::make_unique<Buffer>(wbytes));
        make_weights(f, s.n, s.k, rng, *copies[0]);
        std::vector<float> x(static_cast<size_t>(m * s.k)), bias(static_cast<size_t>(s.n)),
            y(static_cast<size_t>(m * s.n));
        for (auto& v : x) v = nd(rng);
        for (auto& v : bias) v = nd(rng);

        // Hot: best of 8 rounds, each >= min_s / 8.
        run_linear(f, isa, copies[0]->p, m, s.n, s.k, x.data(), bias.data(), y.data(), pool);
        double hot = 1e30;
        for (int r = 0; r < 8; ++r) {
          int64_t calls = 0;
          auto t0 = Clock::now();
          double el;
          do {
            run_linear(f, isa, copies[0]->p, m, s.n, s.k, x.data(), bias.data(), y.data(), pool);
            ++calls;
          } while ((el = since(t0)) < min_s / 8);
          hot = std::min(hot, el / calls);
        }
        const char* kname = f.quant ? kiln::cpu::qgemm_kernel_name_for(isa, f.qt) : kiln::cpu::gemm_kernel_name_for(isa, f.ft);
        std::printf("%-6s %-18s %5lld %6lld %5lld %8.2f %9.1f %9.1f", f.name.c_str(), kname, static_cast<long long>(m),
                    static_cast<long long>(s.n), static_cast<long long>(s.k), wbytes / 1048576.0, hot * 1e6,
                    wbytes / hot / 1e9);
        if (m == 1) {
          const size_t want = std::max<size_t>(2, ((size_t{512} << 20) + wbytes - 1) / wbytes);
          while (copies.size() < want) {
            copies.push_back(std::make_unique<Buffer>(wbytes));
            std::memcpy(copies.back()->p, copies[0]->p, wbytes);
            mark_pages(f, *copies.back(), static_cast<uint32_t>(copies.size()));
          }
          const SumFn sum = pick_sum();
          const bool avx512 = kiln::cpu_features().avx512f;
          std::atomic<float> sink{0};
          double cold = 1e30, rd = 0;
          for (int r = 0; r < cold_rounds; ++r) {
            auto t0 = Clock::now();
            for (auto& c : copies) run_linear(f, isa, c->p, 1, s.n, s.k, x.data(), bias.data(), y.data(), pool);
            cold = std::min(cold, since(t0) / static_cast<double>(copies.size()));
            std::atomic<size_t> read{0};
            t0 = Clock::now();
            pool.run([&](int t, int nt) {
              const size_t floats = wbytes / 4;
              const size_t b = floats * t / nt / 16 * 16, e = floats * (t + 1) / nt / 16 * 16;
              float acc = 0;
              for (auto& c : copies) acc += sum(reinterpret_cast<const float*>(c->p) + b, e - b);
              sink = sink + acc;
              read += copies.size() * sum_bytes(e - b, avx512);
            });
            rd = std::max(rd, read / since(t0) / 1e9);
          }
          std::printf(" %9.1f %9.1f %9.1f %5.0f%% %9s\n", cold * 1e6, wbytes / cold / 1e9, rd,
                      100.0 * wbytes / cold / 1e9 / rd, "");
        } else {
          const double gflops = 2.0 * m * s.n * s.k / hot / 1e9;
          std::printf(" %9s %9s %9s %6s %9.1f", "", "", "", "", gflops);
          if (f.quant && peak > 0) std::printf("  (%.0f%% of vpdpbusd peak)", 100.0 * gflops / peak);
          std::printf("\n");
        }
        std::fflush(stdout);
      }
    }
  }
  std::printf("\nload average after: %s\n", loadavg().c_str());
  return 0;
}
