#include "backend/backend.h"

namespace kiln {

std::shared_ptr<void> Backend::allocate_host(size_t bytes) {
  return std::shared_ptr<void>(::operator new(bytes ? bytes : 1), [](void* p) { ::operator delete(p); });
}

Result<Tensor> Backend::begin_forward(const AttentionBatch& batch, int32_t num_logit_rows, ForwardOutput output,
                                     std::span<const int32_t> inputs) {
  const size_t bytes = inputs.size() * sizeof(int32_t);
  if (forward_inputs_.bytes < bytes) {
    KILN_ASSIGN_OR_RETURN(forward_inputs_, allocate(std::max(bytes, 2 * forward_inputs_.bytes)));
  }
  Tensor t = forward_inputs_.view(DType::kI32, {static_cast<int64_t>(inputs.size())});
  upload(inputs.data(), t);
  return t;
}

size_t KvCacheSpec::bytes_per_block() const {
  return 2ull * num_layers * num_kv_heads * block_size * head_dim * dtype_size(dtype);
}

Result<std::unique_ptr<KvStorage>> Backend::create_kv_storage(const KvCacheSpec& spec) {
  auto kv = std::make_unique<KvStorage>();
  kv->spec = spec;
  Shape shape{spec.num_blocks, spec.num_kv_heads, spec.block_size, spec.head_dim};
  const size_t bytes = static_cast<size_t>(shape.numel()) * dtype_size(spec.dtype);
  for (int l = 0; l < spec.num_layers; ++l) {
    KvLayer layer;
    for (Tensor* t : {&layer.k, &layer.v}) {
      KILN_ASSIGN_OR_RETURN(DeviceBuffer buf, allocate(bytes));
      zero_bytes(buf.mem.get(), bytes);
      *t = buf.view(spec.dtype, shape);
      kv->buffers.push_back(std::move(buf));
    }
    kv->layers.push_back(layer);
  }
  synchronize();
  return kv;
}

void Backend::copy_kv_blocks(KvStorage& kv, std::span<const std::pair<int32_t, int32_t>> src_dst) {
  const KvCacheSpec& s = kv.spec;
  const size_t block_bytes = static_cast<size_t>(s.num_kv_heads) * s.block_size * s.head_dim * dtype_size(s.dtype);
  for (KvLayer& layer : kv.layers)
    for (Tensor* t : {&layer.k, &layer.v})
      for (auto [src, dst] : src_dst) {
        KILN_CHECK(src >= 0 && dst >= 0 && src < s.num_blocks && dst < s.num_blocks, "KV block copy out of range");
        copy_bytes(t->as<char>() + dst * block_bytes, t->as<char>() + src * block_bytes, block_bytes);
      }
}

}  // namespace kiln
