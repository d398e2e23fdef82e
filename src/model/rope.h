// Rotary position embedding (RoPE): configuration and frequencies.
//
// This module turns a model's rope settings into the inverse frequencies and the cos/sin values of one
// position. Applying the rotation (rotate_half layout: element i of a head pairs with element
// i + rotary_dim/2; elements past rotary_dim are left alone) is done by the attention code.
//
// The numbers follow Hugging Face transformers 5 (checked against 5.17.0, see
// tests/data/rope/make_rope_reference.py): inv_freq is a float32 tensor there, so every step that
// transformers performs on float32 tensors is performed here in float32 as well.
//
// Dynamic NTK in transformers 5, precisely (what rope_frequencies() reproduces):
//   * In each forward the rotary module takes seq_len = max(position_ids) + 1 of that forward (with a KV
//     cache a decode step at position p gives p + 1), not the prompt length and not the cache capacity.
//   * The threshold and the denominator are both config.max_position_embeddings. A
//     rope_parameters.original_max_position_embeddings is NOT used by the dynamic type.
//   * seq_len > max_position_embeddings: base' = theta * (factor * seq_len / max - (factor - 1))
//     ^ (dim / (dim - 2)), evaluated on float32 tensors because seq_len is a tensor there.
//     seq_len <= max_position_embeddings: the unscaled frequencies.
//   * transformers keeps state between forwards: it recomputes only when seq_len exceeds the largest
//     seq_len seen so far, and resets to the unscaled frequencies once a forward has seq_len < max.
//     Within one sequence (positions only grow) that equals the stateless function here; across
//     unrelated requests transformers can reuse stale frequencies of an earlier, longer request, which
//     Kiln deliberately does not copy.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace kiln {

enum class RopeType { kDefault, kLinear, kDynamic, kLlama3, kYarn, kLongRope };

// "default", "linear", "dynamic", "llama3", "yarn", "longrope".
const char* rope_type_name(RopeType t);
// Kiln's canonical names only (the ones rope_type_name returns).
std::optional<RopeType> rope_type_from_name(std::string_view name);

struct RopeConfig {
  RopeType type = RopeType::kDefault;
  double theta = 10000.0;
  int head_dim = 0;     // per-head size
  int rotary_dim = 0;   // head_dim * partial_rotary_factor (even); the first rotary_dim elements rotate
  double factor = 1.0;  // linear / dynamic / llama3 / yarn; longrope: the resolved context ratio
  // llama3 / yarn / longrope: pretraining context. 0 for the other types (dynamic uses
  // max_position_embeddings, as transformers does).
  int64_t original_max_position_embeddings = 0;
  int64_t max_position_embeddings = 0;                   // dynamic threshold; 0 when the config has none
  double low_freq_factor = 1.0, high_freq_factor = 4.0;  // llama3
  double beta_fast = 32.0, beta_slow = 1.0;              // yarn
  std::optional<double> mscale, mscale_all_dim, attention_factor;  // yarn / longrope
  bool truncate = true;                                            // yarn
  std::vector<double> short_factor, long_factor;                   // longrope, rotary_dim/2 each

  bool operator==(const RopeConfig&) const = default;

  // Kiln's own canonical form: {"type", "theta", "head_dim", "rotary_dim", "factor", ...}; optional
  // values are written only when set. from_json reads exactly that form back (unknown keys refused)
  // and validates it.
  nlohmann::json to_json() const;
  static Result<RopeConfig> from_json(const nlohmann::json& j);
};

// Checks a RopeConfig for internal consistency (dims, positive factors, lengths). OK or InvalidArgument.
Status validate_rope_config(const RopeConfig& cfg);

// Reads the rope settings of a Hugging Face config.json object:
//   * transformers 5: `rope_parameters` {rope_type, rope_theta, factor, ...};
//   * transformers 4: `rope_scaling` {type | rope_type, factor, ...} plus top-level `rope_theta`;
//     a non-empty rope_scaling wins over rope_parameters (as in transformers 5); both absent or null
//     means the default rope.
//   * rope_theta inside the dict wins over the top-level one; neither gives 10000.
//   * `partial_rotary_factor` top-level or inside (both present and different is refused).
//   * llama3 / yarn / longrope: original_max_position_embeddings comes from the top level first (Phi-3
//     keeps it there; transformers gives it priority), then from the dict, then max_position_embeddings.
//   * "su" is the old name of "longrope"; Phi-3 configs (model_type "phi3") also map "yarn" to
//     "longrope", as transformers' Phi3Config does.
//   * longrope / yarn without `factor`: factor = max_position_embeddings / original.
// head_dim is the model's per-head size. Unknown rope types (and per-layer-type rope dicts) are refused
// with Unimplemented naming them; bad or missing values give InvalidArgument naming the field.
Result<RopeConfig> rope_config_from_hf(const nlohmann::json& config, int head_dim);

struct RopeFrequencies {
  std::vector<float> inv_freq;     // [rotary_dim / 2]
  float attention_scaling = 1.0f;  // multiplies cos and sin (yarn, longrope)
};

// Frequencies for a forward step whose largest position + 1 is seq_len (see the dynamic NTK note above).
// longrope: long_factor when seq_len > original_max_position_embeddings, else short_factor; its
// attention scaling is attention_factor if given, else sqrt(1 + ln(factor) / ln(original)) (1 when
// factor <= 1). yarn: interpolation/extrapolation blend over the beta_fast/beta_slow ramp, attention
// scaling from attention_factor or mscale/mscale_all_dim. llama3: wavelength-based smoothing.
// `cfg` must be valid (rope_config_from_hf / from_json output).
RopeFrequencies rope_frequencies(const RopeConfig& cfg, int64_t seq_len);

// What of seq_len rope_frequencies depends on: equal keys give equal frequencies (longrope: short or long set;
// dynamic: one set up to max_position_embeddings, then one per length; the other types: one set).
int64_t rope_frequencies_key(const RopeConfig& cfg, int64_t seq_len);

// cos/sin of one position, i < rotary_dim/2: out_cos[i] = cos(float(position) * inv_freq[i]) *
// attention_scaling; the angle is rounded to float32 before cos/sin, as transformers does.
void rope_cos_sin(const RopeFrequencies& f, int64_t position, float* out_cos, float* out_sin);

// rope_cos_sin rows of consecutive positions for the last few frequency sets seen, computed once and grown
// on demand, so that a forward copies rows instead of calling cos/sin (a 1024-token prompt is ~100K calls,
// milliseconds of host time before the GPU can start). Rows are [cos | sin], rotary_dim floats each.
// Not thread-safe (one model's forwards are serial).
class RopeCosSinCache {
 public:
  // Rows of positions [first, first + count) of frequencies `f`; valid until the next call.
  const float* rows(const RopeFrequencies& f, int64_t first, int64_t count);

 private:
  struct Table {
    RopeFrequencies f;
    std::vector<float> cos_sin;  // [positions, rotary_dim]
    int64_t positions = 0;
  };
  static constexpr size_t kMaxTables = 4;  // longrope has two sets; dynamic NTK a new one per length
  std::vector<Table> tables_;             // most recently used first
};

}  // namespace kiln
