#include "backend/cpu/host_communicator.h"

#include <algorithm>
#include <cstring>

#include "core/status.h"

namespace kiln {

class HostCommunicator : public Communicator {
 public:
  HostCommunicator(HostCommWorld& world, int rank)
      : w_(world), rank_(rank), tp_rank_(rank % world.tp_), stage_(*world.stages_[rank / world.tp_]) {}

  void all_reduce_sum(Tensor& t) override {
    const int64_t n = t.numel();
    sum_.assign(static_cast<size_t>(n), 0.0f);
    part_.resize(static_cast<size_t>(n));
    stage_.published[tp_rank_] = t.data;
    stage_.barrier.arrive_and_wait();
    for (int r = 0; r < w_.tp_; ++r) {  // rank order: the same sum everywhere
      convert_floats(stage_.published[r], t.dtype, part_.data(), DType::kF32, n);
      for (int64_t i = 0; i < n; ++i) sum_[i] += part_[i];
    }
    stage_.barrier.arrive_and_wait();  // everyone has read every buffer
    convert_floats(sum_.data(), DType::kF32, t.data, t.dtype, n);
  }

  void all_gather_columns(const Tensor& local, Tensor& out) override {
    KILN_CHECK(local.dtype == out.dtype && local.shape.ndim == 2 && out.shape.ndim == 2 && local.dim(0) == out.dim(0),
               "all_gather_columns: local [R, V_local] and out [R, V] of one dtype");
    const int64_t rows = local.dim(0), vl = local.dim(1), v = out.dim(1);
    const size_t es = dtype_size(local.dtype);
    stage_.published[tp_rank_] = local.data;
    stage_.barrier.arrive_and_wait();
    for (int r = 0; r < w_.tp_; ++r) {
      const int64_t c0 = r * vl, cols = std::min(vl, v - c0);
      if (cols <= 0) continue;
      const char* src = static_cast<const char*>(stage_.published[r]);
      for (int64_t i = 0; i < rows; ++i)
        std::memcpy(static_cast<char*>(out.data) + (i * v + c0) * es, src + i * vl * es, static_cast<size_t>(cols) * es);
    }
    stage_.barrier.arrive_and_wait();
  }

  void send_next(const Tensor& t) override {
    KILN_CHECK(rank_ / w_.tp_ + 1 < w_.pp_, "send_next from the last pipeline stage");
    HostCommWorld::Inbox& in = *w_.inboxes_[rank_ + w_.tp_];
    std::vector<char> bytes(static_cast<const char*>(t.data), static_cast<const char*>(t.data) + t.nbytes());
    {
      std::lock_guard<std::mutex> lock(in.mu);
      in.queue.push_back(std::move(bytes));
    }
    in.cv.notify_one();
  }

  void recv_prev(Tensor& t) override {
    KILN_CHECK(rank_ >= w_.tp_, "recv_prev on the first pipeline stage");
    HostCommWorld::Inbox& in = *w_.inboxes_[rank_];
    std::unique_lock<std::mutex> lock(in.mu);
    in.cv.wait(lock, [&] { return !in.queue.empty(); });
    std::vector<char> bytes = std::move(in.queue.front());
    in.queue.pop_front();
    KILN_CHECK(bytes.size() == t.nbytes(), "recv_prev: the previous stage sent a tensor of another size");
    std::memcpy(t.data, bytes.data(), bytes.size());
  }

 private:
  HostCommWorld& w_;
  const int rank_, tp_rank_;
  HostCommWorld::Stage& stage_;
  std::vector<float> sum_, part_;
};

HostCommWorld::HostCommWorld(int tp_size, int pp_size) : tp_(tp_size), pp_(pp_size) {
  for (int s = 0; s < pp_; ++s) stages_.push_back(std::make_unique<Stage>(tp_));
  for (int r = 0; r < tp_ * pp_; ++r) inboxes_.push_back(std::make_unique<Inbox>());
  for (int r = 0; r < tp_ * pp_; ++r) ranks_.push_back(std::make_unique<HostCommunicator>(*this, r));
}

}  // namespace kiln
