#include "backend/cuda/cuda_backend.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/gemv.h"
#include "backend/cuda/pdl.cuh"
#include "core/checked_math.h"

namespace kiln {

namespace cuda {
bool pdl_enabled() {
  static const bool enabled = [] {
    const char* e = std::getenv("KILN_CUDA_PDL");  // "0": ordinary launches, to compare
    if (e && std::string(e) == "0") return false;
    int device = 0, major = 0;
    if (cudaGetDevice(&device) != cudaSuccess) return false;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) return false;
    return major >= 9;
  }();
  return enabled;
}
}  // namespace cuda

namespace {
std::string gib(uint64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f GiB", static_cast<double>(bytes) / (1ull << 30));
  return buf;
}
}  // namespace

Result<std::unique_ptr<CudaBackend>> CudaBackend::create(int device) {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0)
    return unavailable("cuda backend: no CUDA device (" + (e != cudaSuccess ? cuda::cuda_error_text(e) : "0 devices") +
                       "); build the engine with --backend cpu to run on the CPU");
  if (device < 0 || device >= count)
    return invalid_argument("cuda backend: device " + std::to_string(device) + " of " + std::to_string(count));
  if (cudaError_t s = cudaSetDevice(device); s != cudaSuccess)
    return unavailable("cuda backend: cudaSetDevice(" + std::to_string(device) + "): " + cuda::cuda_error_text(s));
  cudaStream_t stream = nullptr;
  if (cudaError_t s = cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking); s != cudaSuccess)
    return unavailable("cuda backend: cannot create a stream: " + cuda::cuda_error_text(s));
  return std::unique_ptr<CudaBackend>(new CudaBackend(device, stream));
}

CudaBackend::CudaBackend(int device, cudaStream_t stream)
    : device_(device), stream_(stream), gemm_(std::make_unique<cuda::LtGemm>()) {
  const char* g = std::getenv("KILN_CUDA_GRAPHS");  // "0": every forward launches its kernels one by one
  graphs_enabled_ = !(g && std::string(g) == "0");
  const char* v = std::getenv("KILN_CUDA_GEMV");  // "0": decode linears through cuBLASLt too
  gemv_enabled_ = !(v && std::string(v) == "0");
  const char* f = std::getenv("KILN_CUDA_FUSION");  // "0": decode blocks as separate ops
  fusion_enabled_ = !(f && std::string(f) == "0");
  const char* rf = std::getenv("KILN_CUDA_ROPE_FUSION");  // "0": decode RoPE / KV write as its own kernel
  rope_fusion_enabled_ = !(rf && std::string(rf) == "0");
  const char* t = std::getenv("KILN_CUDA_TIMING");
  timing_ = t && std::string(t) == "1";
}

CudaBackend::~CudaBackend() {
  cudaStreamSynchronize(stream_);
  if (timing_) {
    collect_timing(true);
    graphed_times_.print("graphed decode steps");
    other_times_.print("other forwards");
  }
  for (cudaEvent_t e : fences_) cudaEventDestroy(e);
  drop_graphs();
  gemm_.reset();
  cudaStreamDestroy(stream_);
}

uint64_t CudaBackend::free_memory() const {
  size_t free = 0, total = 0;
  KILN_CUDA_CHECK(cudaMemGetInfo(&free, &total));
  return free;
}

std::string CudaBackend::device_description() const {
  cudaDeviceProp p{};
  KILN_CUDA_CHECK(cudaGetDeviceProperties(&p, device_));
  return std::string(p.name) + " (sm_" + std::to_string(p.major) + std::to_string(p.minor) + ", " +
         std::to_string(p.multiProcessorCount) + " SMs, " + gib(p.totalGlobalMem) + ")";
}

Result<DeviceBuffer> CudaBackend::allocate(size_t bytes) {
  drop_graphs();  // a new buffer may replace one that a recorded graph uses
  void* p = nullptr;
  if (cudaError_t e = cudaMalloc(&p, bytes ? bytes : 1); e != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free error state of a failed allocation
    return resource_exhausted("cuda backend: cannot allocate " + gib(bytes) + " of device memory (" +
                              gib(free_memory()) + " free): " + cuda::cuda_error_text(e));
  }
  return DeviceBuffer{std::shared_ptr<void>(p, [](void* q) { cudaFree(q); }), bytes};
}

// Through pinned staging (no wait for the stream, so the host can prepare a forward while one runs); very large
// copies straight from pageable memory (cudaMemcpyAsync returns once `host` is staged: the caller may reuse it).
void CudaBackend::upload(const void* host, const Tensor& dst) {
  const size_t n = dst.nbytes();
  if (n == 0) return;
  if (n > kMaxStagedUpload) {
    KILN_CUDA_CHECK(cudaMemcpyAsync(dst.data, host, n, cudaMemcpyHostToDevice, stream_));
    return;
  }
  void* p = staging_.reserve(n, stream_);
  std::memcpy(p, host, n);
  KILN_CUDA_CHECK(cudaMemcpyAsync(dst.data, p, n, cudaMemcpyHostToDevice, stream_));
  staging_.copied(stream_);
}

std::shared_ptr<void> CudaBackend::allocate_host(size_t bytes) {
  void* p = nullptr;
  KILN_CUDA_CHECK(cudaMallocHost(&p, bytes ? bytes : 1));
  return std::shared_ptr<void>(p, [](void* q) { cudaFreeHost(q); });
}

void CudaBackend::download_async(const Tensor& src, void* host) {
  if (src.nbytes() > 0) KILN_CUDA_CHECK(cudaMemcpyAsync(host, src.data, src.nbytes(), cudaMemcpyDeviceToHost, stream_));
}

// Fence ids count up; fences_ holds the events of the last kFenceRing ids (older ones have long completed:
// a caller waits for a fence within a forward or two of recording it).
uint64_t CudaBackend::record_fence() {
  if (fences_.empty()) {
    fences_.resize(kFenceRing);
    for (cudaEvent_t& e : fences_) KILN_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  }
  const uint64_t id = ++last_fence_;
  KILN_CUDA_CHECK(cudaEventRecord(fences_[id % kFenceRing], stream_));
  return id;
}

void CudaBackend::wait_fence(uint64_t fence) {
  if (fence == 0) return;
  KILN_CHECK(fence <= last_fence_ && last_fence_ - fence < kFenceRing, "cuda backend: waiting for a stale fence");
  KILN_CUDA_CHECK(cudaEventSynchronize(fences_[fence % kFenceRing]));
}

void CudaBackend::scatter_tokens(const Tensor& src, const Tensor& pairs, Tensor& ids) {
  cuda::scatter_tokens(src.as<int32_t>(), pairs.as<int32_t>(), ids.numel(), ids.as<int32_t>(), stream_);
}

void CudaBackend::download(const Tensor& src, void* host) {
  if (src.nbytes() == 0) return;
  KILN_CUDA_CHECK(cudaMemcpyAsync(host, src.data, src.nbytes(), cudaMemcpyDeviceToHost, stream_));
  KILN_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

Result<Tensor> CudaBackend::adopt_weight(const Tensor& host, std::shared_ptr<void> /*keep_alive*/) {
  KILN_ASSIGN_OR_RETURN(DeviceBuffer buf, allocate(host.nbytes()));
  if (host.nbytes() > 0) KILN_CUDA_CHECK(cudaMemcpy(buf.mem.get(), host.data, host.nbytes(), cudaMemcpyHostToDevice));
  weights_.push_back(buf);  // weights live as long as the backend (Tensor is a view)
  return Tensor{buf.mem.get(), host.dtype, host.shape};
}

Result<std::unique_ptr<KvStorage>> CudaBackend::create_kv_storage(const KvCacheSpec& spec) {
  if (spec.dtype != DType::kF32 && spec.dtype != DType::kF16 && spec.dtype != DType::kBF16)
    return invalid_argument(std::string("cuda backend: KV cache dtype ") + dtype_name(spec.dtype) + " is not supported");
  return Backend::create_kv_storage(spec);
}

void CudaBackend::zero_bytes(void* dst, size_t bytes) {
  if (bytes) KILN_CUDA_CHECK(cudaMemsetAsync(dst, 0, bytes, stream_));
}
void CudaBackend::copy_bytes(void* dst, const void* src, size_t bytes) {
  if (bytes) KILN_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_));
}

void* CudaBackend::scratch(DeviceBuffer& buf, size_t bytes) {
  if (buf.bytes < bytes) {
    KILN_CHECK(!capturing_, "cuda backend: a scratch buffer grows during a graph capture");
    KILN_CUDA_CHECK(cudaStreamSynchronize(stream_));  // the old buffer may still be read by queued work
    auto grown = allocate(std::max(bytes, buf.bytes * 2));
    KILN_CHECK(grown.ok(), grown.status().to_string());
    buf = std::move(*grown);
    // Zeroed once: the attention's split-combine arrival counters live at the start of its workspace and
    // must start at 0 (each kernel leaves them at 0).
    KILN_CUDA_CHECK(cudaMemsetAsync(buf.mem.get(), 0, buf.bytes, stream_));
  }
  return buf.mem.get();
}

// One int32 array holds the forward's inputs (padded to 64 bytes: their place depends on their size alone) and
// then the layout: token_seq [T], token_pos [T], seq_first_token [S], seq_num_new [S], seq_context_len [S],
// block_tables [S, max_blocks], prefill sequences, decode tokens; staged in pinned memory, copied with one memcpy.
Result<Tensor> CudaBackend::begin_forward(const AttentionBatch& batch, int32_t num_logit_rows, ForwardOutput output,
                                          std::span<const int32_t> inputs) {
  const int32_t T = batch.num_tokens, S = static_cast<int32_t>(batch.seqs.size());
  int32_t max_blocks = 1, max_ctx = 0, max_new = 0;
  for (const SequenceView& s : batch.seqs) {
    max_blocks = std::max(max_blocks, static_cast<int32_t>(s.block_table.size()));
    max_ctx = std::max(max_ctx, s.context_len);
    max_new = std::max(max_new, s.num_new);
  }
  // A decode step (one new token per sequence) gets the fixed layout of its bucket, and a graph key.
  graph_key_ = 0;
  if (graphs_enabled_ && max_new == 1 && T <= kMaxGraphTokens && attention_shape_) {
    int32_t bucket = 1;
    while (bucket < max_blocks) bucket *= 2;
    max_blocks = bucket;
    max_ctx = bucket * batch.block_size;
    graph_key_ = (static_cast<uint64_t>(T) << 40) | (static_cast<uint64_t>(num_logit_rows) << 20) |
                 (static_cast<uint64_t>(output) << 18) | static_cast<uint64_t>(bucket);
  }
  // Mixed batches: which sequences the prefill kernel takes, which tokens the decode kernel takes.
  int32_t num_prefill = 0, num_decode_tokens = 0, max_prefill_new = 0;
  for (const SequenceView& s : batch.seqs) {
    if (s.num_new > cuda::kAttentionDecodeMaxNew) {
      ++num_prefill;
      max_prefill_new = std::max(max_prefill_new, s.num_new);
    } else {
      num_decode_tokens += s.num_new;
    }
  }
  const size_t in_words = (inputs.size() + 15) / 16 * 16;
  const size_t n = in_words + 2 * static_cast<size_t>(T) + 3 * static_cast<size_t>(S) + static_cast<size_t>(S) * max_blocks +
                   static_cast<size_t>(num_prefill) + static_cast<size_t>(num_decode_tokens);
  const size_t bytes = n * sizeof(int32_t);
  int32_t* const staged = static_cast<int32_t*>(staging_.reserve(bytes, stream_));
  std::copy(inputs.begin(), inputs.end(), staged);
  int32_t* h = staged + in_words;
  int32_t *token_seq = h, *token_pos = h + T, *first = h + 2 * T, *num_new = first + S, *ctx = num_new + S,
          *tables = ctx + S, *prefill_seqs = tables + static_cast<size_t>(S) * max_blocks,
          *decode_tokens = prefill_seqs + num_prefill;
  int32_t np = 0, nd = 0;
  std::fill(token_seq, token_seq + 2 * static_cast<size_t>(T), -1);
  for (int32_t s = 0; s < S; ++s) {
    const SequenceView& v = batch.seqs[s];
    first[s] = v.first_token;
    num_new[s] = v.num_new;
    ctx[s] = v.context_len;
    for (int32_t i = 0; i < v.num_new; ++i) {
      token_seq[v.first_token + i] = s;
      token_pos[v.first_token + i] = v.context_len - v.num_new + i;
    }
    if (v.num_new > cuda::kAttentionDecodeMaxNew) prefill_seqs[np++] = s;
    else
      for (int32_t i = 0; i < v.num_new; ++i) decode_tokens[nd++] = v.first_token + i;
    std::copy(v.block_table.begin(), v.block_table.end(), tables + static_cast<size_t>(s) * max_blocks);
    std::fill(tables + static_cast<size_t>(s) * max_blocks + v.block_table.size(),
              tables + static_cast<size_t>(s + 1) * max_blocks, 0);
  }
  for (int32_t t = 0; t < T; ++t)
    if (token_seq[t] < 0) return invalid_argument("forward: token " + std::to_string(t) + " belongs to no sequence");
  int32_t* const dev = static_cast<int32_t*>(scratch(batch_dev_, bytes));
  KILN_CUDA_CHECK(cudaMemcpyAsync(dev, staged, bytes, cudaMemcpyHostToDevice, stream_));
  staging_.copied(stream_);
  int32_t* d = dev + in_words;
  batch_ = cuda::DeviceBatch{T,         S,         batch.block_size, max_blocks, max_ctx,   max_new,
                             d,         d + T,     d + 2 * T,        d + 2 * T + S, d + 2 * T + 2 * S,
                             d + 2 * T + 3 * S};
  const int32_t* lists = d + (prefill_seqs - h);
  batch_.prefill_seqs = lists;
  batch_.decode_tokens = lists + num_prefill;
  batch_.num_prefill_seqs = num_prefill;
  batch_.max_prefill_new = max_prefill_new;
  batch_.num_decode_tokens = num_decode_tokens;
  batch_src_ = &batch;
  if (graph_key_ != 0) {
    // The capture must not allocate: size the attention's workspace for this shape now.
    const size_t ws = cuda::attention_workspace_bytes(*attention_shape_, T, max_ctx);
    if (ws) scratch(attn_workspace_, ws);
  }
  return Tensor{dev, DType::kI32, {static_cast<int64_t>(inputs.size())}};
}

// Pending event pairs are read once they have completed (or, with `wait`, after waiting for them): timing
// never makes the host wait for the GPU between forwards.
void CudaBackend::collect_timing(bool wait) {
  while (!timed_.empty()) {
    TimedForward& f = timed_.front();
    if (wait) KILN_CUDA_CHECK(cudaEventSynchronize(f.end));
    else if (cudaEventQuery(f.end) != cudaSuccess) return;
    float ms = 0;
    KILN_CUDA_CHECK(cudaEventElapsedTime(&ms, f.begin, f.end));
    ForwardTimes& t = f.graphed ? graphed_times_ : other_times_;
    t.gpu_ms.push_back(ms);
    t.host_ms.push_back(f.host_ms);
    cudaEventDestroy(f.begin);
    cudaEventDestroy(f.end);
    timed_.pop_front();
  }
}

void CudaBackend::ForwardTimes::print(const char* name) const {
  if (gpu_ms.empty()) return;
  const auto stats = [](std::vector<float> v) {  // median, min, max
    std::sort(v.begin(), v.end());
    return std::array<float, 3>{v[v.size() / 2], v.front(), v.back()};
  };
  const auto g = stats(gpu_ms), h = stats(host_ms);
  std::fprintf(stderr,
               "kiln cuda timing: %s: %zu, GPU time median %.3f ms (min %.3f, max %.3f), host enqueue median %.3f ms "
               "(min %.3f, max %.3f)\n",
               name, gpu_ms.size(), g[0], g[1], g[2], h[0], h[1], h[2]);
}

void CudaBackend::run_forward_ops(const std::function<void()>& ops) {
  if (!timing_) {
    run_forward_ops_untimed(ops);
    return;
  }
  collect_timing(false);
  TimedForward f;
  f.graphed = graph_key_ != 0;
  KILN_CUDA_CHECK(cudaEventCreate(&f.begin));
  KILN_CUDA_CHECK(cudaEventCreate(&f.end));
  KILN_CUDA_CHECK(cudaEventRecord(f.begin, stream_));
  const auto host_begin = std::chrono::steady_clock::now();
  run_forward_ops_untimed(ops);
  f.host_ms = std::chrono::duration<float, std::milli>(std::chrono::steady_clock::now() - host_begin).count();
  KILN_CUDA_CHECK(cudaEventRecord(f.end, stream_));
  timed_.push_back(f);
}

void CudaBackend::run_forward_ops_untimed(const std::function<void()>& ops) {
  if (graph_key_ == 0) {
    ops();
    return;
  }
  auto it = graphs_.find(graph_key_);
  if (it == graphs_.end()) {
    cudaGraph_t graph = nullptr;
    // Relaxed: a first use inside the capture may allocate (cuBLASLt's bias copy), which is safe here.
    KILN_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeRelaxed));
    capturing_ = true;
    ops();
    capturing_ = false;
    KILN_CUDA_CHECK(cudaStreamEndCapture(stream_, &graph));
    cudaGraphExec_t exec = nullptr;
    KILN_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    KILN_CUDA_CHECK(cudaGraphDestroy(graph));
    it = graphs_.emplace(graph_key_, exec).first;
  }
  KILN_CUDA_CHECK(cudaGraphLaunch(it->second, stream_));
}

void CudaBackend::drop_graphs() {
  KILN_CHECK(!capturing_, "cuda backend: an allocation during a graph capture");
  for (auto& [key, exec] : graphs_) cudaGraphExecDestroy(exec);
  graphs_.clear();
}

cuda::DeviceKv CudaBackend::device_kv(const KvLayer& kv) const {
  return cuda::DeviceKv{kv.k.data, kv.v.data, kv.k.dtype, static_cast<int32_t>(kv.k.dim(0)),
                        static_cast<int32_t>(kv.k.dim(1)), static_cast<int32_t>(kv.k.dim(3))};
}

void CudaBackend::embedding(const EmbeddingWeight& table, const Tensor& ids, Tensor& out) {
  KILN_CHECK(!table.quant, "cuda backend: quantized embedding tables are refused at build");
  cuda::embedding(table.data.data, table.data.dtype, table.vocab_start, table.vocab, ids.as<int32_t>(), ids.numel(),
                  table.hidden, out.data, out.dtype, stream_);
}

void CudaBackend::rmsnorm(const Tensor& x, const Tensor& weight, float eps, Tensor& out) {
  const int64_t dim = weight.numel();
  cuda::rmsnorm(x.data, weight.as<float>(), eps, out.data, x.numel() / dim, dim, x.dtype, stream_);
}

void CudaBackend::add_rmsnorm(Tensor& residual, const Tensor& delta, const Tensor& weight, float eps, Tensor& out) {
  const int64_t dim = weight.numel();
  cuda::add_rmsnorm(residual.data, delta.data, weight.as<float>(), eps, out.data, residual.numel() / dim, dim,
                    residual.dtype, stream_);
}

void CudaBackend::linear(const Tensor& x, const LinearWeight& w, const Tensor* bias, Tensor& y) {
  KILN_CHECK(!w.quant, "cuda backend: quantized linear weights are refused at build");
  const int64_t m = x.numel() / w.in_features;
  const float* b = bias ? bias->as<float>() : nullptr;
  if (gemv_enabled_ && cuda::gemv_supported(x.dtype, w.dtype, y.dtype, m, w.out_features, w.in_features, x.data,
                                            w.data.data)) {
    cuda::gemv(x.data, x.dtype, m, w.data.data, w.out_features, w.in_features, b, y.data, y.dtype, stream_);
    return;
  }
  gemm_->run(x.data, x.dtype, m, w.data.data, w.dtype, w.out_features, w.in_features, b, y.data, y.dtype, stream_);
}

bool CudaBackend::fuses_block_linears(int64_t num_tokens) const {
  return fusion_enabled_ && gemv_enabled_ && num_tokens <= cuda::kGemvMaxRows;
}

bool CudaBackend::fused_gemv(const Tensor& x, int64_t m, const LinearWeight& w, const Tensor* bias, Tensor& y,
                             const cuda::GemvFusion& fusion) {
  if (w.quant || !cuda::gemv_supported(x.dtype, w.dtype, y.dtype, m, w.out_features, w.in_features, x.data,
                                       w.data.data, fusion))
    return false;
  cuda::gemv(x.data, x.dtype, m, w.data.data, w.out_features, w.in_features, bias ? bias->as<float>() : nullptr,
             y.data, y.dtype, stream_, fusion);
  return true;
}

void CudaBackend::rmsnorm_linear(const Tensor& x, const Tensor& norm_w, float eps, Tensor& h, const LinearWeight& w,
                                 const Tensor* bias, Tensor& y) {
  cuda::GemvFusion f;
  f.prologue = cuda::GemvFusion::Prologue::kRmsNorm;
  f.norm_weight = norm_w.as<float>();
  f.eps = eps;
  if (!fused_gemv(x, x.numel() / w.in_features, w, bias, y, f)) Backend::rmsnorm_linear(x, norm_w, eps, h, w, bias, y);
}

void CudaBackend::linear_add(const Tensor& x, const LinearWeight& w, const Tensor* bias, Tensor& tmp, Tensor& residual) {
  cuda::GemvFusion f;
  f.add_to_y = true;
  if (!fused_gemv(x, x.numel() / w.in_features, w, bias, residual, f)) Backend::linear_add(x, w, bias, tmp, residual);
}

void CudaBackend::silu_mul_linear_add(const Tensor& gate_up, Tensor& act, const LinearWeight& w, const Tensor* bias,
                                      Tensor& tmp, Tensor& residual) {
  cuda::GemvFusion f;
  f.prologue = cuda::GemvFusion::Prologue::kSiluMul;
  f.add_to_y = true;
  if (!fused_gemv(gate_up, gate_up.numel() / (2 * w.in_features), w, bias, residual, f))
    Backend::silu_mul_linear_add(gate_up, act, w, bias, tmp, residual);
}

void CudaBackend::qkv_rope_kv_write(const Tensor& qkv, const QkvLayout& L, const Tensor& cos_sin,
                                    const AttentionBatch& batch, KvLayer& kv, Tensor& q_out) {
  KILN_CHECK(&batch == batch_src_, "cuda backend: begin_forward was not called for this batch");
  cuda::QkvParams p{L.num_heads, L.num_kv_heads, L.head_dim, L.rotary_dim, L.norm_eps,
                    L.q_norm ? L.q_norm->as<float>() : nullptr, L.k_norm ? L.k_norm->as<float>() : nullptr};
  cuda::qkv_rope_kv_write(qkv.data, qkv.dtype, p, cos_sin.as<float>(), batch_, device_kv(kv), q_out.data, stream_);
}

void CudaBackend::paged_attention(const Tensor& q, const KvLayer& kv, const AttentionBatch& batch,
                                  const AttentionParams& P, Tensor& out) {
  KILN_CHECK(&batch == batch_src_, "cuda backend: begin_forward was not called for this batch");
  cuda::AttentionParams p{P.num_heads, P.num_kv_heads, P.head_dim, P.scale, P.window};
  if (!capturing_) {
    attention_shape_ = p;
    attention_shape_->window = 0;  // no window: the largest workspace any layer needs
  }
  const size_t ws = cuda::attention_workspace_bytes(p, batch_.num_tokens, batch_.max_context_len);
  void* w = ws ? scratch(attn_workspace_, ws) : nullptr;
  cuda::paged_attention(q.data, q.dtype, device_kv(kv), batch_, p, out.data, w, ws, stream_);
}

void CudaBackend::rope_kv_write_attention(const Tensor& qkv, const QkvLayout& L, const Tensor& cos_sin,
                                          const AttentionBatch& batch, KvLayer& kv, Tensor& q_scratch,
                                          const AttentionParams& P, Tensor& out) {
  KILN_CHECK(&batch == batch_src_, "cuda backend: begin_forward was not called for this batch");
  const cuda::QkvParams qp{L.num_heads, L.num_kv_heads, L.head_dim, L.rotary_dim, L.norm_eps,
                           L.q_norm ? L.q_norm->as<float>() : nullptr, L.k_norm ? L.k_norm->as<float>() : nullptr};
  const cuda::AttentionParams p{P.num_heads, P.num_kv_heads, P.head_dim, P.scale, P.window};
  const cuda::DeviceKv dkv = device_kv(kv);
  if (!rope_fusion_enabled_ || qkv.dtype != out.dtype || cos_sin.dtype != DType::kF32 ||
      !cuda::rope_attention_fusable(qkv.data, qkv.dtype, qp, cos_sin.as<float>(), batch_, dkv, p, out.data)) {
    Backend::rope_kv_write_attention(qkv, L, cos_sin, batch, kv, q_scratch, P, out);
    return;
  }
  if (!capturing_) {
    attention_shape_ = p;
    attention_shape_->window = 0;  // as paged_attention: the largest workspace any layer needs
  }
  const size_t ws = cuda::attention_workspace_bytes(p, batch_.num_tokens, batch_.max_context_len);
  void* w = ws ? scratch(attn_workspace_, ws) : nullptr;
  cuda::rope_kv_write_attention(qkv.data, qkv.dtype, qp, cos_sin.as<float>(), batch_, dkv, p, out.data, w, ws,
                                stream_);
}

Result<std::string> CudaBackend::tune_linears(const std::vector<LinearShape>& shapes, DType weights,
                                              int64_t max_tokens, int64_t max_logit_rows) {
  // Token counts a forward may have, as powers of two from 8 (below: the gemv kernel) to the limit, and the
  // limit itself; at run time m takes the algorithm of the smallest tuned m >= m.
  const auto counts = [](int64_t limit) {
    std::vector<int64_t> ms;
    for (int64_t m = 8; m < limit; m *= 2) ms.push_back(m);
    ms.push_back(std::max<int64_t>(limit, 1));
    return ms;
  };
  std::vector<cuda::LtGemm::TuneShape> tune;
  for (const LinearShape& s : shapes) {
    cuda::LtGemm::TuneShape t;
    t.n = s.n;
    t.k = s.k;
    t.xt = t.wt = weights;
    t.yt = s.lm_head ? DType::kF32 : weights;
    t.bias = s.bias;
    t.ms = counts(s.lm_head ? max_logit_rows : max_tokens);
    tune.push_back(t);
  }
  return gemm_->tune(tune, device_description(), stream_);
}

Status CudaBackend::use_tuning(const std::string& record) {
  if (record.empty()) return {};
  std::string note;
  if (!gemm_->use_record(record, device_description(), &note))
    std::fprintf(stderr, "kiln: %s; GEMM algorithms come from cuBLASLt's heuristic (rebuild the engine on this "
                 "machine to tune them)\n", note.c_str());
  return {};
}

void CudaBackend::add(Tensor& residual, const Tensor& delta) {
  KILN_CHECK(residual.dtype == delta.dtype && residual.numel() == delta.numel(), "add: tensors of one type and size");
  cuda::add(residual.data, delta.data, residual.numel(), residual.dtype, stream_);
}

void CudaBackend::silu_mul(const Tensor& gate_up, Tensor& out) {
  const int64_t inter = out.dim(-1);
  cuda::silu_mul(gate_up.data, out.data, out.numel() / inter, inter, out.dtype, stream_);
}

void CudaBackend::gather_rows(const Tensor& x, const Tensor& rows, Tensor& out) {
  cuda::gather_rows(x.data, rows.as<int32_t>(), rows.numel(), static_cast<int64_t>(x.nbytes() / x.dim(0)), out.data,
                    stream_);
}

void CudaBackend::argmax_rows(const Tensor& logits, Tensor& ids) {
  const int64_t vocab = logits.dim(-1);
  cuda::argmax_rows(logits.as<float>(), logits.numel() / vocab, vocab, ids.as<int32_t>(), stream_);
}

void CudaBackend::synchronize() { KILN_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

}  // namespace kiln
