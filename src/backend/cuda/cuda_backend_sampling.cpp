// CudaBackend's sampling on the device (sampling.cu): begin_sampling uploads the rows' settings and penalty
// entries into one device buffer the backend owns (outside graph capture: it may grow it, which drops the
// recorded graphs); sample_rows launches one kernel that reads them there (no allocation, no sync: it may run
// inside a captured graph, and a replay follows the settings of the latest begin_sampling).
#include <cstring>
#include <string>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/sampling.h"

namespace kiln {

bool CudaBackend::samples_on_device() const { return true; }

Status CudaBackend::begin_sampling(const SamplingBatch& batch) {
  if (capturing_) return failed_precondition("cuda backend: begin_sampling during a graph capture");
  const size_t R = batch.rows.size(), P = batch.penalties.size();
  for (size_t r = 0; r < R; ++r) {
    const SamplingRow& s = batch.rows[r];
    if (s.penalties_begin < 0 || s.penalties_begin > s.penalties_end || static_cast<size_t>(s.penalties_end) > P)
      return invalid_argument("begin_sampling: row " + std::to_string(r) + " has penalty entries [" +
                              std::to_string(s.penalties_begin) + ", " + std::to_string(s.penalties_end) +
                              ") outside the batch's " + std::to_string(P));
  }
  const size_t pen_off = (cuda::kSamplingRowsOffset + R * sizeof(cuda::SamplingRowDev) + 15) & ~size_t{15};
  const size_t bytes = pen_off + P * sizeof(cuda::PenaltyDev);
  cuda::sampling_init();
  if (sampling_settings_.bytes < bytes) {
    KILN_CUDA_CHECK(cudaStreamSynchronize(stream_));  // the old buffer may still be read by queued work
    auto grown = allocate(std::max(bytes * 2, size_t{256} << 10));  // drops the graphs (they hold the old one)
    if (!grown.ok()) return grown.status();
    sampling_settings_ = std::move(*grown);
  }
  auto* p = static_cast<uint8_t*>(staging_.reserve(bytes, stream_));
  cuda::SamplingHeaderDev h;
  h.num_rows = static_cast<int32_t>(R);
  h.log_probs = batch.log_probs ? 1 : 0;
  h.penalties_offset = static_cast<int64_t>(pen_off);
  std::memset(p, 0, pen_off);
  std::memcpy(p, &h, sizeof(h));
  auto* rows = reinterpret_cast<cuda::SamplingRowDev*>(p + cuda::kSamplingRowsOffset);
  for (size_t r = 0; r < R; ++r) {
    const SamplingRow& s = batch.rows[r];
    cuda::SamplingRowDev d;
    d.temperature = s.temperature;
    d.top_k = s.top_k;
    d.top_p = s.top_p;
    d.repetition_penalty = s.repetition_penalty;
    d.presence_penalty = s.presence_penalty;
    d.frequency_penalty = s.frequency_penalty;
    d.penalties_begin = s.penalties_begin;
    d.penalties_end = s.penalties_end;
    d.seed = s.seed;
    d.step = s.step;
    std::memcpy(&rows[r], &d, sizeof(d));
  }
  auto* pens = reinterpret_cast<cuda::PenaltyDev*>(p + pen_off);
  for (size_t i = 0; i < P; ++i) {
    const PenaltyEntry& e = batch.penalties[i];
    cuda::PenaltyDev d;
    d.token = e.token;
    d.output_count = e.output_count;
    d.flags = (e.repetition ? cuda::kPenaltyRepetition : 0) | (e.banned ? cuda::kPenaltyBanned : 0);
    std::memcpy(&pens[i], &d, sizeof(d));
  }
  KILN_CUDA_CHECK(cudaMemcpyAsync(sampling_settings_.mem.get(), p, bytes, cudaMemcpyHostToDevice, stream_));
  staging_.copied(stream_);
  sampling_rows_ = static_cast<int64_t>(R);
  return {};
}

void CudaBackend::sample_rows(Tensor& logits, Tensor& ids, Tensor& log_probs) {
  KILN_CHECK(logits.dtype == DType::kF32, "sample_rows: logits must be float32");
  const int64_t vocab = logits.dim(-1);
  const int64_t rows = logits.numel() / vocab;
  KILN_CHECK(sampling_settings_.mem != nullptr && rows <= sampling_rows_,
             "sample_rows: " + std::to_string(rows) + " logit rows but begin_sampling gave " +
                 std::to_string(sampling_rows_));
  KILN_CHECK(ids.numel() >= rows, "sample_rows: ids too small");
  float* lp = log_probs.data != nullptr && log_probs.numel() >= rows ? log_probs.as<float>() : nullptr;
  cuda::sample_rows(logits.as<float>(), rows, vocab, sampling_settings_.mem.get(), ids.as<int32_t>(), lp, stream_);
}

}  // namespace kiln
