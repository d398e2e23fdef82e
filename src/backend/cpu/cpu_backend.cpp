#include "backend/cpu/cpu_backend.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "backend/cpu/attention.h"
#include "backend/cpu/gemm.h"
#include "backend/cpu/qgemm.h"
#include "backend/cpu/vec.h"
#include "core/checked_math.h"
#include "core/cpu_features.h"

namespace kiln {

uint64_t CpuBackend::free_memory() const { return available_host_memory(); }

Result<DeviceBuffer> CpuBackend::allocate(size_t bytes) {
  void* p = std::aligned_alloc(64, round_up(bytes ? bytes : 1, 64));
  if (!p) return resource_exhausted("cpu backend: cannot allocate " + std::to_string(bytes) + " bytes");
  return DeviceBuffer{std::shared_ptr<void>(p, std::free), bytes};
}

// (An empty tensor may come with null pointers, which memcpy must never see.)
void CpuBackend::upload(const void* host, const Tensor& dst) {
  if (dst.nbytes() > 0) std::memcpy(dst.data, host, dst.nbytes());
}
void CpuBackend::download(const Tensor& src, void* host) {
  if (src.nbytes() > 0) std::memcpy(host, src.data, src.nbytes());
}

Result<Tensor> CpuBackend::adopt_weight(const Tensor& host, std::shared_ptr<void> /*keep_alive*/) {
  // The engine file stays mapped for the model's life; the CPU reads weights in place.
  if (reinterpret_cast<uintptr_t>(host.data) % 64 != 0)
    return internal_error("cpu backend: weight data is not 64-byte aligned");
  return host;
}

void CpuBackend::zero_bytes(void* dst, size_t bytes) {
  if (bytes) std::memset(dst, 0, bytes);
}
void CpuBackend::copy_bytes(void* dst, const void* src, size_t bytes) {
  if (bytes) std::memcpy(dst, src, bytes);
}

void CpuBackend::embedding(const EmbeddingWeight& table, const Tensor& ids, Tensor& out) {
  const int64_t hidden = table.hidden;
  const int32_t* id = ids.as<int32_t>();
  const auto& ops = cpu::vec_ops();
  const size_t row_bytes = table.quant ? *ggml_row_bytes(*table.quant, hidden) : hidden * dtype_size(table.data.dtype);
  for (int64_t t = 0; t < ids.numel(); ++t) {
    KILN_CHECK(id[t] >= 0, "token id out of range reached the backend");
    const int64_t r = id[t] - table.vocab_start;
    if (r < 0 || r >= table.vocab) {  // another rank's slice of the vocabulary (ids are checked by the model)
      std::fill(out.as<float>() + t * hidden, out.as<float>() + (t + 1) * hidden, 0.0f);
      continue;
    }
    const char* row = table.data.as<char>() + r * row_bytes;
    if (table.quant) dequantize_row(*table.quant, row, out.as<float>() + t * hidden, hidden);
    else ops.to_f32(row, table.data.dtype, out.as<float>() + t * hidden, hidden);
  }
}

namespace {
// Row-wise RMSNorm of f32 rows with a weight of any float type (kept f32 by the loader).
void rmsnorm_rows(const float* x, const float* w, float eps, float* out, int64_t rows, int64_t dim) {
  const auto& ops = cpu::vec_ops();
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * dim;
    float* o = out + r * dim;
    float inv = 1.0f / std::sqrt(ops.sum_squares(xr, dim) / static_cast<float>(dim) + eps);
    for (int64_t i = 0; i < dim; ++i) o[i] = (xr[i] * inv) * w[i];
  }
}
}  // namespace

void CpuBackend::rmsnorm(const Tensor& x, const Tensor& weight, float eps, Tensor& out) {
  const int64_t dim = weight.numel(), rows = x.numel() / dim;
  KILN_CHECK(weight.dtype == DType::kF32, "norm weights are f32 on the CPU");
  pool_.parallel_for(rows, [&](int64_t b, int64_t e) {
    rmsnorm_rows(x.as<float>() + b * dim, weight.as<float>(), eps, out.as<float>() + b * dim, e - b, dim);
  });
}

void CpuBackend::add_rmsnorm(Tensor& residual, const Tensor& delta, const Tensor& weight, float eps, Tensor& out) {
  const int64_t dim = weight.numel(), rows = residual.numel() / dim;
  pool_.parallel_for(rows, [&](int64_t b, int64_t e) {
    float* r = residual.as<float>() + b * dim;
    const float* d = delta.as<float>() + b * dim;
    for (int64_t i = 0; i < (e - b) * dim; ++i) r[i] += d[i];
    rmsnorm_rows(r, weight.as<float>(), eps, out.as<float>() + b * dim, e - b, dim);
  });
}

void CpuBackend::linear(const Tensor& x, const LinearWeight& w, const Tensor* bias, Tensor& y) {
  const int64_t m = x.numel() / w.in_features;
  if (w.quant) {
    cpu::qgemm(x.as<float>(), w.in_features, m, w.data.data, *w.quant, w.out_features, w.in_features,
               bias ? bias->as<float>() : nullptr, y.as<float>(), w.out_features, pool_);
    return;
  }
  cpu::gemm(x.as<float>(), w.in_features, m, w.data.data, w.dtype, w.out_features, w.in_features,
            bias ? bias->as<float>() : nullptr, y.as<float>(), w.out_features, pool_);
}

void CpuBackend::qkv_rope_kv_write(const Tensor& qkv, const QkvLayout& L, const Tensor& cos_sin,
                                   const AttentionBatch& batch, KvLayer& kv, Tensor& q_out) {
  cpu::qkv_rope_kv_write(qkv, L, cos_sin, batch, kv, q_out, pool_);
}

void CpuBackend::paged_attention(const Tensor& q, const KvLayer& kv, const AttentionBatch& batch,
                                 const AttentionParams& params, Tensor& out) {
  cpu::paged_attention(q, kv, batch, params, out, pool_);
}

void CpuBackend::add(Tensor& residual, const Tensor& delta) {
  KILN_CHECK(residual.dtype == DType::kF32 && delta.dtype == DType::kF32 && residual.numel() == delta.numel(),
             "add: f32 tensors of one size");
  float* r = residual.as<float>();
  const float* d = delta.as<float>();
  pool_.parallel_for(residual.numel(), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) r[i] += d[i];
  });
}

void CpuBackend::silu_mul(const Tensor& gate_up, Tensor& out) {
  const int64_t inter = out.dim(-1), rows = out.numel() / inter;
  const auto& ops = cpu::vec_ops();
  pool_.parallel_for(rows, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const float* g = gate_up.as<float>() + r * 2 * inter;
      ops.silu_mul(g, g + inter, out.as<float>() + r * inter, inter);
    }
  });
}

void CpuBackend::gather_rows(const Tensor& x, const Tensor& rows, Tensor& out) {
  const size_t row_bytes = x.nbytes() / x.dim(0);
  const int32_t* r = rows.as<int32_t>();
  for (int64_t i = 0; i < rows.numel(); ++i)
    std::memcpy(out.as<char>() + i * row_bytes, x.as<char>() + r[i] * row_bytes, row_bytes);
}

void CpuBackend::scatter_tokens(const Tensor& src, const Tensor& pairs, Tensor& ids) {
  const int32_t* p = pairs.as<int32_t>();
  for (int32_t i = 0; i < p[0]; ++i) ids.as<int32_t>()[p[1 + 2 * i]] = src.as<int32_t>()[p[2 + 2 * i]];
}

void CpuBackend::argmax_rows(const Tensor& logits, Tensor& ids) {
  const int64_t vocab = logits.dim(-1), rows = logits.numel() / vocab;
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = logits.as<float>() + r * vocab;
    int64_t best = 0;
    for (int64_t i = 1; i < vocab; ++i)
      if (row[i] > row[best]) best = i;
    ids.as<int32_t>()[r] = static_cast<int32_t>(best);
  }
}

}  // namespace kiln
