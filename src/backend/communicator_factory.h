// The communicators of one engine's ranks, chosen by where their backends keep memory.
#pragma once

#include <memory>
#include <span>
#include <vector>

#include "backend/backend.h"
#include "backend/communicator.h"
#include "core/status.h"

namespace kiln {

struct Communicators {
  std::shared_ptr<void> owner;       // the state the ranks share (keeps `ranks` valid)
  std::vector<Communicator*> ranks;  // [tp_size * pp_size], rank = pp_rank * tp_size + tp_rank
};

// backends[r] is rank r's (created on its thread). cpu: threads over host memory (HostCommWorld); cuda: NCCL
// between distinct GPUs. Errors say what is missing (e.g. a build without NCCL).
Result<Communicators> make_communicators(std::span<Backend* const> backends, int tp_size, int pp_size);

}  // namespace kiln
