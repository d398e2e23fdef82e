// Splits a forward's batch into micro-batches by sequence, for pipeline parallelism: stage s runs micro-batch
// m + 1 while stage s + 1 runs m.
#pragma once

#include <vector>

#include "model/llama_model.h"

namespace kiln {

struct MicroBatch {
  ForwardBatch batch;
  std::vector<int32_t> rows;  // [logit rows of `batch`] the logit row of the whole batch each one is
};

// At most `parts` micro-batches of whole sequences, in order, with about the same number of tokens each (fewer
// when there are fewer sequences). The batch must not carry previous_tokens (they name rows of the last forward
// as a whole).
std::vector<MicroBatch> split_micro_batches(const ForwardBatch& batch, int parts);

}  // namespace kiln
