// The CUDA elementwise / normalization kernels (src/backend/cuda/ops.cu) against the CPU backend on random
// data, for f32 / f16 / bf16 activations (and KV caches): embedding, rmsnorm, add_rmsnorm, silu_mul,
// gather_rows, qkv_rope_kv_write. The CPU reference gets the same inputs rounded to the activation type.
// Outputs are poisoned (NaN bytes) before each launch so an element left unwritten fails the check.
// Every test skips without a CUDA device (CI builds this but has no GPU).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <numeric>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "backend/cuda/cuda_test_util.h"
#include "backend/cpu/attention.h"
#include "backend/cpu/cpu_backend.h"
#include "backend/cuda/kernels.h"
#include "core/dtype.h"
#include "core/tensor.h"
#include "core/thread_pool.h"

namespace kiln::cuda {
namespace {

#define CUDA_ASSERT(expr)                                                                            \
  do {                                                                                               \
    const cudaError_t e_ = (expr);                                                                   \
    ASSERT_EQ(e_, cudaSuccess) << #expr << ": " << cudaGetErrorName(e_) << ": " << cudaGetErrorString(e_); \
  } while (0)

constexpr DType kFloatTypes[] = {DType::kF32, DType::kF16, DType::kBF16};

// Norm-wise relative tolerance of a result stored in `t` (its rounding dominates the error).
double tolerance(DType t) { return t == DType::kF32 ? 1e-5 : t == DType::kF16 ? 2e-3 : 1e-2; }

std::vector<float> random_floats(size_t n, std::mt19937& rng, float mean = 0.0f, float stddev = 1.0f) {
  std::normal_distribution<float> nd(mean, stddev);
  std::vector<float> v(n);
  for (float& x : v) x = nd(rng);
  return v;
}

std::vector<float> random_uniform(size_t n, std::mt19937& rng, float lo, float hi) {
  std::uniform_real_distribution<float> ud(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = ud(rng);
  return v;
}

// f32 values -> bytes of type t (round to nearest even), and back.
std::vector<uint8_t> to_bytes(const std::vector<float>& x, DType t) {
  std::vector<uint8_t> out(x.size() * dtype_size(t));
  EXPECT_TRUE(convert_floats(x.data(), DType::kF32, out.data(), t, x.size()));
  return out;
}
std::vector<float> from_bytes(const void* bytes, DType t, size_t n) {
  std::vector<float> out(n);
  EXPECT_TRUE(convert_floats(bytes, t, out.data(), DType::kF32, n));
  return out;
}
std::vector<float> rounded(const std::vector<float>& x, DType t) { return from_bytes(to_bytes(x, t).data(), t, x.size()); }

// Device memory with `slack` spare bytes, for views offset from the allocation's (256-byte aligned) start.
class DeviceMem {
 public:
  explicit DeviceMem(size_t bytes, size_t slack = 64) {
    err_ = cudaMalloc(&p_, bytes + slack);
    if (err_ != cudaSuccess) p_ = nullptr;
  }
  ~DeviceMem() {
    if (p_) cudaFree(p_);
  }
  DeviceMem(const DeviceMem&) = delete;
  DeviceMem& operator=(const DeviceMem&) = delete;
  cudaError_t status() const { return err_; }
  char* at(size_t offset = 0) const { return static_cast<char*>(p_) + offset; }

 private:
  void* p_ = nullptr;
  cudaError_t err_ = cudaSuccess;
};

// Relative error ||out - ref|| / ||ref|| over all elements, plus the count of non-finite outputs (unwritten
// poison or NaN produced); fails the test if either is out of bounds.
void expect_close(const std::vector<float>& out, const std::vector<float>& ref, double tol, const std::string& what) {
  ASSERT_EQ(out.size(), ref.size()) << what;
  double num = 0, den = 0, worst = -1;
  size_t worst_i = 0, bad = 0, first_bad = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    if (!std::isfinite(out[i])) {
      if (bad++ == 0) first_bad = i;
      continue;
    }
    const double e = static_cast<double>(out[i]) - ref[i];
    num += e * e;
    den += static_cast<double>(ref[i]) * ref[i];
    if (std::fabs(e) > worst) {
      worst = std::fabs(e);
      worst_i = i;
    }
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " elements unwritten or not finite, first at " << first_bad;
  ASSERT_GT(den, 0.0) << what;
  const double rel = std::sqrt(num / den);
  EXPECT_LE(rel, tol) << what << ": relative error " << rel << ", worst at " << worst_i << ": " << out[worst_i]
                      << " vs " << ref[worst_i];
}

class CudaOps : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!::kiln::test::have_cuda_device()) GTEST_SKIP() << "no CUDA device";
    CUDA_ASSERT(cudaStreamCreate(&stream_));
  }
  void TearDown() override {
    if (stream_) cudaStreamDestroy(stream_);
  }

  // Waits for the stream and checks that the launch and the kernel went fine.
  void finish(const std::string& what) {
    const cudaError_t launch = cudaGetLastError();
    ASSERT_EQ(launch, cudaSuccess) << what << ": " << cudaGetErrorString(launch);
    const cudaError_t run = cudaStreamSynchronize(stream_);
    ASSERT_EQ(run, cudaSuccess) << what << ": " << cudaGetErrorString(run);
  }

  cudaStream_t stream_ = nullptr;
  CpuBackend cpu_;
};

std::string dims_name(DType act, int64_t rows, int64_t dim, int offset) {
  return std::string(dtype_name(act)) + " rows=" + std::to_string(rows) + " dim=" + std::to_string(dim) +
         (offset ? " offset=" + std::to_string(offset) : "");
}

// ---------------------------------------------------------------- embedding

TEST_F(CudaOps, Embedding) {
  std::mt19937 rng(1);
  const int64_t vocab = 300;
  for (int64_t hidden : {64, 576, 3072, 4096, 100, 37}) {
    for (DType table_t : kFloatTypes) {
      for (DType act : kFloatTypes) {
        for (int offset : {0, 1})  // offset: unaligned table / out -> scalar path
        for (int64_t row0 : {0, 3}) {  // 3: a vocab-parallel slice of ids [3, vocab - 3); others embed as zeros
          const int64_t rows = row0 ? vocab - 6 : vocab;
          SCOPED_TRACE(std::string("table ") + dtype_name(table_t) + " act " + dtype_name(act) +
                       " hidden=" + std::to_string(hidden) + " offset=" + std::to_string(offset) +
                       " row0=" + std::to_string(row0));
          const std::vector<uint8_t> table = to_bytes(random_floats(vocab * hidden, rng), table_t);
          std::vector<int32_t> ids(11);
          std::uniform_int_distribution<int32_t> pick(0, vocab - 1);
          for (int32_t& id : ids) id = pick(rng);
          ids[3] = ids[7];  // a repeated token
          ids.back() = vocab - 1;
          const int64_t T = static_cast<int64_t>(ids.size());

          // CPU: f32 out, then rounded to act as the GPU stores it (the conversions are exact either way).
          EmbeddingWeight w;
          w.data = Tensor{const_cast<uint8_t*>(table.data()), table_t, {vocab, hidden}};
          w.vocab = rows;
          w.vocab_start = row0;
          w.hidden = hidden;
          Tensor ids_t{ids.data(), DType::kI32, {T}};
          std::vector<float> ref(T * hidden);
          Tensor ref_t{ref.data(), DType::kF32, {T, hidden}};
          cpu_.embedding(w, ids_t, ref_t);
          ref = rounded(ref, act);

          const size_t toff = offset * dtype_size(table_t), aoff = offset * dtype_size(act);
          const size_t out_bytes = T * hidden * dtype_size(act);
          DeviceMem d_table(table.size()), d_ids(ids.size() * 4), d_out(out_bytes);
          CUDA_ASSERT(d_table.status());
          CUDA_ASSERT(d_ids.status());
          CUDA_ASSERT(d_out.status());
          CUDA_ASSERT(cudaMemcpy(d_table.at(toff), table.data(), table.size(), cudaMemcpyHostToDevice));
          CUDA_ASSERT(cudaMemcpy(d_ids.at(), ids.data(), ids.size() * 4, cudaMemcpyHostToDevice));
          CUDA_ASSERT(cudaMemset(d_out.at(aoff), 0xff, out_bytes));
          embedding(d_table.at(toff), table_t, row0, rows, reinterpret_cast<int32_t*>(d_ids.at()), T, hidden,
                    d_out.at(aoff), act, stream_);
          ASSERT_NO_FATAL_FAILURE(finish("embedding"));
          std::vector<uint8_t> out(out_bytes);
          CUDA_ASSERT(cudaMemcpy(out.data(), d_out.at(aoff), out_bytes, cudaMemcpyDeviceToHost));
          expect_close(from_bytes(out.data(), act, T * hidden), ref, 0.0, "embedding");
        }
      }
    }
  }
}

// ---------------------------------------------------------------- rmsnorm / add_rmsnorm

// rmsnorm of rows x dim in `act`, out-of-place or in place, with device pointers `offset` elements past
// an aligned address (offset 1: the scalar path even where dim allows vectors).
void check_rmsnorm(CpuBackend& cpu, cudaStream_t stream, DType act, int64_t rows, int64_t dim, bool in_place,
                   int offset, std::mt19937& rng, const std::function<void(const std::string&)>& finish) {
  SCOPED_TRACE(dims_name(act, rows, dim, offset) + (in_place ? " in place" : ""));
  const float eps = 1e-6f;
  const std::vector<float> x = rounded(random_floats(rows * dim, rng, 0.3f, 1.5f), act);
  const std::vector<float> w = random_uniform(dim, rng, 0.5f, 1.5f);

  std::vector<float> ref(rows * dim);
  Tensor x_t{const_cast<float*>(x.data()), DType::kF32, {rows, dim}};
  Tensor w_t{const_cast<float*>(w.data()), DType::kF32, {dim}};
  Tensor ref_t{ref.data(), DType::kF32, {rows, dim}};
  cpu.rmsnorm(x_t, w_t, eps, ref_t);

  const size_t es = dtype_size(act), bytes = rows * dim * es;
  const std::vector<uint8_t> xb = to_bytes(x, act);
  DeviceMem d_x(bytes), d_out(bytes), d_w(dim * 4);
  CUDA_ASSERT(d_x.status());
  CUDA_ASSERT(d_out.status());
  CUDA_ASSERT(d_w.status());
  char* dx = d_x.at(offset * es);
  char* dout = in_place ? dx : d_out.at(offset * es);
  float* dw = reinterpret_cast<float*>(d_w.at(offset * 4));
  CUDA_ASSERT(cudaMemcpy(dx, xb.data(), bytes, cudaMemcpyHostToDevice));
  CUDA_ASSERT(cudaMemcpy(dw, w.data(), dim * 4, cudaMemcpyHostToDevice));
  if (!in_place) CUDA_ASSERT(cudaMemset(dout, 0xff, bytes));
  rmsnorm(dx, dw, eps, dout, rows, dim, act, stream);
  ASSERT_NO_FATAL_FAILURE(finish("rmsnorm"));
  std::vector<uint8_t> out(bytes);
  CUDA_ASSERT(cudaMemcpy(out.data(), dout, bytes, cudaMemcpyDeviceToHost));
  expect_close(from_bytes(out.data(), act, rows * dim), ref, tolerance(act), "rmsnorm");
}

TEST_F(CudaOps, RmsNorm) {
  std::mt19937 rng(2);
  auto fin = [&](const std::string& w) { finish(w); };
  // 33, 100: not multiples of 8; 4097: odd and > 1024 x 4 elements (scalar loop kernel); 40000: too long
  // for registers in every type (the two-pass kernel).
  for (DType act : kFloatTypes) {
    for (int64_t dim : {64, 576, 3072, 4096, 8192, 33, 100, 4097, 40000})
      for (int64_t rows : {1, 5, 67}) check_rmsnorm(cpu_, stream_, act, rows, dim, false, 0, rng, fin);
    check_rmsnorm(cpu_, stream_, act, 2048, 4096, false, 0, rng, fin);  // prefill-sized
  }
}

TEST_F(CudaOps, RmsNormInPlaceAndUnaligned) {
  std::mt19937 rng(3);
  auto fin = [&](const std::string& w) { finish(w); };
  for (DType act : kFloatTypes)
    for (int64_t dim : {64, 4096, 100, 40000})
      for (int offset : {0, 1}) {
        check_rmsnorm(cpu_, stream_, act, 7, dim, true, offset, rng, fin);
        check_rmsnorm(cpu_, stream_, act, 7, dim, false, offset, rng, fin);
      }
}

// residual += delta (stored rounded to act), out = rmsnorm(residual). The reference: the CPU's add_rmsnorm
// for the sum, rounded to act, then the CPU's rmsnorm of that rounded residual (what the GPU normalizes).
void check_add_rmsnorm(CpuBackend& cpu, cudaStream_t stream, DType act, int64_t rows, int64_t dim, int offset,
                       std::mt19937& rng, const std::function<void(const std::string&)>& finish) {
  SCOPED_TRACE(dims_name(act, rows, dim, offset));
  const float eps = 1e-5f;
  const std::vector<float> res = rounded(random_floats(rows * dim, rng, 0.0f, 2.0f), act);
  const std::vector<float> delta = rounded(random_floats(rows * dim, rng, 0.2f, 1.0f), act);
  const std::vector<float> w = random_uniform(dim, rng, 0.5f, 1.5f);

  std::vector<float> ref_res = res, ref_out(rows * dim), scratch(rows * dim);
  Tensor res_t{ref_res.data(), DType::kF32, {rows, dim}};
  Tensor delta_t{const_cast<float*>(delta.data()), DType::kF32, {rows, dim}};
  Tensor w_t{const_cast<float*>(w.data()), DType::kF32, {dim}};
  Tensor scratch_t{scratch.data(), DType::kF32, {rows, dim}};
  cpu.add_rmsnorm(res_t, delta_t, w_t, eps, scratch_t);
  ref_res = rounded(ref_res, act);
  Tensor rounded_t{ref_res.data(), DType::kF32, {rows, dim}};
  Tensor out_t{ref_out.data(), DType::kF32, {rows, dim}};
  cpu.rmsnorm(rounded_t, w_t, eps, out_t);

  const size_t es = dtype_size(act), bytes = rows * dim * es;
  const std::vector<uint8_t> rb = to_bytes(res, act), db = to_bytes(delta, act);
  DeviceMem d_res(bytes), d_delta(bytes), d_out(bytes), d_w(dim * 4);
  CUDA_ASSERT(d_res.status());
  CUDA_ASSERT(d_delta.status());
  CUDA_ASSERT(d_out.status());
  CUDA_ASSERT(d_w.status());
  char* dres = d_res.at(offset * es);
  char* ddelta = d_delta.at(offset * es);
  char* dout = d_out.at(offset * es);
  float* dw = reinterpret_cast<float*>(d_w.at(offset * 4));
  CUDA_ASSERT(cudaMemcpy(dres, rb.data(), bytes, cudaMemcpyHostToDevice));
  CUDA_ASSERT(cudaMemcpy(ddelta, db.data(), bytes, cudaMemcpyHostToDevice));
  CUDA_ASSERT(cudaMemcpy(dw, w.data(), dim * 4, cudaMemcpyHostToDevice));
  CUDA_ASSERT(cudaMemset(dout, 0xff, bytes));
  add_rmsnorm(dres, ddelta, dw, eps, dout, rows, dim, act, stream);
  ASSERT_NO_FATAL_FAILURE(finish("add_rmsnorm"));
  std::vector<uint8_t> out(bytes), res_out(bytes);
  CUDA_ASSERT(cudaMemcpy(out.data(), dout, bytes, cudaMemcpyDeviceToHost));
  CUDA_ASSERT(cudaMemcpy(res_out.data(), dres, bytes, cudaMemcpyDeviceToHost));
  // The sum is one f32 add and one rounding on both sides: bit-exact.
  expect_close(from_bytes(res_out.data(), act, rows * dim), ref_res, 0.0, "add_rmsnorm residual");
  expect_close(from_bytes(out.data(), act, rows * dim), ref_out, tolerance(act), "add_rmsnorm out");
}

TEST_F(CudaOps, AddRmsNorm) {
  std::mt19937 rng(4);
  auto fin = [&](const std::string& w) { finish(w); };
  for (DType act : kFloatTypes) {
    for (int64_t dim : {64, 576, 3072, 4096, 8192, 33, 100, 4097, 40000})
      for (int64_t rows : {1, 5, 67}) check_add_rmsnorm(cpu_, stream_, act, rows, dim, 0, rng, fin);
    check_add_rmsnorm(cpu_, stream_, act, 2048, 4096, 0, rng, fin);
    for (int64_t dim : {64, 4096, 40000}) check_add_rmsnorm(cpu_, stream_, act, 3, dim, 1, rng, fin);
  }
}

// ---------------------------------------------------------------- silu_mul

TEST_F(CudaOps, SiluMul) {
  std::mt19937 rng(5);
  for (DType act : kFloatTypes) {
    for (int64_t inter : {1536, 8192, 14336, 64, 100, 37}) {
      for (int64_t rows : {1, 7, 300}) {
        for (int offset : {0, 1}) {
          if (offset && rows != 7) continue;
          SCOPED_TRACE(dims_name(act, rows, inter, offset));
          // Wide gate values: silu's tails (x -> 0 and x -> -0) as well as its bend.
          const std::vector<float> gu = rounded(random_floats(rows * 2 * inter, rng, 0.0f, 4.0f), act);
          std::vector<float> ref(rows * inter);
          Tensor gu_t{const_cast<float*>(gu.data()), DType::kF32, {rows, 2 * inter}};
          Tensor ref_t{ref.data(), DType::kF32, {rows, inter}};
          cpu_.silu_mul(gu_t, ref_t);

          const size_t es = dtype_size(act), in_bytes = gu.size() * es, out_bytes = rows * inter * es;
          const std::vector<uint8_t> gb = to_bytes(gu, act);
          DeviceMem d_in(in_bytes), d_out(out_bytes);
          CUDA_ASSERT(d_in.status());
          CUDA_ASSERT(d_out.status());
          char* din = d_in.at(offset * es);
          char* dout = d_out.at(offset * es);
          CUDA_ASSERT(cudaMemcpy(din, gb.data(), in_bytes, cudaMemcpyHostToDevice));
          CUDA_ASSERT(cudaMemset(dout, 0xff, out_bytes));
          silu_mul(din, dout, rows, inter, act, stream_);
          ASSERT_NO_FATAL_FAILURE(finish("silu_mul"));
          std::vector<uint8_t> out(out_bytes);
          CUDA_ASSERT(cudaMemcpy(out.data(), dout, out_bytes, cudaMemcpyDeviceToHost));
          expect_close(from_bytes(out.data(), act, rows * inter), ref, tolerance(act), "silu_mul");
        }
      }
    }
  }
}

// ---------------------------------------------------------------- gather_rows

TEST_F(CudaOps, GatherRows) {
  std::mt19937 rng(6);
  const int64_t src_rows = 50;
  // 16-byte multiples (vector path) and 4-byte ones; offset 4: an unaligned base forces 4-byte words.
  for (int64_t row_bytes : {4, 12, 16, 100, 256, 1152, 8192, 8196}) {
    for (int offset : {0, 4}) {
      for (int64_t n : {1, 19}) {
        SCOPED_TRACE("row_bytes=" + std::to_string(row_bytes) + " offset=" + std::to_string(offset) +
                     " n=" + std::to_string(n));
        std::vector<uint8_t> x(src_rows * row_bytes);
        for (uint8_t& b : x) b = static_cast<uint8_t>(rng() % 251);  // never the 0xff poison pattern
        std::vector<int32_t> rows(n);
        std::uniform_int_distribution<int32_t> pick(0, src_rows - 1);
        for (int32_t& r : rows) r = pick(rng);
        if (n > 5) rows[2] = rows[4];  // a repeated row
        std::vector<uint8_t> ref(n * row_bytes);
        Tensor x_t{x.data(), DType::kU8, {src_rows, row_bytes}};
        Tensor ref_t{ref.data(), DType::kU8, {n, row_bytes}};
        cpu_.gather_rows(x_t, Tensor{rows.data(), DType::kI32, {n}}, ref_t);

        DeviceMem d_x(x.size()), d_rows(n * 4), d_out(ref.size());
        CUDA_ASSERT(d_x.status());
        CUDA_ASSERT(d_rows.status());
        CUDA_ASSERT(d_out.status());
        CUDA_ASSERT(cudaMemcpy(d_x.at(offset), x.data(), x.size(), cudaMemcpyHostToDevice));
        CUDA_ASSERT(cudaMemcpy(d_rows.at(), rows.data(), n * 4, cudaMemcpyHostToDevice));
        CUDA_ASSERT(cudaMemset(d_out.at(offset), 0xff, ref.size()));
        gather_rows(d_x.at(offset), reinterpret_cast<int32_t*>(d_rows.at()), n, row_bytes, d_out.at(offset), stream_);
        ASSERT_NO_FATAL_FAILURE(finish("gather_rows"));
        std::vector<uint8_t> out(ref.size());
        CUDA_ASSERT(cudaMemcpy(out.data(), d_out.at(offset), out.size(), cudaMemcpyDeviceToHost));
        EXPECT_TRUE(out == ref);
      }
    }
  }
}

// ---------------------------------------------------------------- qkv_rope_kv_write

struct SeqSpec {
  int32_t num_new;
  int32_t context_len;
};

struct QkvCase {
  int head_dim, num_heads, num_kv_heads, rotary_dim;
  bool norm;
  int block_size;
};

// Sequences with their new tokens at the end of their context (so token index != position), scattered
// block tables over a pool with spare blocks; the GPU and the CPU start from the same random pools.
void check_qkv(CpuBackend& /*cpu*/, cudaStream_t stream, DType act, DType kv_t, const QkvCase& c,
               const std::vector<SeqSpec>& specs, int offset, std::mt19937& rng,
               const std::function<void(const std::string&)>& finish) {
  SCOPED_TRACE(std::string("act ") + dtype_name(act) + " kv " + dtype_name(kv_t) + " D=" + std::to_string(c.head_dim) +
               " H=" + std::to_string(c.num_heads) + " KVH=" + std::to_string(c.num_kv_heads) +
               " rot=" + std::to_string(c.rotary_dim) + (c.norm ? " norm" : "") + " bs=" +
               std::to_string(c.block_size) + " offset=" + std::to_string(offset));
  const int D = c.head_dim, H = c.num_heads, KVH = c.num_kv_heads, R = c.rotary_dim, bs = c.block_size;

  // The batch: host (CPU) view and device arrays.
  int32_t total_blocks = 5;  // spare blocks nobody owns
  int32_t max_blocks = 0;
  for (const SeqSpec& s : specs) {
    const int32_t nb = (s.context_len + bs - 1) / bs;
    total_blocks += nb;
    max_blocks = std::max(max_blocks, nb);
  }
  std::vector<int32_t> perm(total_blocks);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  const int S = static_cast<int>(specs.size());
  std::vector<int32_t> tables(static_cast<size_t>(S) * max_blocks, -1);  // -1: must never be read
  std::vector<int32_t> token_seq, token_pos, first(S), num_new(S), ctx(S);
  AttentionBatch batch;
  batch.block_size = bs;
  size_t next = 0;
  int32_t max_ctx = 0, max_new = 0;
  for (int s = 0; s < S; ++s) {
    const int32_t nb = (specs[s].context_len + bs - 1) / bs;
    for (int32_t j = 0; j < nb; ++j) tables[static_cast<size_t>(s) * max_blocks + j] = perm[next++];
    first[s] = batch.num_tokens;
    num_new[s] = specs[s].num_new;
    ctx[s] = specs[s].context_len;
    max_ctx = std::max(max_ctx, ctx[s]);
    max_new = std::max(max_new, num_new[s]);
    for (int32_t i = 0; i < specs[s].num_new; ++i) {
      token_seq.push_back(s);
      token_pos.push_back(specs[s].context_len - specs[s].num_new + i);
    }
    SequenceView v;
    v.first_token = batch.num_tokens;
    v.num_new = specs[s].num_new;
    v.context_len = specs[s].context_len;
    v.block_table = std::span<const int32_t>(tables.data() + static_cast<size_t>(s) * max_blocks, nb);
    batch.seqs.push_back(v);
    batch.num_tokens += specs[s].num_new;
  }
  const int64_t T = batch.num_tokens;

  // Inputs.
  const int64_t row = static_cast<int64_t>(H + 2 * KVH) * D;
  const std::vector<float> qkv = rounded(random_floats(T * row, rng, 0.1f, 1.0f), act);
  std::vector<float> cos_sin(T * R);
  {
    std::uniform_real_distribution<float> angle(-3.14159f, 3.14159f);
    for (int64_t t = 0; t < T; ++t)
      for (int i = 0; i < R / 2; ++i) {
        const float a = angle(rng);
        cos_sin[t * R + i] = std::cos(a);
        cos_sin[t * R + R / 2 + i] = std::sin(a);
      }
  }
  const std::vector<float> q_norm = random_uniform(D, rng, 0.5f, 1.5f), k_norm = random_uniform(D, rng, 0.5f, 1.5f);
  const Shape pool_shape{total_blocks, KVH, bs, D};
  const size_t pool_elems = static_cast<size_t>(pool_shape.numel()), kvs = dtype_size(kv_t);
  const std::vector<uint8_t> k0 = to_bytes(random_floats(pool_elems, rng), kv_t);
  const std::vector<uint8_t> v0 = to_bytes(random_floats(pool_elems, rng), kv_t);

  // CPU reference.
  std::vector<uint8_t> k_ref = k0, v_ref = v0;
  std::vector<float> q_ref(T * H * D);
  {
    Tensor qkv_t{const_cast<float*>(qkv.data()), DType::kF32, {T, row}};
    Tensor cs_t{cos_sin.data(), DType::kF32, {T, R}};
    Tensor qn_t{const_cast<float*>(q_norm.data()), DType::kF32, {D}};
    Tensor kn_t{const_cast<float*>(k_norm.data()), DType::kF32, {D}};
    QkvLayout layout;
    layout.num_heads = H;
    layout.num_kv_heads = KVH;
    layout.head_dim = D;
    layout.rotary_dim = R;
    layout.norm_eps = 1e-6f;
    layout.q_norm = c.norm ? &qn_t : nullptr;
    layout.k_norm = c.norm ? &kn_t : nullptr;
    KvLayer kv{Tensor{k_ref.data(), kv_t, pool_shape}, Tensor{v_ref.data(), kv_t, pool_shape}};
    Tensor q_t{q_ref.data(), DType::kF32, {T, static_cast<int64_t>(H) * D}};
    cpu::qkv_rope_kv_write(qkv_t, layout, cs_t, batch, kv, q_t, ThreadPool::global());
  }

  // GPU.
  const size_t es = dtype_size(act), qkv_bytes = T * row * es, q_bytes = T * H * D * es, pool_bytes = pool_elems * kvs;
  const std::vector<uint8_t> qkv_b = to_bytes(qkv, act);
  DeviceMem d_qkv(qkv_bytes), d_q(q_bytes), d_k(pool_bytes), d_v(pool_bytes), d_cs(cos_sin.size() * 4 + 4),
      d_qn(D * 4), d_kn(D * 4), d_seq(T * 4), d_pos(T * 4), d_first(S * 4), d_new(S * 4), d_ctx(S * 4),
      d_tables(tables.size() * 4);
  for (const DeviceMem* m : {&d_qkv, &d_q, &d_k, &d_v, &d_cs, &d_qn, &d_kn, &d_seq, &d_pos, &d_first, &d_new, &d_ctx,
                             &d_tables})
    CUDA_ASSERT(m->status());
  char* dqkv = d_qkv.at(offset * es);
  char* dq = d_q.at(offset * es);
  char* dk = d_k.at(offset * kvs);
  char* dv = d_v.at(offset * kvs);
  auto up = [](void* dst, const void* src, size_t bytes) { return cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice); };
  CUDA_ASSERT(up(dqkv, qkv_b.data(), qkv_bytes));
  CUDA_ASSERT(up(dk, k0.data(), pool_bytes));
  CUDA_ASSERT(up(dv, v0.data(), pool_bytes));
  CUDA_ASSERT(up(d_cs.at(), cos_sin.data(), cos_sin.size() * 4));
  CUDA_ASSERT(up(d_qn.at(), q_norm.data(), D * 4));
  CUDA_ASSERT(up(d_kn.at(), k_norm.data(), D * 4));
  CUDA_ASSERT(up(d_seq.at(), token_seq.data(), T * 4));
  CUDA_ASSERT(up(d_pos.at(), token_pos.data(), T * 4));
  CUDA_ASSERT(up(d_first.at(), first.data(), S * 4));
  CUDA_ASSERT(up(d_new.at(), num_new.data(), S * 4));
  CUDA_ASSERT(up(d_ctx.at(), ctx.data(), S * 4));
  CUDA_ASSERT(up(d_tables.at(), tables.data(), tables.size() * 4));
  CUDA_ASSERT(cudaMemset(dq, 0xff, q_bytes));

  DeviceBatch b;
  b.num_tokens = static_cast<int32_t>(T);
  b.num_seqs = S;
  b.block_size = bs;
  b.max_blocks_per_seq = max_blocks;
  b.max_context_len = max_ctx;
  b.max_num_new = max_new;
  b.token_seq = reinterpret_cast<const int32_t*>(d_seq.at());
  b.token_pos = reinterpret_cast<const int32_t*>(d_pos.at());
  b.seq_first_token = reinterpret_cast<const int32_t*>(d_first.at());
  b.seq_num_new = reinterpret_cast<const int32_t*>(d_new.at());
  b.seq_context_len = reinterpret_cast<const int32_t*>(d_ctx.at());
  b.block_tables = reinterpret_cast<const int32_t*>(d_tables.at());
  DeviceKv kv{dk, dv, kv_t, total_blocks, KVH, D};
  QkvParams p;
  p.num_heads = H;
  p.num_kv_heads = KVH;
  p.head_dim = D;
  p.rotary_dim = R;
  p.norm_eps = 1e-6f;
  p.q_norm = c.norm ? reinterpret_cast<const float*>(d_qn.at()) : nullptr;
  p.k_norm = c.norm ? reinterpret_cast<const float*>(d_kn.at()) : nullptr;
  qkv_rope_kv_write(dqkv, act, p, reinterpret_cast<const float*>(d_cs.at()), b, kv, dq, stream);
  ASSERT_NO_FATAL_FAILURE(finish("qkv_rope_kv_write"));

  std::vector<uint8_t> q_out(q_bytes), k_out(pool_bytes), v_out(pool_bytes);
  CUDA_ASSERT(cudaMemcpy(q_out.data(), dq, q_bytes, cudaMemcpyDeviceToHost));
  CUDA_ASSERT(cudaMemcpy(k_out.data(), dk, pool_bytes, cudaMemcpyDeviceToHost));
  CUDA_ASSERT(cudaMemcpy(v_out.data(), dv, pool_bytes, cudaMemcpyDeviceToHost));
  expect_close(from_bytes(q_out.data(), act, T * H * D), q_ref, tolerance(act), "q_out");

  // Which pool rows (block, row in block) this batch writes; every kv head of those is written.
  std::vector<char> written(static_cast<size_t>(total_blocks) * bs, 0);
  for (int64_t t = 0; t < T; ++t) {
    const int s = token_seq[t], pos = token_pos[t];
    written[static_cast<size_t>(tables[static_cast<size_t>(s) * max_blocks + pos / bs]) * bs + pos % bs] = 1;
  }
  // V: a converted copy on both sides, bit-exact everywhere (the unwritten slots still hold v0).
  EXPECT_TRUE(v_out == v_ref) << "V pool differs from the CPU's";
  // K: unwritten slots bit-exact (untouched), written ones within the cache type's tolerance.
  std::vector<float> k_got, k_want;
  size_t untouched_diff = 0;
  for (int32_t blk = 0; blk < total_blocks; ++blk)
    for (int g = 0; g < KVH; ++g)
      for (int r = 0; r < bs; ++r) {
        const size_t off = ((static_cast<size_t>(blk) * KVH + g) * bs + r) * D * kvs;
        if (written[static_cast<size_t>(blk) * bs + r]) {
          const std::vector<float> got = from_bytes(k_out.data() + off, kv_t, D);
          const std::vector<float> want = from_bytes(k_ref.data() + off, kv_t, D);
          k_got.insert(k_got.end(), got.begin(), got.end());
          k_want.insert(k_want.end(), want.begin(), want.end());
        } else if (std::memcmp(k_out.data() + off, k0.data() + off, D * kvs) != 0) {
          ++untouched_diff;
        }
      }
  EXPECT_EQ(untouched_diff, 0u) << "K rows outside the batch's slots changed";
  ASSERT_EQ(k_got.size(), static_cast<size_t>(T) * KVH * D);
  expect_close(k_got, k_want, tolerance(kv_t), "K slots");
}

const std::vector<SeqSpec> kMixedBatch = {
    {5, 5},    // a fresh prefill
    {1, 37},   // decode deep in a sequence
    {7, 20},   // a prefill chunk after 13 cached tokens
    {1, 1},    // the first token
    {3, 64},   // a chunk ending on a block boundary
};

TEST_F(CudaOps, QkvRopeKvWrite) {
  std::mt19937 rng(7);
  auto fin = [&](const std::string& w) { finish(w); };
  const QkvCase cases[] = {
      {128, 8, 2, 128, false, 16},  // Llama-style GQA
      {128, 8, 2, 64, true, 16},    // partial rotary with q/k norm
      {64, 4, 4, 64, true, 4},      // MHA, small blocks
      {96, 6, 2, 32, false, 64},    // partial rotary, large blocks
      {32, 4, 1, 32, true, 8},      // MQA
      {16, 2, 1, 8, false, 16},
      {256, 4, 2, 256, true, 16},   // large heads
      {20, 3, 1, 20, true, 8},      // head size not a multiple of 8 (scalar path for 2-byte types)
      {40, 5, 1, 24, false, 32},    // odd pairing offsets (half = 12)
  };
  for (DType act : kFloatTypes)
    for (DType kv_t : kFloatTypes)
      for (const QkvCase& c : cases) check_qkv(cpu_, stream_, act, kv_t, c, kMixedBatch, 0, rng, fin);
}

TEST_F(CudaOps, QkvRopeKvWriteUnalignedAndLong) {
  std::mt19937 rng(8);
  auto fin = [&](const std::string& w) { finish(w); };
  // Pointers one element off 16-byte alignment: the scalar path with vector-friendly head sizes.
  for (DType act : kFloatTypes)
    for (DType kv_t : {DType::kF32, DType::kF16})
      check_qkv(cpu_, stream_, act, kv_t, {128, 8, 2, 128, true, 16}, kMixedBatch, 1, rng, fin);
  // A long prefill next to decodes (many tokens, many blocks).
  const std::vector<SeqSpec> long_batch = {{1000, 1000}, {1, 300}, {200, 700}};
  check_qkv(cpu_, stream_, DType::kBF16, DType::kBF16, {128, 32, 8, 128, false, 64}, long_batch, 0, rng, fin);
  check_qkv(cpu_, stream_, DType::kF16, DType::kF16, {128, 16, 8, 128, true, 16}, long_batch, 0, rng, fin);
}

}  // namespace
}  // namespace kiln::cuda
