#include "model/llama_model.h"

#include <algorithm>
#include <cmath>
#include <map>

namespace kiln {

namespace {

Result<Tensor> weight(const Engine& e, Backend& b, const std::string& name) {
  const EngineTensor* t = e.file->find(name);
  if (!t) return data_loss("engine tensor '" + name + "' is missing; rebuild the engine with `kiln build`");
  Tensor host{const_cast<void*>(t->data), t->dtype, t->shape};
  if (t->layout != "plain") host = Tensor{const_cast<void*>(t->data), DType::kU8, Shape{static_cast<int64_t>(t->nbytes)}};
  return b.adopt_weight(host, e.file);
}

std::optional<GgmlType> quant_of(const Engine& e, const std::string& name) {
  auto it = e.build.quantized.find(name);
  return it == e.build.quantized.end() ? std::nullopt : std::optional<GgmlType>(it->second);
}

Result<LinearWeight> linear(const Engine& e, Backend& b, const std::string& name) {
  const EngineTensor* t = e.file->find(name);
  if (!t) return data_loss("engine tensor '" + name + "' is missing; rebuild the engine with `kiln build`");
  LinearWeight w;
  KILN_ASSIGN_OR_RETURN(w.data, weight(e, b, name));
  w.dtype = t->dtype;
  w.quant = quant_of(e, name);
  w.out_features = t->shape[0];
  w.in_features = t->shape[1];
  return w;
}

Result<EmbeddingWeight> embedding(const Engine& e, Backend& b, const std::string& name) {
  const EngineTensor* t = e.file->find(name);
  if (!t) return data_loss("engine tensor '" + name + "' is missing; rebuild the engine with `kiln build`");
  EmbeddingWeight w;
  w.quant = quant_of(e, name);
  Tensor host{const_cast<void*>(t->data), w.quant ? DType::kU8 : t->dtype,
              w.quant ? Shape{static_cast<int64_t>(t->nbytes)} : t->shape};
  KILN_ASSIGN_OR_RETURN(w.data, b.adopt_weight(host, e.file));
  w.vocab = t->shape[0];
  w.hidden = t->shape[1];
  return w;
}

Result<Tensor> optional_weight(const Engine& e, Backend& b, const std::string& name, bool present) {
  if (!present) return Tensor{};
  return weight(e, b, name);
}

}  // namespace

std::vector<Backend::LinearShape> LlamaModel::linear_shapes(const ModelConfig& c) {
  return {{c.qkv_dim(), c.hidden_size, c.qkv_bias, false},
          {c.hidden_size, c.q_dim(), c.o_bias, false},
          {2 * c.intermediate_size, c.hidden_size, c.mlp_bias, false},
          {c.hidden_size, c.intermediate_size, c.mlp_bias, false},
          {c.vocab_size, c.hidden_size, false, true}};
}

Result<std::unique_ptr<LlamaModel>> LlamaModel::load(const Engine& engine, Backend& backend, Communicator* comm) {
  if (engine.build.backend != backend.name())
    return failed_precondition("the engine was built for the " + engine.build.backend + " backend, not " +
                               backend.name() + "; rebuild it with `kiln build --backend " + backend.name() + "`");
  if (!engine.layout.single() && !comm)
    return invalid_argument(engine.layout.to_string() + " of a multi-rank engine needs a communicator (RankGroup)");
  std::unique_ptr<LlamaModel> m(new LlamaModel(engine, backend, engine.layout.single() ? nullptr : comm));
  KILN_RETURN_IF_ERROR(backend.use_tuning(engine.gemm_tuning));
  m->act_ = backend.activation_dtype(engine.build.dtype);
  const ModelConfig& c = m->local_;
  m->file_ = engine.file;
  if (engine.layout.first_stage()) {
    KILN_ASSIGN_OR_RETURN(m->embed_, embedding(engine, backend, "embed.weight"));
    m->embed_.vocab_start = engine.layout.vocab_start;
  }
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    LayerWeights w;
    KILN_ASSIGN_OR_RETURN(w.attn_norm, weight(engine, backend, p + "attn_norm.weight"));
    KILN_ASSIGN_OR_RETURN(w.qkv, linear(engine, backend, p + "attn.qkv.weight"));
    KILN_ASSIGN_OR_RETURN(w.qkv_bias, optional_weight(engine, backend, p + "attn.qkv.bias", c.qkv_bias));
    KILN_ASSIGN_OR_RETURN(w.q_norm, optional_weight(engine, backend, p + "attn.q_norm.weight", c.qk_norm));
    KILN_ASSIGN_OR_RETURN(w.k_norm, optional_weight(engine, backend, p + "attn.k_norm.weight", c.qk_norm));
    KILN_ASSIGN_OR_RETURN(w.o, linear(engine, backend, p + "attn.o.weight"));
    KILN_ASSIGN_OR_RETURN(w.o_bias, optional_weight(engine, backend, p + "attn.o.bias", c.o_bias));
    KILN_ASSIGN_OR_RETURN(w.mlp_norm, weight(engine, backend, p + "mlp_norm.weight"));
    KILN_ASSIGN_OR_RETURN(w.gate_up, linear(engine, backend, p + "mlp.gate_up.weight"));
    KILN_ASSIGN_OR_RETURN(w.gate_up_bias, optional_weight(engine, backend, p + "mlp.gate_up.bias", c.mlp_bias));
    KILN_ASSIGN_OR_RETURN(w.down, linear(engine, backend, p + "mlp.down.weight"));
    KILN_ASSIGN_OR_RETURN(w.down_bias, optional_weight(engine, backend, p + "mlp.down.bias", c.mlp_bias));
    m->layers_.push_back(w);
  }
  if (engine.layout.last_stage()) {
    KILN_ASSIGN_OR_RETURN(m->final_norm_, weight(engine, backend, "final_norm.weight"));
    KILN_ASSIGN_OR_RETURN(m->lm_head_, linear(engine, backend, "lm_head.weight"));
  }
  return m;
}

KvCacheSpec LlamaModel::kv_cache_spec(int num_blocks) const {
  KvCacheSpec s;
  s.num_layers = static_cast<int>(local_.num_layers);
  s.num_blocks = num_blocks;
  s.block_size = build_.tokens_per_block;
  s.num_kv_heads = static_cast<int>(local_.num_kv_heads);
  s.head_dim = static_cast<int>(local_.head_dim);
  s.dtype = build_.kv_cache_dtype;
  return s;
}

int32_t LlamaModel::attention_window(size_t layer) const {
  const int32_t w = static_cast<int32_t>(local_.layer_window[layer]);
  if (window_cap_ <= 0) return w;
  return w > 0 ? std::min(w, window_cap_) : window_cap_;
}

Status LlamaModel::ensure_workspace(int64_t T, int64_t R) {
  if (T <= ws_tokens_ && R <= ws_logit_rows_) return {};
  if (!queued_.empty())  // queued forwards use the current buffers (reserve_workspace avoids this)
    return failed_precondition("forward: the workspace would grow while a forward is queued; collect it first");
  T = std::max(T, ws_tokens_);
  R = std::max(R, ws_logit_rows_);
  const ModelConfig& c = local_;
  const int64_t gathered = layout_.tp_size > 1 ? R : 0;  // rank_logits_ rows
  // One allocation carved into 64-byte aligned views.
  struct Part {
    Tensor* t;
    DType dtype;
    Shape shape;
  };
  const Part parts[] = {
      {&argmax_, DType::kI32, {R}},
      {&log_probs_, DType::kF32, {R}},
      {&x_, act_, {T, c.hidden_size}},
      {&h_, act_, {T, c.hidden_size}},
      {&qkv_, act_, {T, c.qkv_dim()}},
      {&q_, act_, {T, c.q_dim()}},
      {&attn_, act_, {T, c.q_dim()}},
      {&proj_, act_, {T, c.hidden_size}},
      {&gate_up_, act_, {T, 2 * c.intermediate_size}},
      {&mlp_act_, act_, {T, c.intermediate_size}},
      {&final_h_, act_, {R, c.hidden_size}},
      {&logits_, DType::kF32, {R, config_.vocab_size}},  // logits are f32 on every backend
      {&rank_logits_, DType::kF32, {gathered, c.vocab_size}},
  };
  size_t total = 0;
  for (const Part& p : parts) total += (static_cast<size_t>(p.shape.numel()) * dtype_size(p.dtype) + 63) / 64 * 64;
  KILN_ASSIGN_OR_RETURN(ws_, backend_.allocate(total));
  size_t off = 0;
  for (const Part& p : parts) {
    *p.t = Tensor{static_cast<char*>(ws_.mem.get()) + off, p.dtype, p.shape};
    off += (p.t->nbytes() + 63) / 64 * 64;
  }
  if (gathered) KILN_RETURN_IF_ERROR(comm_->reserve(rank_logits_.nbytes()));
  ws_tokens_ = T;
  ws_logit_rows_ = R;
  for (auto& slot : host_slots_) slot = backend_.allocate_host(static_cast<size_t>(R) * 8);
  last_rows_ = 0;  // the ids of an earlier forward are gone with the old buffers
  return {};
}

Status LlamaModel::reserve_workspace() {
  return ensure_workspace(build_.max_num_tokens, std::min(build_.max_num_tokens, build_.max_batch_size * build_.max_beam_width));
}

// cos | sin of every token's position, with the frequencies of its sequence at this step
// (dynamic NTK and LongRoPE depend on the sequence length).
void LlamaModel::fill_cos_sin(const ForwardBatch& batch, float* cs) {
  const int rot = config_.rope.rotary_dim;
  for (size_t i = 0; i < batch.attention.seqs.size(); ++i) {
    const SequenceView& s = batch.attention.seqs[i];
    const int32_t len = i < batch.rope_seq_len.size() ? std::max(s.context_len, batch.rope_seq_len[i]) : s.context_len;
    // The frequencies change with the length only across rope_frequencies_key (a pow per frequency: computed
    // once per key, not per sequence per step).
    const int64_t key = rope_frequencies_key(config_.rope, len);
    if (!freqs_ || freqs_key_ != key) {
      freqs_ = rope_frequencies(config_.rope, len);
      freqs_key_ = key;
    }
    const float* rows = cos_sin_cache_.rows(*freqs_, s.context_len - s.num_new, s.num_new);
    std::copy(rows, rows + static_cast<size_t>(s.num_new) * rot, cs + static_cast<size_t>(s.first_token) * rot);
  }
}

Status LlamaModel::check_batch(const ForwardBatch& batch, const KvStorage& kv) const {
  KILN_RETURN_IF_ERROR(validate(batch, kv.spec));
  for (const auto& [t, row] : batch.previous_tokens)
    if (t < 0 || t >= static_cast<int64_t>(batch.token_ids.size()) || row < 0 || row >= last_rows_ ||
        last_output_ == ForwardOutput::kLogits)
      return invalid_argument("forward: a previous token refers to no id of the last forward");
  return {};
}

Status LlamaModel::validate(const ForwardBatch& batch, const KvCacheSpec& kv) const {
  const ModelConfig& c = config_;
  const int64_t T = static_cast<int64_t>(batch.token_ids.size());
  const int64_t R = static_cast<int64_t>(batch.logit_rows.size());
  if (T == 0) return invalid_argument("forward: empty batch");
  if (T > build_.max_num_tokens)
    return invalid_argument("forward: " + std::to_string(T) + " tokens exceed max_num_tokens=" +
                            std::to_string(build_.max_num_tokens) + " set at build");
  for (int32_t id : batch.token_ids)
    if (id < 0 || id >= c.vocab_size)
      return invalid_argument("token id " + std::to_string(id) + " is outside the vocabulary [0, " +
                              std::to_string(c.vocab_size) + ")");
  if (R > T) return invalid_argument("forward: more logit rows than tokens");
  for (int32_t r : batch.logit_rows)
    if (r < 0 || r >= T) return invalid_argument("forward: logit row out of range");
  for (const SequenceView& s : batch.attention.seqs) {
    const int64_t blocks_needed = (s.context_len + kv.block_size - 1) / kv.block_size;
    if (s.num_new <= 0 || s.context_len < s.num_new || s.first_token < 0 || s.first_token + s.num_new > T ||
        static_cast<int64_t>(s.block_table.size()) < blocks_needed)
      return invalid_argument("forward: inconsistent sequence layout");
    if (s.context_len > build_.max_seq_len)
      return invalid_argument("sequence length " + std::to_string(s.context_len) + " exceeds max_seq_len=" +
                              std::to_string(build_.max_seq_len) + " set at build");
    for (int32_t b : s.block_table)
      if (b < 0 || b >= kv.num_blocks) return invalid_argument("forward: KV block id out of range");
  }
  return {};
}

Status LlamaModel::forward(const ForwardBatch& batch, KvStorage& kv, std::vector<float>* logits,
                           std::vector<int32_t>* argmax) {
  KILN_RETURN_IF_ERROR(launch(batch, kv, argmax ? ForwardOutput::kArgmax : ForwardOutput::kLogits));
  ForwardResult out;
  KILN_RETURN_IF_ERROR(collect(out));
  if (argmax) *argmax = std::move(out.ids);
  else *logits = std::move(out.logits);
  return {};
}

Status LlamaModel::launch(const ForwardBatch& batch, KvStorage& kv, ForwardOutput output, const SamplingBatch* sampling) {
  const ModelConfig& c = local_;
  const int64_t T = static_cast<int64_t>(batch.token_ids.size());
  const int64_t R = static_cast<int64_t>(batch.logit_rows.size());
  KILN_RETURN_IF_ERROR(check_batch(batch, kv));
  if (queued_.size() >= 2 || (!queued_.empty() && queued_.back().output == ForwardOutput::kLogits))
    return failed_precondition("forward: launched with " + std::to_string(queued_.size()) +
                               " forwards queued (at most two, and a logits forward must be collected first)");
  if (output == ForwardOutput::kSample && (!sampling || static_cast<int64_t>(sampling->rows.size()) != R))
    return invalid_argument("forward: sampling needs one SamplingRow per logit row");
  KILN_RETURN_IF_ERROR(ensure_workspace(T, R));
  if (!batch.previous_tokens.empty() && last_rows_ == 0)
    return failed_precondition("forward: previous tokens after the workspace grew");
  // The inputs, packed in 4-byte words: [0] the number P of previous tokens, [1, 1 + 2T) their (token, row)
  // pairs (P used), then ids [T], logit rows [R], cos/sin [T, rot]. Offsets depend on T and R only, so a graph
  // recorded for a shape finds its inputs where it left them. begin_forward uploads them with the layout.
  const int rot = c.rope.rotary_dim;
  const int64_t P = static_cast<int64_t>(batch.previous_tokens.size());
  const int64_t at_ids = 1 + 2 * T, at_rows = at_ids + T, at_cs = at_rows + R, words = at_cs + T * rot;
  packed_.resize(static_cast<size_t>(words));
  int32_t* w = packed_.data();
  w[0] = static_cast<int32_t>(P);
  for (int64_t i = 0; i < P; ++i) {
    w[1 + 2 * i] = batch.previous_tokens[i].first;
    w[2 + 2 * i] = batch.previous_tokens[i].second;
  }
  std::fill(w + 1 + 2 * P, w + at_ids, 0);
  std::copy(batch.token_ids.begin(), batch.token_ids.end(), w + at_ids);
  std::copy(batch.logit_rows.begin(), batch.logit_rows.end(), w + at_rows);
  static_assert(sizeof(float) == sizeof(int32_t));
  fill_cos_sin(batch, reinterpret_cast<float*>(w + at_cs));
  if (!layout_.last_stage() && !batch.previous_tokens.empty())
    return invalid_argument("forward: previous tokens need one pipeline stage (the ids are on the last one)");
  const bool outputs = layout_.last_stage();
  if (output == ForwardOutput::kSample && outputs) KILN_RETURN_IF_ERROR(backend_.begin_sampling(*sampling));
  KILN_ASSIGN_OR_RETURN(Tensor inputs, backend_.begin_forward(batch.attention, static_cast<int32_t>(R), output, packed_));
  int32_t* in = inputs.as<int32_t>();
  Tensor pairs{in, DType::kI32, {at_ids}}, ids{in + at_ids, DType::kI32, {T}}, rows{in + at_rows, DType::kI32, {R}},
      cos_sin{in + at_cs, DType::kF32, {T, rot}};
  Tensor x = x_.rows(0, T),
         h = h_.rows(0, T), qkv = qkv_.rows(0, T), q = q_.rows(0, T), attn = attn_.rows(0, T),
         proj = proj_.rows(0, T), gate_up = gate_up_.rows(0, T), act = mlp_act_.rows(0, T),
         final_h = final_h_.rows(0, R), out_logits = logits_.rows(0, R), out_argmax = argmax_.rows(0, R),
         out_log_probs = log_probs_.rows(0, R), rank_logits = rank_logits_.rows(0, layout_.tp_size > 1 ? R : 0);


  const float eps = static_cast<float>(c.rms_norm_eps);
  QkvLayout qkv_layout{static_cast<int>(c.num_heads), static_cast<int>(c.num_kv_heads), static_cast<int>(c.head_dim),
                       c.rope.rotary_dim, eps, nullptr, nullptr};
  AttentionParams attn_params{static_cast<int>(c.num_heads), static_cast<int>(c.num_kv_heads),
                              static_cast<int>(c.head_dim), 1.0f / std::sqrt(static_cast<float>(c.head_dim)), 0};
  auto bias = [](const Tensor& t) { return t.data ? &t : nullptr; };

  // Device side: only backend ops over the buffers above (a GPU may replay them as a graph).
  backend_.run_forward_ops([&] {
    // x: the residual stream [T, hidden]. Unfused, each block's output (proj) is added into x by the next
    // norm (add_rmsnorm: one pass); fused (decode sizes on a GPU), the block's linears add into x themselves.
    // With several ranks the row-parallel linears (o, down) make partial sums that an all-reduce completes
    // before they join x: the unfused path.
    const bool fused = backend_.fuses_block_linears(T) && layout_.single();
    auto reduce = [&](Tensor& t) {  // tensor parallelism: sum the tp ranks' partial outputs
      if (layout_.tp_size > 1) comm_->all_reduce_sum(t);
    };
    if (layout_.first_stage()) {
      // Tokens the previous forward picked on the device, from its ids (argmax_) before this one overwrites them.
      backend_.scatter_tokens(argmax_, pairs, ids);
      backend_.embedding(embed_, ids, x);  // a vocab-parallel rank embeds its ids, zeros for the others'
      reduce(x);
    } else {
      // The previous stage's residual stream and its last MLP output, still to be added (the unfused path).
      comm_->recv_prev(x);
      comm_->recv_prev(proj);
    }
    for (size_t l = 0; l < layers_.size(); ++l) {
      LayerWeights& w = layers_[l];
      if (fused) {
        backend_.rmsnorm_linear(x, w.attn_norm, eps, h, w.qkv, bias(w.qkv_bias), qkv);
      } else {
        if (l == 0 && layout_.first_stage()) backend_.rmsnorm(x, w.attn_norm, eps, h);
        else backend_.add_rmsnorm(x, proj, w.attn_norm, eps, h);  // adds the previous layer's MLP output
        backend_.linear(h, w.qkv, bias(w.qkv_bias), qkv);
      }
      qkv_layout.q_norm = bias(w.q_norm);
      qkv_layout.k_norm = bias(w.k_norm);
      attn_params.window = attention_window(l);
      backend_.rope_kv_write_attention(qkv, qkv_layout, cos_sin, batch.attention, kv.layers[l], q, attn_params, attn);
      if (fused) {
        backend_.linear_add(attn, w.o, bias(w.o_bias), proj, x);
        backend_.rmsnorm_linear(x, w.mlp_norm, eps, h, w.gate_up, bias(w.gate_up_bias), gate_up);
        backend_.silu_mul_linear_add(gate_up, act, w.down, bias(w.down_bias), proj, x);
      } else {
        backend_.linear(attn, w.o, bias(w.o_bias), proj);
        reduce(proj);
        backend_.add_rmsnorm(x, proj, w.mlp_norm, eps, h);
        backend_.linear(h, w.gate_up, bias(w.gate_up_bias), gate_up);
        backend_.silu_mul(gate_up, act);
        backend_.linear(act, w.down, bias(w.down_bias), proj);
        reduce(proj);
      }
    }
    if (!layout_.last_stage()) {
      comm_->send_next(x);
      comm_->send_next(proj);
      return;
    }
    // Only the rows whose logits are wanted go through the final norm and the LM head.
    Tensor last = h.rows(0, R);
    backend_.gather_rows(x, rows, last);
    if (fused) {  // the final norm as the LM head's prologue where the backend fuses it
      backend_.rmsnorm_linear(last, final_norm_, eps, final_h, lm_head_, nullptr, out_logits);
    } else {
      backend_.gather_rows(proj, rows, final_h);
      backend_.add_rmsnorm(last, final_h, final_norm_, eps, final_h);
      if (layout_.tp_size > 1) {  // vocab-parallel LM head: this rank's columns, then all of them everywhere
        backend_.linear(final_h, lm_head_, nullptr, rank_logits);
        comm_->all_gather_columns(rank_logits, out_logits);
      } else {
        backend_.linear(final_h, lm_head_, nullptr, out_logits);
      }
    }
    if (output == ForwardOutput::kArgmax) backend_.argmax_rows(out_logits, out_argmax);
    if (output == ForwardOutput::kSample) backend_.sample_rows(out_logits, out_argmax, out_log_probs);
  });
  Queued job;
  job.outputs = outputs;
  job.output = output;
  job.rows = R;
  job.log_probs = output == ForwardOutput::kSample && sampling->log_probs;
  if (outputs && output != ForwardOutput::kLogits) {
    job.slot = next_slot_;
    next_slot_ ^= 1;
    char* host = static_cast<char*>(host_slots_[job.slot].get());
    backend_.download_async(out_argmax, host);
    if (job.log_probs) backend_.download_async(out_log_probs, host + static_cast<size_t>(ws_logit_rows_) * 4);
  }
  job.fence = backend_.record_fence();
  queued_.push_back(job);
  last_output_ = output;
  last_rows_ = R;
  return {};
}

Status LlamaModel::collect(ForwardResult& out) {
  if (queued_.empty()) return failed_precondition("forward: collect without a queued forward");
  const Queued q = queued_.front();
  queued_.erase(queued_.begin());
  out.ids.clear();
  out.log_probs.clear();
  out.logits.clear();
  if (!q.outputs) {  // a stage before the last: its part is done when the fence is
    backend_.wait_fence(q.fence);
    return {};
  }
  if (q.output == ForwardOutput::kLogits) {
    out.logits.resize(static_cast<size_t>(q.rows) * config_.vocab_size);
    backend_.download(logits_.rows(0, q.rows), out.logits.data());
    backend_.synchronize();
    return {};
  }
  backend_.wait_fence(q.fence);
  const char* host = static_cast<const char*>(host_slots_[q.slot].get());
  const int32_t* ids = reinterpret_cast<const int32_t*>(host);
  out.ids.assign(ids, ids + q.rows);
  if (q.log_probs) {
    const float* lp = reinterpret_cast<const float*>(host + static_cast<size_t>(ws_logit_rows_) * 4);
    out.log_probs.assign(lp, lp + q.rows);
  }
  return {};
}

}  // namespace kiln
