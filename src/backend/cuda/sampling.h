// Sampling on the GPU (sampling.cu): the executor's LogitsProcessor penalties/bans and TokenSampler
// (temperature, top-k, top-p, the Philox inverse-CDF draw) over logit rows where they are, so that only the
// token ids leave the device. The settings live in one device buffer that CudaBackend::begin_sampling fills
// outside graph capture; sample_rows reads them there, so a captured graph follows new settings on replay.
//
// Settings buffer layout (bytes): SamplingHeaderDev at 0, SamplingRowDev[num_rows] at kSamplingRowsOffset,
// PenaltyDev[...] at header.penalties_offset (a multiple of 16).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace kiln::cuda {

struct SamplingHeaderDev {
  int32_t num_rows = 0;
  int32_t log_probs = 0;  // 1: write each drawn token's log-prob
  int64_t penalties_offset = 0;
};

struct SamplingRowDev {
  float temperature = 1.0f;
  int32_t top_k = 0;
  float top_p = 0.0f;
  float repetition_penalty = 1.0f;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  int32_t penalties_begin = 0, penalties_end = 0;
  uint64_t seed = 0;
  uint64_t step = 0;
};

enum : int32_t { kPenaltyRepetition = 1, kPenaltyBanned = 2 };
struct PenaltyDev {
  int32_t token = 0;
  int32_t output_count = 0;
  int32_t flags = 0;  // kPenaltyRepetition | kPenaltyBanned
};

constexpr size_t kSamplingRowsOffset = 64;

// Sets the kernel's shared-memory limit (idempotent; call outside graph capture before the first launch).
void sampling_init();

// ids[r] (and log_probs[r] when the header asks and log_probs is not null) for each of `rows` logit rows
// [rows, vocab] f32 (penalties are applied to `logits` in place). `settings`: the device buffer above, with
// header.num_rows >= rows. No allocation, no synchronization: may be captured in a CUDA graph.
void sample_rows(float* logits, int64_t rows, int64_t vocab, const void* settings, int32_t* ids, float* log_probs,
                 cudaStream_t stream);

}  // namespace kiln::cuda
