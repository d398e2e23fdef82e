// Packing, reference, activation quantization, ISA dispatch and threading of the quantized-weight GEMM.
// The kernels live in qgemm_avx512.cpp, qgemm_avx2.cpp and qgemm_scalar.cpp.
#include "backend/cpu/qgemm.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/checked_math.h"
#include "core/cpu_features.h"
#include "core/dtype.h"
#include "core/status.h"

namespace kiln::cpu {

namespace {

constexpr int64_t P = kQgemmPanel;
constexpr int64_t B = kQgemmBlock;

void check_type_and_k(GgmlType t, int64_t k, const char* who) {
  KILN_CHECK(qgemm_supports(t), std::string(who) + ": unsupported weight type " + std::to_string(static_cast<uint32_t>(t)));
  KILN_CHECK(k >= 0 && k % B == 0, std::string(who) + ": k must be a non-negative multiple of 32");
}

constexpr int64_t G = kQgemmGroup;
static_assert(detail::qgroup_block_bytes(GgmlType::kQ8_0) % 64 == 0 && detail::qgroup_block_bytes(GgmlType::kQ4_0) % 64 == 0 &&
                  detail::qgroup_block_bytes(GgmlType::kQ4_1) % 64 == 0,
              "group blocks must keep 64-byte alignment");

// Bytes of one packed group.
size_t group_bytes(GgmlType t, int64_t k) { return static_cast<size_t>(k / B * detail::qgroup_block_bytes(t)); }

uint16_t load_u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

// The 32 weight quants of one GGUF block, as stored integers (Q4: 0..15; Q8_0: -128..127).
void block_quants(GgmlType t, const uint8_t* blk, int32_t (&w)[32]) {
  if (t == GgmlType::kQ8_0) {
    for (int j = 0; j < 32; ++j) w[j] = static_cast<int8_t>(blk[2 + j]);
    return;
  }
  const uint8_t* qs = blk + (t == GgmlType::kQ4_1 ? 4 : 2);
  for (int j = 0; j < 16; ++j) {
    w[j] = qs[j] & 0x0f;
    w[j + 16] = qs[j] >> 4;
  }
}

}  // namespace

bool qgemm_supports(GgmlType t) { return t == GgmlType::kQ8_0 || t == GgmlType::kQ4_0 || t == GgmlType::kQ4_1; }

size_t packed_qweight_bytes(GgmlType t, int64_t n, int64_t k) {
  check_type_and_k(t, k, "packed_qweight_bytes");
  KILN_CHECK(n >= 0, "packed_qweight_bytes: negative n");
  const uint64_t groups = round_up(static_cast<uint64_t>(n), kQgemmGroupRows) / kQgemmGroupRows;
  auto bytes = checked_mul(groups, group_bytes(t, k));
  KILN_CHECK(bytes.has_value() && *bytes <= (uint64_t{1} << 62), "packed_qweight_bytes: size overflows");
  return static_cast<size_t>(*bytes);
}

void pack_qweight(const void* rows, GgmlType t, int64_t n, int64_t k, void* dst) {
  const size_t bytes = packed_qweight_bytes(t, n, k);
  KILN_CHECK(reinterpret_cast<uintptr_t>(dst) % 64 == 0, "pack_qweight: dst must be 64-byte aligned");
  if (bytes == 0) return;
  KILN_CHECK(rows != nullptr && dst != nullptr, "pack_qweight: null pointer");
  std::memset(dst, 0, bytes);
  const int64_t kb = k / B, bb = detail::qblock_bytes(t), qb = detail::qpanel_block_bytes(t);
  const int64_t gb = detail::qgroup_block_bytes(t);
  const size_t grb = group_bytes(t, k);
  const uint8_t* src = static_cast<const uint8_t*>(rows);
  uint8_t* out = static_cast<uint8_t*>(dst);
  for (int64_t r = 0; r < n; ++r) {
    uint8_t* group = out + static_cast<size_t>(r / kQgemmGroupRows) * grb;
    const int64_t panel = (r % kQgemmGroupRows) / P, lane = r % P;
    for (int64_t b = 0; b < kb; ++b) {
      const uint8_t* blk = src + static_cast<size_t>(r * kb + b) * bb;
      int32_t w[32];
      block_quants(t, blk, w);
      uint8_t* q = group + b * gb + panel * qb;
      if (t == GgmlType::kQ8_0) {
        for (int s = 0; s < 8; ++s)
          for (int j = 0; j < 4; ++j) q[s * 64 + 4 * lane + j] = static_cast<uint8_t>(w[4 * s + j]);
      } else {
        for (int v = 0; v < 4; ++v)
          for (int j = 0; j < 4; ++j)
            q[v * 64 + 4 * lane + j] = static_cast<uint8_t>(w[8 * v + j] | (w[8 * v + 4 + j] << 4));
      }
      uint8_t* sc = group + b * gb + G * qb + panel * 32;
      std::memcpy(sc + 2 * lane, blk, 2);  // d
      if (t == GgmlType::kQ4_1) std::memcpy(sc + G * 32 + 2 * lane, blk + 2, 2);  // m
    }
  }
}

void quantize_activations_reference(const float* x, int64_t k, int8_t* q, float* d, int32_t* sq, float* s) {
  for (int64_t b = 0; b < k / B; ++b) {
    const float* xb = x + b * B;
    float amax = 0.0f;
    for (int j = 0; j < B; ++j) amax = std::max(amax, std::fabs(xb[j]));
    const float db = amax / 127.0f;
    const float id = db != 0.0f ? 1.0f / db : 0.0f;
    int32_t sum = 0;
    for (int j = 0; j < B; ++j) {
      const int v = static_cast<int>(std::roundf(xb[j] * id));
      q[b * B + j] = static_cast<int8_t>(v);
      sum += v;
    }
    d[b] = db;
    sq[b] = sum;
    s[b] = db * static_cast<float>(sum);
  }
}

void qgemm_reference(const float* x, int64_t m, const void* rows, GgmlType t, int64_t n, int64_t k,
                     const float* bias, float* y) {
  check_type_and_k(t, k, "qgemm_reference");
  const int64_t kb = k / B, bb = detail::qblock_bytes(t);
  std::vector<int8_t> q(static_cast<size_t>(k));
  std::vector<float> d(static_cast<size_t>(kb)), s(static_cast<size_t>(kb));
  std::vector<int32_t> sq(static_cast<size_t>(kb));
  const uint8_t* src = static_cast<const uint8_t*>(rows);
  for (int64_t i = 0; i < m; ++i) {
    quantize_activations_reference(x + i * k, k, q.data(), d.data(), sq.data(), s.data());
    for (int64_t j = 0; j < n; ++j) {
      float acc = 0.0f;
      for (int64_t b = 0; b < kb; ++b) {
        const uint8_t* blk = src + static_cast<size_t>(j * kb + b) * bb;
        int32_t w[32];
        block_quants(t, blk, w);
        int32_t dot = 0;
        for (int jj = 0; jj < 32; ++jj) dot += (t == GgmlType::kQ4_0 ? w[jj] - 8 : w[jj]) * q[b * B + jj];
        const float c = f16_to_f32(load_u16(blk)) * d[b];
        acc = std::fma(static_cast<float>(dot), c, acc);
        if (t == GgmlType::kQ4_1) acc = std::fma(f16_to_f32(load_u16(blk + 2)), s[b], acc);
      }
      y[i * n + j] = bias ? acc + bias[j] : acc;
    }
  }
}

namespace {

bool use_vnni(Isa isa) { return isa == Isa::kAvx512 && cpu_features().avx512_vnni; }

detail::QgemmBlockFn block_fn(Isa isa) {
  if (use_vnni(isa)) return &detail::qgemm_block_avx512_vnni;
  if (isa == Isa::kAvx512 || isa == Isa::kAvx2) return &detail::qgemm_block_avx2;
  return &detail::qgemm_block_scalar;
}

detail::QuantizeXFn quantize_fn(Isa isa) {
  if (isa == Isa::kAvx512) return &detail::quantize_x_avx512;
  if (isa == Isa::kAvx2) return &detail::quantize_x_avx2;
  return &detail::quantize_x_scalar;
}

// The quantized activations of one call, on the calling thread (the workers only read them).
struct XScratch {
  void* p = nullptr;
  size_t cap = 0;
  ~XScratch() { std::free(p); }
  void* get(size_t bytes) {
    if (bytes > cap) {
      const size_t c = round_up(std::max<size_t>(bytes, cap * 2), 4096);
      void* np = std::aligned_alloc(64, c);
      KILN_CHECK(np != nullptr, "qgemm: out of memory for activation scratch");
      std::free(p);
      p = np;
      cap = c;
    }
    return p;
  }
};

}  // namespace

const char* qgemm_kernel_name_for(Isa isa, GgmlType t) {
  KILN_CHECK(qgemm_supports(t), "qgemm: unsupported weight type");
  const detail::QgemmBlockFn fn = block_fn(isa);
  static const char* const names[3][3] = {
      {"avx512_vnni_q8_0", "avx512_vnni_q4_0", "avx512_vnni_q4_1"},
      {"avx2_q8_0", "avx2_q4_0", "avx2_q4_1"},
      {"scalar_q8_0", "scalar_q4_0", "scalar_q4_1"}};
  const int ki = fn == &detail::qgemm_block_avx512_vnni ? 0 : fn == &detail::qgemm_block_avx2 ? 1 : 2;
  const int ti = t == GgmlType::kQ8_0 ? 0 : t == GgmlType::kQ4_0 ? 1 : 2;
  return names[ki][ti];
}

const char* qgemm_kernel_name(GgmlType t) { return qgemm_kernel_name_for(best_isa(), t); }

void qgemm_with_isa(Isa isa, const float* x, int64_t ldx, int64_t m, const void* packed, GgmlType t, int64_t n,
                    int64_t k, const float* bias, float* y, int64_t ldy, ThreadPool& pool) {
  check_type_and_k(t, k, "qgemm");
  KILN_CHECK(m >= 0 && n >= 0, "qgemm: negative shape");
  KILN_CHECK(isa_available(isa), std::string("qgemm: ISA not available on this CPU: ") + isa_name(isa));
  if (m == 0 || n == 0) return;
  KILN_CHECK(ldy >= n && (k == 0 || ldx >= k), "qgemm: row stride smaller than the row");
  KILN_CHECK(y != nullptr && (k == 0 || (x != nullptr && packed != nullptr)), "qgemm: null pointer");
  if (k == 0) {
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) y[i * ldy + j] = bias ? bias[j] : 0.0f;
    return;
  }
  KILN_CHECK(reinterpret_cast<uintptr_t>(packed) % 64 == 0, "qgemm: packed weights must be 64-byte aligned");

  const int64_t kb = k / B;
  const int64_t ldq = static_cast<int64_t>(round_up(static_cast<uint64_t>(k), 64));
  thread_local XScratch scratch;
  const size_t q_bytes = static_cast<size_t>(m * ldq);
  char* buf = static_cast<char*>(scratch.get(q_bytes + static_cast<size_t>(m * kb) * sizeof(detail::QxBlock)));
  int8_t* xq = reinterpret_cast<int8_t*>(buf);
  detail::QxBlock* xb = reinterpret_cast<detail::QxBlock*>(buf + q_bytes);

  const int threads = pool.num_threads();
  const detail::QuantizeXFn quant = quantize_fn(isa);
  // Quantizing x costs about as much as ~1/n of the product: on the workers only when m is large.
  if (threads > 1 && m >= 32) {
    pool.parallel_for(m, [&](int64_t r0, int64_t r1) {
      quant(x + r0 * ldx, ldx, r1 - r0, k, xq + r0 * ldq, ldq, xb + r0 * kb);
    });
  } else {
    quant(x, ldx, m, k, xq, ldq, xb);
  }

  detail::QgemmArgs args;
  args.xq = xq;
  args.xb = xb;
  args.ldq = ldq;
  args.m = m;
  args.packed = static_cast<const uint8_t*>(packed);
  args.t = t;
  args.n = n;
  args.k = k;
  args.kb = kb;
  args.gb = detail::qgroup_block_bytes(t);
  args.group_bytes = group_bytes(t, k);
  args.bias = bias;
  args.y = y;
  args.ldy = ldy;

  const detail::QgemmBlockFn fn = block_fn(isa);
  const int64_t panels = (n + P - 1) / P;
  const uint64_t weight_bytes = packed_qweight_bytes(t, n, k);
  const uint64_t macs = static_cast<uint64_t>(m) * static_cast<uint64_t>(n) * static_cast<uint64_t>(k);
  if (threads == 1 || (weight_bytes < (32u << 10) && macs < (1u << 19)) || (panels <= kQgemmGroup && m <= 8)) {
    fn(args, 0, m, 0, panels);
    return;
  }

  // As gemm(): chunks of n (disjoint parts of W), rows of m too when n is narrow; k is never split, so every
  // output is computed the same way whatever the split. Chunks are whole groups (each a sequential stream,
  // full-width tiles) unless there are too few groups to balance the threads, then single panels: at
  // m = 1, n = 576, k = 1536 (9 groups) panel-cut chunks streamed W at 18 GB/s, group-cut ones at 25.
  const int64_t groups = (panels + kQgemmGroup - 1) / kQgemmGroup;
  const int64_t unit = groups >= 2 * threads ? kQgemmGroup : 1;
  const int64_t n_units = (panels + unit - 1) / unit;
  const auto [n_chunks, m_chunks] = detail::split_work(m, n_units, threads);
  const int64_t units = n_chunks * m_chunks;
  std::atomic<int64_t> next{0};
  pool.run([&](int, int) {
    for (int64_t u; (u = next.fetch_add(1, std::memory_order_relaxed)) < units;) {
      const int64_t nc = u % n_chunks, mc = u / n_chunks;
      const int64_t p0 = std::min(panels, n_units * nc / n_chunks * unit);
      const int64_t p1 = std::min(panels, n_units * (nc + 1) / n_chunks * unit);
      const int64_t r0 = m * mc / m_chunks, r1 = m * (mc + 1) / m_chunks;
      if (p0 < p1 && r0 < r1) fn(args, r0, r1, p0, p1);
    }
  });
}

void qgemm(const float* x, int64_t ldx, int64_t m, const void* packed, GgmlType t, int64_t n, int64_t k,
           const float* bias, float* y, int64_t ldy, ThreadPool& pool) {
  qgemm_with_isa(best_isa(), x, ldx, m, packed, t, n, k, bias, y, ldy, pool);
}

namespace detail {

void quantize_x_scalar(const float* x, int64_t ldx, int64_t rows, int64_t k, int8_t* q, int64_t ldq, QxBlock* blk) {
  const int64_t kb = k / B;
  std::vector<float> d(static_cast<size_t>(kb)), s(static_cast<size_t>(kb));
  std::vector<int32_t> sq(static_cast<size_t>(kb));
  for (int64_t i = 0; i < rows; ++i) {
    quantize_activations_reference(x + i * ldx, k, q + i * ldq, d.data(), sq.data(), s.data());
    for (int64_t b = 0; b < kb; ++b) blk[i * kb + b] = QxBlock{d[b], sq[b], s[b]};
  }
}

}  // namespace detail

}  // namespace kiln::cpu
