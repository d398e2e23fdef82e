// The CUDA backend's communicators (communicator.h) for the ranks of one process, one thread and one
// CudaBackend (stream) each. Two kinds, chosen by where the ranks' backends are:
//
// - Every rank on its own GPU (the normal case): NCCL. One communicator per stage's tensor-parallel group
//   (all_reduce_sum: in-place ncclAllReduce; all_gather_columns: ncclAllGather into a [tp, R, V_local] scratch
//   that reserve() allocates, then a kernel that lays the columns out as [R, V]) and one over all ranks for
//   send_next / recv_prev (ncclSend / ncclRecv to rank +- tp_size). Made with ncclCommInitAll from the calling
//   thread (one process, a list of devices). Everything is ordered on the rank's stream; nothing waits on the
//   host. NVLink multicast (NVLS) is turned off (NCCL_NVLS_ENABLE=0 unless set). NCCL is opened at run time
//   (libnccl.so.2, or the file KILN_NCCL_LIBRARY names): a kiln built without nccl.h, or run where the library
//   is missing, refuses multi-GPU engines with an error that says so.
//   CUDA graphs: NCCL can be captured, but that is not verified here for several GPUs in one process, so the
//   ranks' decode graphs are turned off unless KILN_NCCL_GRAPHS=1.
//
// - Ranks sharing a GPU (KILN_SHARED_GPU_RANKS=1 maps rank r to GPU r % count; for testing multi-rank engines
//   on fewer GPUs): a host-synchronised communicator. A collective's ranks meet at a host barrier, each rank's
//   stream waits on events the others recorded after writing their buffers, a kernel on each rank's stream reads
//   every rank's buffer (all-reduce: summed in rank order, so the same bits everywhere, into a scratch copied
//   back after a second barrier and event wait that ensure no rank still reads it); send/recv go through a FIFO
//   of device buffers per (rank, rank + tp) pair, with events. Ranks on different GPUs in this mode need peer
//   access between them. Host barriers cannot be recorded into a graph: those backends' graphs are turned off.
//   Correct and deadlock-free, not fast.
#pragma once

#include <span>
#include <string>

#include "backend/backend.h"
#include "backend/communicator_factory.h"
#include "core/status.h"

namespace kiln {

// backends[r]: rank r's CudaBackend (rank = pp_rank * tp_size + tp_rank), created on the thread that will call
// its communicator. NCCL when every rank has its own GPU, the host-synchronised kind when some share one (and for
// a single rank). Turns graph capture off on backends whose communicator cannot be recorded.
Result<Communicators> make_cuda_communicators(std::span<Backend* const> backends, int tp_size, int pp_size);

// NCCL whatever the devices are (tests: a single rank exercises the NCCL path on one GPU; NCCL refuses two ranks
// of one communicator on one GPU).
Result<Communicators> make_nccl_communicators(std::span<Backend* const> backends, int tp_size, int pp_size);

// Whether NCCL can be used here: empty when it can, otherwise why not (no nccl.h at build, library not found).
std::string nccl_unavailable_reason();

}  // namespace kiln
