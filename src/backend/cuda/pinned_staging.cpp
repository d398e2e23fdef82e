#include "backend/cuda/pinned_staging.h"

#include <algorithm>

#include "backend/cuda/cuda_check.h"

namespace kiln::cuda {

PinnedStaging::~PinnedStaging() {
  for (Region& r : in_use_) {
    cudaEventSynchronize(r.done);
    cudaEventDestroy(r.done);
  }
  for (cudaEvent_t e : spare_events_) cudaEventDestroy(e);
}

void PinnedStaging::wait_overlapping(size_t begin, size_t end) {
  // Copies on one stream finish in order: wait for the oldest regions until none overlaps the range.
  auto overlaps = [&](const Region& r) { return r.begin < end && begin < r.end; };
  while (std::any_of(in_use_.begin(), in_use_.end(), overlaps)) {
    KILN_CUDA_CHECK(cudaEventSynchronize(in_use_.front().done));
    spare_events_.push_back(in_use_.front().done);
    in_use_.pop_front();
  }
}

void* PinnedStaging::reserve(size_t bytes, cudaStream_t stream) {
  bytes = std::max<size_t>((bytes + 255) & ~size_t{255}, 256);
  if (!ring_ || bytes > capacity_) {
    KILN_CUDA_CHECK(cudaStreamSynchronize(stream));  // the old ring may still feed queued copies
    for (Region& r : in_use_) spare_events_.push_back(r.done);
    in_use_.clear();
    capacity_ = std::max(capacity_, bytes * 2);
    void* p = nullptr;
    KILN_CUDA_CHECK(cudaMallocHost(&p, capacity_));
    ring_ = std::shared_ptr<void>(p, [](void* q) { cudaFreeHost(q); });
    head_ = 0;
  }
  if (head_ + bytes > capacity_) head_ = 0;
  wait_overlapping(head_, head_ + bytes);
  last_begin_ = head_;
  last_end_ = head_ + bytes;
  head_ = last_end_;
  return static_cast<char*>(ring_.get()) + last_begin_;
}

void PinnedStaging::copied(cudaStream_t stream) {
  cudaEvent_t e = nullptr;
  if (!spare_events_.empty()) {
    e = spare_events_.front();
    spare_events_.pop_front();
  } else {
    KILN_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  }
  KILN_CUDA_CHECK(cudaEventRecord(e, stream));
  in_use_.push_back({last_begin_, last_end_, e});
}

}  // namespace kiln::cuda
