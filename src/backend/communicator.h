// Collectives between the ranks of one engine (parallel_layout.h): all-reduce and all-gather within a stage's
// tensor-parallel group, point-to-point between neighbouring pipeline stages (same tp rank). Called inside a
// forward's ops (Backend::run_forward_ops) on the rank's own thread, over that rank's backend buffers; every rank
// of a group makes the same calls in the same order (a rank that skips one stalls its group).
#pragma once

#include "core/status.h"
#include "core/tensor.h"

namespace kiln {

class Communicator {
 public:
  virtual ~Communicator() = default;
  // Scratch for all_gather_columns of up to `local_bytes` per rank, allocated now (outside any forward: a GPU
  // may be recording one into a graph, where allocation is not allowed).
  virtual Status reserve(size_t local_bytes) { return {}; }
  // t [any shape] (f32 / f16 / bf16) = the sum of every tp rank's t, the same bits on each rank.
  virtual void all_reduce_sum(Tensor& t) = 0;
  // local [R, V_local] of tp rank r -> out [R, V] columns [r * V_local, min(V, (r + 1) * V_local)) (past V: dropped).
  virtual void all_gather_columns(const Tensor& local, Tensor& out) = 0;
  // To the same tp rank of the next stage / from that of the previous one, in order (FIFO per pair).
  virtual void send_next(const Tensor& t) = 0;
  virtual void recv_prev(Tensor& t) = 0;
};

}  // namespace kiln
