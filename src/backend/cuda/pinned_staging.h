// Pinned host staging for host-to-device copies that must not wait for the stream: a ring of page-locked
// memory whose regions are reused once the copies that read them have run (an event per region). A copy from
// pageable memory may synchronize with the stream, which would stop the host from preparing the next forward
// while the GPU runs this one.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <deque>
#include <memory>

namespace kiln::cuda {

class PinnedStaging {
 public:
  explicit PinnedStaging(size_t capacity = size_t{16} << 20) : capacity_(capacity) {}
  ~PinnedStaging();
  PinnedStaging(const PinnedStaging&) = delete;
  PinnedStaging& operator=(const PinnedStaging&) = delete;

  // `bytes` of pinned memory to fill and copy from on `stream`; call copied(stream) once the copy is queued.
  // Waits only for older copies that still read the region it returns. Grows (after waiting for `stream`) when
  // `bytes` exceeds the ring.
  void* reserve(size_t bytes, cudaStream_t stream);
  // Marks the region of the last reserve() as in use until the work queued on `stream` so far has run.
  void copied(cudaStream_t stream);

 private:
  struct Region {
    size_t begin = 0, end = 0;
    cudaEvent_t done = nullptr;
  };
  void wait_overlapping(size_t begin, size_t end);

  size_t capacity_;
  std::shared_ptr<void> ring_;
  size_t head_ = 0;               // next free byte
  size_t last_begin_ = 0, last_end_ = 0;
  std::deque<Region> in_use_;     // oldest first
  std::deque<cudaEvent_t> spare_events_;
};

}  // namespace kiln::cuda
