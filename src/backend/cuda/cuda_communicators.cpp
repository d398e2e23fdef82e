#include "backend/cuda/cuda_communicators.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <barrier>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <vector>

#ifdef KILN_HAVE_NCCL
#include <dlfcn.h>
#include <nccl.h>
#endif

#include "backend/cuda/comm_kernels.h"
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_check.h"

namespace kiln {

namespace {

bool env_is(const char* name, const char* value) {
  const char* e = std::getenv(name);
  return e && std::string(e) == value;
}

// Puts the calling thread's current device back when it goes (communicators are made and destroyed on the
// caller's thread, which need not be a rank's).
class DeviceGuard {
 public:
  DeviceGuard() {
    if (cudaGetDevice(&saved_) != cudaSuccess) {
      (void)cudaGetLastError();
      saved_ = -1;
    }
  }
  ~DeviceGuard() {
    if (saved_ >= 0) (void)cudaSetDevice(saved_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int saved_ = -1;
};

struct RankInfo {
  CudaBackend* backend = nullptr;
  int device = 0;
  cudaStream_t stream = nullptr;
};

Result<std::vector<RankInfo>> rank_infos(std::span<Backend* const> backends, int tp, int pp) {
  if (tp < 1 || pp < 1 || static_cast<int64_t>(backends.size()) != static_cast<int64_t>(tp) * pp)
    return invalid_argument("cuda communicators: " + std::to_string(backends.size()) + " backends for tp_size " +
                            std::to_string(tp) + " x pp_size " + std::to_string(pp));
  if (tp > cuda::kMaxCommRanks)
    return unimplemented("cuda communicators: tp_size " + std::to_string(tp) + " (at most " +
                         std::to_string(cuda::kMaxCommRanks) + ")");
  std::vector<RankInfo> ranks;
  for (Backend* b : backends) {
    auto* cb = dynamic_cast<CudaBackend*>(b);
    if (!cb) return invalid_argument("cuda communicators: a rank's backend is not the cuda backend");
    ranks.push_back({cb, cb->device(), cb->stream()});
  }
  return ranks;
}

Status cuda_status(cudaError_t e, const std::string& what) {
  if (e == cudaSuccess) return {};
  (void)cudaGetLastError();
  return unavailable("cuda communicators: " + what + ": " + cuda::cuda_error_text(e));
}

// A device buffer of one rank, grown on demand (never during a graph capture).
class DeviceScratch {
 public:
  DeviceScratch() = default;
  DeviceScratch(const DeviceScratch&) = delete;
  DeviceScratch& operator=(const DeviceScratch&) = delete;
  ~DeviceScratch() { release(); }
  void* data() const { return p_; }
  size_t bytes() const { return bytes_; }
  // At least n bytes, on the calling thread's device (the rank's). Waits for `stream` before freeing a smaller
  // buffer: work queued there may still use it.
  Status grow(size_t n, cudaStream_t stream) {
    if (n <= bytes_) return {};
    KILN_RETURN_IF_ERROR(cuda_status(cudaStreamSynchronize(stream), "cudaStreamSynchronize"));
    release();
    const size_t want = std::max(n, 2 * bytes_);
    KILN_RETURN_IF_ERROR(cuda_status(cudaGetDevice(&device_), "cudaGetDevice"));
    void* p = nullptr;
    if (cudaError_t e = cudaMalloc(&p, want); e != cudaSuccess)
      return resource_exhausted("cuda communicators: cannot allocate " + std::to_string(want) +
                                " bytes of scratch: " + cuda::cuda_error_text(e)) ;
    p_ = p;
    bytes_ = want;
    return {};
  }

 private:
  void release() {
    if (!p_) return;
    DeviceGuard guard;
    (void)cudaSetDevice(device_);
    (void)cudaFree(p_);
    p_ = nullptr;
    bytes_ = 0;
  }
  void* p_ = nullptr;
  size_t bytes_ = 0;
  int device_ = 0;
};

void check_gather(const Tensor& local, const Tensor& out, int tp) {
  KILN_CHECK(local.dtype == out.dtype && local.shape.ndim == 2 && out.shape.ndim == 2 && local.dim(0) == out.dim(0),
             "all_gather_columns: local [R, V_local] and out [R, V] of one dtype");
  KILN_CHECK(local.dim(1) * tp >= out.dim(1), "all_gather_columns: the ranks' columns do not cover out");
  KILN_CHECK(dtype_size(local.dtype) == 2 || dtype_size(local.dtype) == 4,
             "all_gather_columns: elements of 2 or 4 bytes");
}

void check_reduce(const Tensor& t) {
  KILN_CHECK(t.dtype == DType::kF32 || t.dtype == DType::kF16 || t.dtype == DType::kBF16,
             std::string("all_reduce_sum: dtype ") + dtype_name(t.dtype) + " (f32, f16 or bf16)");
}

// ---------------------------------------------------------------------------------------------------------------
// Ranks sharing GPUs: host barriers + events, kernels that read the peers' buffers.

class SharedCommunicator;

class SharedWorld {
 public:
  SharedWorld(std::vector<RankInfo> ranks, int tp, int pp) : tp_(tp), pp_(pp), ranks_(std::move(ranks)) {}
  ~SharedWorld();
  Status init();
  Communicator* rank(int r);

 private:
  friend class SharedCommunicator;
  struct Stage {
    explicit Stage(int tp) : barrier(tp), buffers(tp, nullptr), ready(tp, nullptr), read(tp, nullptr) {}
    std::barrier<> barrier;
    std::vector<const void*> buffers;  // [tp] each rank's buffer of the collective in progress
    std::vector<cudaEvent_t> ready;    // [tp] recorded on each rank's stream once its buffer is written
    std::vector<cudaEvent_t> read;     // [tp] recorded on each rank's stream once it has read every buffer
  };
  // A tensor on its way from rank r to rank r + tp: a device buffer of the sender's GPU.
  struct Packet {
    void* buf = nullptr;
    size_t capacity = 0, bytes = 0;
    cudaEvent_t written = nullptr;   // sender's GPU: the copy in is done
    cudaEvent_t consumed = nullptr;  // receiver's GPU: the copy out is done (the buffer may be reused)
  };
  struct Pipe {
    std::mutex mu;
    std::condition_variable cv;
    std::deque<Packet> sent;   // FIFO: sent, not received yet
    std::vector<Packet> idle;  // received: reusable once `consumed` has happened
  };
  int tp_, pp_;
  std::vector<RankInfo> ranks_;
  std::vector<std::unique_ptr<Stage>> stages_;  // [pp]
  std::vector<std::unique_ptr<Pipe>> pipes_;    // [tp * pp] by sending rank
  std::vector<std::unique_ptr<SharedCommunicator>> comms_;
};

class SharedCommunicator final : public Communicator {
 public:
  SharedCommunicator(SharedWorld& w, int rank)
      : w_(w), rank_(rank), tp_rank_(rank % w.tp_), info_(w.ranks_[rank]), stage_(*w.stages_[rank / w.tp_]) {}

  void all_reduce_sum(Tensor& t) override {
    check_reduce(t);
    const size_t bytes = t.nbytes();
    Status s = sum_.grow(bytes, info_.stream);
    KILN_CHECK(s.ok(), s.to_string());
    const cuda::CommBuffers in = publish(t.data);
    cuda::comm_sum(in, w_.tp_, t.numel(), t.dtype, sum_.data(), info_.stream);
    done_reading();
    if (bytes) KILN_CUDA_CHECK(cudaMemcpyAsync(t.data, sum_.data(), bytes, cudaMemcpyDeviceToDevice, info_.stream));
  }

  void all_gather_columns(const Tensor& local, Tensor& out) override {
    check_gather(local, out, w_.tp_);
    const cuda::CommBuffers parts = publish(local.data);
    cuda::comm_gather_columns(parts, w_.tp_, local.dim(0), local.dim(1), out.dim(1), dtype_size(local.dtype),
                              out.data, info_.stream);
    done_reading();
  }

  void send_next(const Tensor& t) override {
    KILN_CHECK(rank_ / w_.tp_ + 1 < w_.pp_, "send_next from the last pipeline stage");
    SharedWorld::Pipe& p = *w_.pipes_[rank_];
    SharedWorld::Packet pk;
    {
      std::lock_guard<std::mutex> lock(p.mu);
      if (!p.idle.empty()) {
        pk = p.idle.back();
        p.idle.pop_back();
      }
    }
    const size_t bytes = t.nbytes();
    if (!pk.written) KILN_CUDA_CHECK(cudaEventCreateWithFlags(&pk.written, cudaEventDisableTiming));
    if (pk.capacity < bytes) {
      if (pk.buf) {  // too small: replaced once the receiver has copied out of it
        if (pk.consumed) KILN_CUDA_CHECK(cudaEventSynchronize(pk.consumed));
        KILN_CUDA_CHECK(cudaFree(pk.buf));
      }
      pk.buf = nullptr;
      KILN_CUDA_CHECK(cudaMalloc(&pk.buf, std::max<size_t>(bytes, 256)));
      pk.capacity = std::max<size_t>(bytes, 256);
    } else if (pk.consumed) {
      KILN_CUDA_CHECK(cudaStreamWaitEvent(info_.stream, pk.consumed, 0));
    }
    if (bytes) KILN_CUDA_CHECK(cudaMemcpyAsync(pk.buf, t.data, bytes, cudaMemcpyDefault, info_.stream));
    KILN_CUDA_CHECK(cudaEventRecord(pk.written, info_.stream));
    pk.bytes = bytes;
    {
      std::lock_guard<std::mutex> lock(p.mu);
      p.sent.push_back(pk);
    }
    p.cv.notify_one();
  }

  void recv_prev(Tensor& t) override {
    KILN_CHECK(rank_ >= w_.tp_, "recv_prev on the first pipeline stage");
    SharedWorld::Pipe& p = *w_.pipes_[rank_ - w_.tp_];
    SharedWorld::Packet pk;
    {
      std::unique_lock<std::mutex> lock(p.mu);
      p.cv.wait(lock, [&] { return !p.sent.empty(); });
      pk = p.sent.front();
      p.sent.pop_front();
    }
    KILN_CHECK(pk.bytes == t.nbytes(), "recv_prev: the previous stage sent a tensor of another size");
    if (!pk.consumed) KILN_CUDA_CHECK(cudaEventCreateWithFlags(&pk.consumed, cudaEventDisableTiming));
    KILN_CUDA_CHECK(cudaStreamWaitEvent(info_.stream, pk.written, 0));
    if (pk.bytes) KILN_CUDA_CHECK(cudaMemcpyAsync(t.data, pk.buf, pk.bytes, cudaMemcpyDefault, info_.stream));
    KILN_CUDA_CHECK(cudaEventRecord(pk.consumed, info_.stream));
    {
      std::lock_guard<std::mutex> lock(p.mu);
      p.idle.push_back(pk);
    }
  }

 private:
  // Publishes this rank's buffer (written by the work queued so far on its stream), meets the group, and makes
  // this rank's stream wait for every peer's buffer. Returns the group's buffers in tp-rank order.
  cuda::CommBuffers publish(const void* mine) {
    stage_.buffers[tp_rank_] = mine;
    KILN_CUDA_CHECK(cudaEventRecord(stage_.ready[tp_rank_], info_.stream));
    stage_.barrier.arrive_and_wait();
    cuda::CommBuffers in;
    for (int r = 0; r < w_.tp_; ++r) {
      in.p[r] = stage_.buffers[r];
      if (r != tp_rank_) KILN_CUDA_CHECK(cudaStreamWaitEvent(info_.stream, stage_.ready[r], 0));
    }
    return in;
  }
  // After this rank's kernel that reads the group's buffers: nobody goes on to overwrite its buffer (or publish
  // the next one) before every peer has read it.
  void done_reading() {
    KILN_CUDA_CHECK(cudaEventRecord(stage_.read[tp_rank_], info_.stream));
    stage_.barrier.arrive_and_wait();
    for (int r = 0; r < w_.tp_; ++r)
      if (r != tp_rank_) KILN_CUDA_CHECK(cudaStreamWaitEvent(info_.stream, stage_.read[r], 0));
  }

  SharedWorld& w_;
  const int rank_, tp_rank_;
  const RankInfo info_;
  SharedWorld::Stage& stage_;
  DeviceScratch sum_;  // [t.numel()] the all-reduce's sum before it is copied back
};

Status SharedWorld::init() {
  DeviceGuard guard;
  // Kernels read the buffers of the other ranks of their stage, copies cross stages: peers on other GPUs need
  // peer access.
  for (size_t a = 0; a < ranks_.size(); ++a)
    for (size_t b = 0; b < ranks_.size(); ++b) {
      const int da = ranks_[a].device, db = ranks_[b].device;
      if (da == db) continue;
      int can = 0;
      KILN_RETURN_IF_ERROR(cuda_status(cudaDeviceCanAccessPeer(&can, da, db), "cudaDeviceCanAccessPeer"));
      if (!can)
        return unimplemented("cuda communicators: ranks share GPUs (KILN_SHARED_GPU_RANKS) but GPU " +
                             std::to_string(da) + " cannot access GPU " + std::to_string(db) +
                             "; give every rank its own GPU (NCCL) or run on one GPU");
      KILN_RETURN_IF_ERROR(cuda_status(cudaSetDevice(da), "cudaSetDevice"));
      const cudaError_t e = cudaDeviceEnablePeerAccess(db, 0);
      if (e == cudaErrorPeerAccessAlreadyEnabled) (void)cudaGetLastError();
      else KILN_RETURN_IF_ERROR(cuda_status(e, "cudaDeviceEnablePeerAccess"));
    }
  for (int s = 0; s < pp_; ++s) {
    auto st = std::make_unique<Stage>(tp_);
    for (int r = 0; r < tp_; ++r) {
      // Events are recorded on the rank's stream: made on its GPU.
      KILN_RETURN_IF_ERROR(cuda_status(cudaSetDevice(ranks_[s * tp_ + r].device), "cudaSetDevice"));
      KILN_RETURN_IF_ERROR(
          cuda_status(cudaEventCreateWithFlags(&st->ready[r], cudaEventDisableTiming), "cudaEventCreate"));
      KILN_RETURN_IF_ERROR(
          cuda_status(cudaEventCreateWithFlags(&st->read[r], cudaEventDisableTiming), "cudaEventCreate"));
    }
    stages_.push_back(std::move(st));
  }
  for (size_t r = 0; r < ranks_.size(); ++r) pipes_.push_back(std::make_unique<Pipe>());
  for (size_t r = 0; r < ranks_.size(); ++r)
    comms_.push_back(std::make_unique<SharedCommunicator>(*this, static_cast<int>(r)));
  return {};
}

Communicator* SharedWorld::rank(int r) { return comms_[r].get(); }

SharedWorld::~SharedWorld() {
  DeviceGuard guard;
  // Work still queued may use the buffers and events: let every GPU finish first.
  for (const RankInfo& r : ranks_)
    if (cudaSetDevice(r.device) == cudaSuccess) (void)cudaStreamSynchronize(r.stream);
  comms_.clear();
  for (size_t r = 0; r < pipes_.size(); ++r) {
    Pipe& p = *pipes_[r];
    std::vector<Packet> all(p.sent.begin(), p.sent.end());
    all.insert(all.end(), p.idle.begin(), p.idle.end());
    for (Packet& pk : all) {
      (void)cudaSetDevice(ranks_[r].device);
      if (pk.buf) (void)cudaFree(pk.buf);
      if (pk.written) (void)cudaEventDestroy(pk.written);
      if (pk.consumed) (void)cudaEventDestroy(pk.consumed);
    }
  }
  for (auto& st : stages_)
    for (int r = 0; r < tp_; ++r) {
      if (st->ready[r]) (void)cudaEventDestroy(st->ready[r]);
      if (st->read[r]) (void)cudaEventDestroy(st->read[r]);
    }
  (void)cudaGetLastError();
}

Result<Communicators> make_shared_communicators(std::vector<RankInfo> ranks, int tp, int pp) {
  auto world = std::make_shared<SharedWorld>(ranks, tp, pp);
  KILN_RETURN_IF_ERROR(world->init());
  for (const RankInfo& r : ranks) r.backend->disable_graphs();  // host barriers cannot be recorded
  Communicators c;
  for (int r = 0; r < tp * pp; ++r) c.ranks.push_back(world->rank(r));
  c.owner = world;
  return c;
}

// ---------------------------------------------------------------------------------------------------------------
// Every rank on its own GPU: NCCL.

#ifdef KILN_HAVE_NCCL

// NCCL's entry points, opened at run time (no link-time dependency: a kiln built with NCCL starts without it).
struct NcclApi {
  decltype(&ncclGetVersion) get_version = nullptr;
  decltype(&ncclGetErrorString) error_string = nullptr;
  decltype(&ncclCommInitAll) comm_init_all = nullptr;
  decltype(&ncclCommDestroy) comm_destroy = nullptr;
  decltype(&ncclAllReduce) all_reduce = nullptr;
  decltype(&ncclAllGather) all_gather = nullptr;
  decltype(&ncclSend) send = nullptr;
  decltype(&ncclRecv) recv = nullptr;
  std::string error;  // why NCCL cannot be used ("" when it can)
  int version = 0;
};

const NcclApi& nccl_api() {
  static const NcclApi api = [] {
    NcclApi a;
    std::vector<std::string> candidates;
    if (const char* e = std::getenv("KILN_NCCL_LIBRARY"); e && *e) candidates.push_back(e);
    candidates.push_back("libnccl.so.2");
#ifdef KILN_NCCL_BUILD_LIBRARY
    candidates.push_back(KILN_NCCL_BUILD_LIBRARY);  // where the build found it
#endif
    void* h = nullptr;
    std::string tried;
    for (const std::string& c : candidates) {
      h = dlopen(c.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (h) break;
      const char* why = dlerror();
      tried += (tried.empty() ? "" : "; ") + std::string(why ? why : c);
    }
    if (!h) {
      a.error = "cannot open the NCCL library (" + tried +
                "); install NCCL (libnccl.so.2 on the library path) or set KILN_NCCL_LIBRARY to the file";
      return a;
    }
    auto sym = [&](auto& fn, const char* name) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(h, name));
      if (!fn && a.error.empty()) a.error = std::string("the NCCL library has no ") + name;
    };
    sym(a.get_version, "ncclGetVersion");
    sym(a.error_string, "ncclGetErrorString");
    sym(a.comm_init_all, "ncclCommInitAll");
    sym(a.comm_destroy, "ncclCommDestroy");
    sym(a.all_reduce, "ncclAllReduce");
    sym(a.all_gather, "ncclAllGather");
    sym(a.send, "ncclSend");
    sym(a.recv, "ncclRecv");
    if (a.error.empty() && a.get_version(&a.version) != ncclSuccess) a.error = "ncclGetVersion failed";
    if (a.error.empty() && a.version < 20900)  // send/recv, bf16 and graph capture need a recent NCCL
      a.error = "NCCL " + std::to_string(a.version) + " is too old (2.9 or newer)";
    return a;
  }();
  return api;
}

std::string nccl_text(ncclResult_t r) {
  const char* s = nccl_api().error_string ? nccl_api().error_string(r) : nullptr;
  return "ncclResult " + std::to_string(static_cast<int>(r)) + (s ? std::string(": ") + s : "");
}

#define KILN_NCCL_CHECK(call)                                                                         \
  do {                                                                                                \
    const ncclResult_t kiln_nccl_r_ = (call);                                                         \
    KILN_CHECK(kiln_nccl_r_ == ncclSuccess, std::string(#call) + " failed: " + nccl_text(kiln_nccl_r_)); \
  } while (0)

ncclDataType_t nccl_float_type(DType t) {
  switch (t) {
    case DType::kF32: return ncclFloat;
    case DType::kF16: return ncclHalf;
    default: return ncclBfloat16;
  }
}

class NcclWorld;

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(const RankInfo& info, int rank, int tp, ncclComm_t tp_comm, ncclComm_t world_comm)
      : info_(info), rank_(rank), tp_(tp), tp_comm_(tp_comm), world_comm_(world_comm) {}

  // The all-gather's [tp, R, V_local] landing place; called outside forwards (no capture), on the rank's thread.
  Status reserve(size_t local_bytes) override {
    return gather_.grow(static_cast<size_t>(tp_) * local_bytes, info_.stream);
  }

  void all_reduce_sum(Tensor& t) override {
    check_reduce(t);
    const NcclApi& api = nccl_api();
    KILN_NCCL_CHECK(api.all_reduce(t.data, t.data, static_cast<size_t>(t.numel()), nccl_float_type(t.dtype), ncclSum,
                                   tp_comm_, info_.stream));
  }

  void all_gather_columns(const Tensor& local, Tensor& out) override {
    check_gather(local, out, tp_);
    const size_t bytes = local.nbytes();
    if (gather_.bytes() < static_cast<size_t>(tp_) * bytes) {
      cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
      KILN_CUDA_CHECK(cudaStreamIsCapturing(info_.stream, &cs));
      KILN_CHECK(cs == cudaStreamCaptureStatusNone,
                 "all_gather_columns: the scratch would grow during a graph capture (reserve it first)");
      Status s = reserve(bytes);
      KILN_CHECK(s.ok(), s.to_string());
    }
    KILN_NCCL_CHECK(nccl_api().all_gather(local.data, gather_.data(), bytes, ncclUint8, tp_comm_, info_.stream));
    cuda::CommBuffers parts;
    for (int r = 0; r < tp_; ++r) parts.p[r] = static_cast<const char*>(gather_.data()) + r * bytes;
    cuda::comm_gather_columns(parts, tp_, local.dim(0), local.dim(1), out.dim(1), dtype_size(local.dtype), out.data,
                              info_.stream);
  }

  void send_next(const Tensor& t) override {
    KILN_CHECK(world_comm_, "send_next without pipeline stages");
    KILN_NCCL_CHECK(nccl_api().send(t.data, t.nbytes(), ncclUint8, rank_ + tp_, world_comm_, info_.stream));
  }

  void recv_prev(Tensor& t) override {
    KILN_CHECK(world_comm_ && rank_ >= tp_, "recv_prev on the first pipeline stage");
    KILN_NCCL_CHECK(nccl_api().recv(t.data, t.nbytes(), ncclUint8, rank_ - tp_, world_comm_, info_.stream));
  }

 private:
  const RankInfo info_;
  const int rank_, tp_;
  ncclComm_t tp_comm_, world_comm_;
  DeviceScratch gather_;
};

class NcclWorld {
 public:
  NcclWorld(std::vector<RankInfo> ranks, int tp, int pp) : ranks_(std::move(ranks)), tp_(tp), pp_(pp) {}
  ~NcclWorld() {
    DeviceGuard guard;
    comms_.clear();
    const NcclApi& api = nccl_api();
    for (size_t r = 0; r < ranks_.size(); ++r) {
      (void)cudaSetDevice(ranks_[r].device);
      (void)cudaStreamSynchronize(ranks_[r].stream);
      if (r < tp_comms_.size() && tp_comms_[r]) (void)api.comm_destroy(tp_comms_[r]);
      if (r < world_comms_.size() && world_comms_[r]) (void)api.comm_destroy(world_comms_[r]);
    }
  }

  Status init() {
    const NcclApi& api = nccl_api();
    if (!api.error.empty()) return unavailable("cuda communicators: " + api.error);
    DeviceGuard guard;  // ncclCommInitAll sets devices on this thread
    const int world = tp_ * pp_;
    std::vector<int> devices;
    for (const RankInfo& r : ranks_) devices.push_back(r.device);
    tp_comms_.assign(world, nullptr);
    for (int s = 0; s < pp_; ++s) {  // a communicator per stage's tp group (tp rank i is its rank i)
      if (ncclResult_t e = api.comm_init_all(&tp_comms_[s * tp_], tp_, &devices[s * tp_]); e != ncclSuccess)
        return unavailable("cuda communicators: ncclCommInitAll for stage " + std::to_string(s) + "'s " +
                           std::to_string(tp_) + " GPUs: " + nccl_text(e));
    }
    if (pp_ > 1) {  // one over every rank for the point-to-point sends between stages
      world_comms_.assign(world, nullptr);
      if (ncclResult_t e = api.comm_init_all(world_comms_.data(), world, devices.data()); e != ncclSuccess)
        return unavailable("cuda communicators: ncclCommInitAll for " + std::to_string(world) +
                           " GPUs: " + nccl_text(e));
    }
    for (int r = 0; r < world; ++r)
      comms_.push_back(std::make_unique<NcclCommunicator>(ranks_[r], r, tp_, tp_comms_[r],
                                                          pp_ > 1 ? world_comms_[r] : nullptr));
    return {};
  }
  Communicator* rank(int r) { return comms_[r].get(); }

 private:
  std::vector<RankInfo> ranks_;
  int tp_, pp_;
  std::vector<ncclComm_t> tp_comms_;     // [world] rank r's communicator within its stage
  std::vector<ncclComm_t> world_comms_;  // [world] over every rank (pp > 1)
  std::vector<std::unique_ptr<NcclCommunicator>> comms_;
};

#endif  // KILN_HAVE_NCCL

Result<Communicators> nccl_communicators(std::vector<RankInfo> ranks, int tp, int pp) {
#ifdef KILN_HAVE_NCCL
  if (!std::getenv("NCCL_NVLS_ENABLE")) setenv("NCCL_NVLS_ENABLE", "0", 0);  // no NVLink multicast
  auto world = std::make_shared<NcclWorld>(ranks, tp, pp);
  KILN_RETURN_IF_ERROR(world->init());
  // NCCL's kernels can be captured into the decode graphs, but that is not verified for several GPUs driven
  // by threads of one process: launched one by one unless KILN_NCCL_GRAPHS=1.
  if (!env_is("KILN_NCCL_GRAPHS", "1"))
    for (const RankInfo& r : ranks) r.backend->disable_graphs();
  Communicators c;
  for (int r = 0; r < tp * pp; ++r) c.ranks.push_back(world->rank(r));
  c.owner = world;
  return c;
#else
  (void)ranks;
  (void)tp;
  (void)pp;
  return unimplemented(
      "this kiln was built without NCCL (nccl.h was not found at build time), which a tensor/pipeline-parallel "
      "engine needs between GPUs; rebuild with NCCL installed (NCCL_HOME names an install), or run every rank on "
      "one GPU for testing (KILN_SHARED_GPU_RANKS=1)");
#endif
}

}  // namespace

std::string nccl_unavailable_reason() {
#ifdef KILN_HAVE_NCCL
  return nccl_api().error;
#else
  return "this kiln was built without NCCL (nccl.h was not found at build time)";
#endif
}

Result<Communicators> make_nccl_communicators(std::span<Backend* const> backends, int tp_size, int pp_size) {
  KILN_ASSIGN_OR_RETURN(std::vector<RankInfo> ranks, rank_infos(backends, tp_size, pp_size));
  return nccl_communicators(std::move(ranks), tp_size, pp_size);
}

Result<Communicators> make_cuda_communicators(std::span<Backend* const> backends, int tp_size, int pp_size) {
  KILN_ASSIGN_OR_RETURN(std::vector<RankInfo> ranks, rank_infos(backends, tp_size, pp_size));
  bool shared = ranks.size() == 1;  // nothing to send anywhere: no NCCL needed
  for (size_t a = 0; a < ranks.size(); ++a)
    for (size_t b = a + 1; b < ranks.size(); ++b) shared = shared || ranks[a].device == ranks[b].device;
  if (shared) return make_shared_communicators(std::move(ranks), tp_size, pp_size);
  return nccl_communicators(std::move(ranks), tp_size, pp_size);
}

}  // namespace kiln
