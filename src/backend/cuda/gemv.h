// Bandwidth-bound skinny GEMM for decode at batch 1..4 (gemv.cu says how); larger m goes to cuBLASLt.
// Optionally fused with the op before it (RMSNorm of the residual stream, SiLU·mul of gate_up) and the
// residual add after it, so that those intermediates never go through device memory.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "core/dtype.h"

namespace kiln::cuda {

constexpr int64_t kGemvMaxRows = 4;

// The fused kernel keeps the whole (transformed) x [m, k] in shared memory next to its ring of W tiles:
// fusions need m * k * sizeof(T) <= this (k = 16384 at m = 4 in f16/bf16). Plain linears past it still run
// (an older kernel that reads x from L1/L2).
constexpr int64_t kGemvMaxFusedXBytes = 128 * 1024;
// The SiLU·mul prologue only up to this m (beyond it the unfused silu_mul + gemv measure faster).
constexpr int64_t kGemvMaxSiluMulRows = 2;

// What gemv() does around the product. Every fusion needs a Hopper GPU (sm_90) and y of x's type, except
// kRmsNorm alone, which also takes an f32 y (the final norm before the LM head's f32 logits: rounded to x's
// type as rmsnorm() stores it, then the product as a plain gemv with f32 y); gemv_supported says whether a
// given call can have it.
struct GemvFusion {
  enum class Prologue {
    kNone,     // the product takes x [m, k] as is
    kRmsNorm,  // x [m, k] is the residual stream; the product takes T(rmsnorm(x) * norm_weight), rounded as
               // the unfused rmsnorm() kernel stores it (norm_weight [k] f32, 16-byte aligned; eps)
    kSiluMul,  // x [m, 2k] is gate_up (gate | up); the product takes T(silu(gate) * up), as silu_mul() does
  };
  Prologue prologue = Prologue::kNone;
  const float* norm_weight = nullptr;
  float eps = 0.0f;
  // y [m, n] is the residual stream: y = T(float(y) + float(T(x·Wᵀ + bias))), as linear-then-add() rounds.
  bool add_to_y = false;
};

// Whether gemv() takes this linear layer: x and W of one 16-bit type, y that type or f32, m <= kGemvMaxRows,
// k % 8 == 0, x and W 16-byte aligned; with a fusion also y of x's type (or f32 for kRmsNorm without
// add_to_y), an sm_90 device, m * k * sizeof(T) <= kGemvMaxFusedXBytes, for kRmsNorm a 16-byte aligned
// norm_weight, for kSiluMul m <= kGemvMaxSiluMulRows.
bool gemv_supported(DType xt, DType wt, DType yt, int64_t m, int64_t n, int64_t k, const void* x, const void* w,
                    const GemvFusion& fusion = {});

// y [m, n] = x [m, k] · Wᵀ + bias (bias [n] f32 or null), W [n, k] of x's type, with `fusion` applied.
// x (and y with add_to_y) are activations: read only after the previous kernel on the stream is done
// (programmatic dependent launch); W and bias are read before that, so they must be immutable.
// The Hopper kernel hands out work through counters kept per stream (1024 streams per device at most; past
// that plain calls take the legacy kernel): launches on one stream run in order, and a CUDA graph must be
// replayed on the stream it was captured on (or on one that runs no other gemv at the same time).
void gemv(const void* x, DType xt, int64_t m, const void* w, int64_t n, int64_t k, const float* bias, void* y, DType yt,
          cudaStream_t stream, const GemvFusion& fusion = {});

// For benchmarks and tests: overrides the kernel's geometry for later calls in this process (0 = automatic;
// not thread-safe). legacy: the pre-Hopper kernel (no shared memory, no fusions) for plain calls.
struct GemvTuning {
  int consumer_warps = 0;    // warps doing the dot products (one more warp issues the copies)
  int rows_per_tile = 0;     // 4 or 8 (4 only for f16 -> f16)
  int vectors_per_lane = 0;  // 16-byte W pieces per lane per row per tile: tile = rows x (8 * 32 * warps * this)
  int max_stages = 0;        // tiles in the shared-memory ring
  int blocks_per_sm = 0;     // 1 or 2
  bool legacy = false;
};
void gemv_set_tuning(const GemvTuning& tuning);

}  // namespace kiln::cuda
