#include "backend/communicator_factory.h"

#include "backend/cpu/host_communicator.h"
#ifdef KILN_HAVE_CUDA
#include "backend/cuda/cuda_communicators.h"
#endif

namespace kiln {

Result<Communicators> make_communicators(std::span<Backend* const> backends, int tp_size, int pp_size) {
  if (static_cast<int>(backends.size()) != tp_size * pp_size || backends.empty())
    return invalid_argument("make_communicators: " + std::to_string(backends.size()) + " backends for tp_size " +
                            std::to_string(tp_size) + " x pp_size " + std::to_string(pp_size));
  const std::string name = backends[0]->name();
  for (Backend* b : backends)
    if (b->name() != name) return invalid_argument("make_communicators: the ranks' backends differ");
  Communicators c;
  if (name == "cpu") {
    auto world = std::make_shared<HostCommWorld>(tp_size, pp_size);
    for (int r = 0; r < tp_size * pp_size; ++r) c.ranks.push_back(&world->rank(r));
    c.owner = world;
    return c;
  }
#ifdef KILN_HAVE_CUDA
  if (name == "cuda") return make_cuda_communicators(backends, tp_size, pp_size);
#endif
  return unimplemented("the " + name + " backend has no communicator for tensor/pipeline parallelism");
}

}  // namespace kiln
