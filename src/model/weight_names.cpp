#include "model/weight_names.h"

namespace kiln {

std::vector<WeightSpec> weight_specs(const ModelConfig& c) {
  const bool phi3 = c.architecture == "Phi3ForCausalLM";  // ships fused qkv_proj and gate_up_proj
  const int64_t H = c.hidden_size, I = c.intermediate_size;
  std::vector<WeightSpec> w;
  w.push_back({"embed.weight", {c.vocab_size, H}, WeightKind::kEmbedding, {"model.embed_tokens.weight"}});
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string hf = "model.layers." + std::to_string(l) + ".";
    const std::string k = "layers." + std::to_string(l) + ".";
    w.push_back({k + "attn_norm.weight", {H}, WeightKind::kVector, {hf + "input_layernorm.weight"}});
    if (phi3) {
      w.push_back({k + "attn.qkv.weight", {c.qkv_dim(), H}, WeightKind::kLinear, {hf + "self_attn.qkv_proj.weight"}});
    } else {
      w.push_back({k + "attn.qkv.weight", {c.qkv_dim(), H}, WeightKind::kLinear,
                   {hf + "self_attn.q_proj.weight", hf + "self_attn.k_proj.weight", hf + "self_attn.v_proj.weight"}});
    }
    if (c.qkv_bias)
      w.push_back({k + "attn.qkv.bias", {c.qkv_dim()}, WeightKind::kVector,
                   {hf + "self_attn.q_proj.bias", hf + "self_attn.k_proj.bias", hf + "self_attn.v_proj.bias"}});
    if (c.qk_norm) {
      w.push_back({k + "attn.q_norm.weight", {c.head_dim}, WeightKind::kVector, {hf + "self_attn.q_norm.weight"}});
      w.push_back({k + "attn.k_norm.weight", {c.head_dim}, WeightKind::kVector, {hf + "self_attn.k_norm.weight"}});
    }
    w.push_back({k + "attn.o.weight", {H, c.q_dim()}, WeightKind::kLinear, {hf + "self_attn.o_proj.weight"}});
    if (c.o_bias) w.push_back({k + "attn.o.bias", {H}, WeightKind::kVector, {hf + "self_attn.o_proj.bias"}});
    w.push_back({k + "mlp_norm.weight", {H}, WeightKind::kVector, {hf + "post_attention_layernorm.weight"}});
    if (phi3) {
      w.push_back({k + "mlp.gate_up.weight", {2 * I, H}, WeightKind::kLinear, {hf + "mlp.gate_up_proj.weight"}});
    } else {
      w.push_back({k + "mlp.gate_up.weight", {2 * I, H}, WeightKind::kLinear,
                   {hf + "mlp.gate_proj.weight", hf + "mlp.up_proj.weight"}});
    }
    if (c.mlp_bias)
      w.push_back({k + "mlp.gate_up.bias", {2 * I}, WeightKind::kVector, {hf + "mlp.gate_proj.bias", hf + "mlp.up_proj.bias"}});
    w.push_back({k + "mlp.down.weight", {H, I}, WeightKind::kLinear, {hf + "mlp.down_proj.weight"}});
    if (c.mlp_bias) w.push_back({k + "mlp.down.bias", {H}, WeightKind::kVector, {hf + "mlp.down_proj.bias"}});
  }
  w.push_back({"final_norm.weight", {H}, WeightKind::kVector, {"model.norm.weight"}});
  if (!c.tie_word_embeddings)
    w.push_back({"lm_head.weight", {c.vocab_size, H}, WeightKind::kLinear, {"lm_head.weight"}});
  return w;
}

std::vector<WeightSpec> rank_weight_specs(const ModelConfig& c, const RankLayout& r) {
  if (r.single()) return weight_specs(c);
  const ModelConfig local = rank_model(c, r);
  std::vector<WeightSpec> out;
  for (WeightSpec& s : weight_specs(local)) {
    if (s.name == "embed.weight" && !r.first_stage()) continue;
    if ((s.name == "final_norm.weight" || s.name == "lm_head.weight") && !r.last_stage()) continue;
    out.push_back(std::move(s));
  }
  if (c.tie_word_embeddings && r.last_stage())
    out.push_back({"lm_head.weight", {local.vocab_size, local.hidden_size}, WeightKind::kLinear, {"lm_head.weight"}});
  return out;
}

std::string whole_model_weight_name(const ModelConfig& c, const RankLayout& r, const std::string& local) {
  if (local == "lm_head.weight" && c.tie_word_embeddings) return "embed.weight";
  const std::string prefix = "layers.";
  if (local.compare(0, prefix.size(), prefix) != 0) return local;
  const size_t dot = local.find('.', prefix.size());
  const int64_t l = std::stoll(local.substr(prefix.size(), dot - prefix.size()));
  return prefix + std::to_string(r.first_layer + l) + local.substr(dot);
}

}  // namespace kiln
