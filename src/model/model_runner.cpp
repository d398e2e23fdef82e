#include "model/model_runner.h"

namespace kiln {

Status SingleRankRunner::create_kv_cache(int num_blocks) {
  KILN_ASSIGN_OR_RETURN(kv_, backend_.create_kv_storage(model_.kv_cache_spec(num_blocks)));
  return {};
}

void SingleRankRunner::copy_kv_blocks(std::span<const std::pair<int32_t, int32_t>> src_dst) {
  KILN_CHECK(kv_ != nullptr, "copy_kv_blocks before create_kv_cache");
  backend_.copy_kv_blocks(*kv_, src_dst);
}

Status SingleRankRunner::launch(const ForwardBatch& batch, ForwardOutput output, const SamplingBatch* sampling) {
  if (!kv_) return failed_precondition("forward before create_kv_cache");
  return model_.launch(batch, *kv_, output, sampling);
}

}  // namespace kiln
