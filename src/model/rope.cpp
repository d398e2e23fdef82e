#include "model/rope.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <set>
#include <string>

namespace kiln {

using nlohmann::json;

namespace {

constexpr double kPi = 3.141592653589793;

// ---- float32 arithmetic as torch performs it ---------------------------------------------------------
// A Python scalar meeting a float32 tensor is converted to float32 first; each elementwise op rounds to
// float32. pow is evaluated in double and rounded once (torch's float pow is within an ulp of that).

float f32(double x) { return static_cast<float>(x); }
float pow_f32(float base, float exponent) {
  return static_cast<float>(std::pow(static_cast<double>(base), static_cast<double>(exponent)));
}
// torch.arange(0, dim, 2).float() / dim, element i.
float exponent_f32(int i, int dim) { return static_cast<float>(2 * i) / static_cast<float>(dim); }

// ---- JSON helpers ------------------------------------------------------------------------------------

std::string num_str(double v) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.10g", v);
  return buf;
}

std::string show(const json& v) {
  std::string s = v.dump();
  if (s.size() > 80) s = s.substr(0, 77) + "...";
  return s;
}

// The value of `key` in `obj`, or nullptr when absent or null (null means "not given").
const json* get(const json& obj, const char* key) {
  if (!obj.is_object()) return nullptr;
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

Status read_number(const json* v, const std::string& name, std::optional<double>* out) {
  out->reset();
  if (v == nullptr) return {};
  if (!v->is_number()) return invalid_argument(name + " must be a number, got " + show(*v));
  double d = v->get<double>();
  if (!std::isfinite(d)) return invalid_argument(name + " must be finite, got " + show(*v));
  *out = d;
  return {};
}

Status read_int(const json* v, const std::string& name, std::optional<int64_t>* out) {
  out->reset();
  if (v == nullptr) return {};
  if (v->is_number_integer()) {
    *out = v->get<int64_t>();
    return {};
  }
  if (v->is_number_float()) {
    double d = v->get<double>();
    if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.0e15) {
      *out = static_cast<int64_t>(d);
      return {};
    }
  }
  return invalid_argument(name + " must be an integer, got " + show(*v));
}

Status read_factor_list(const json* v, const std::string& name, std::vector<double>* out) {
  out->clear();
  if (v == nullptr) return invalid_argument(name + " is required for rope type longrope");
  if (!v->is_array()) return invalid_argument(name + " must be a list of numbers, got " + show(*v));
  for (size_t i = 0; i < v->size(); ++i) {
    const json& e = (*v)[i];
    if (!e.is_number() || !std::isfinite(e.get<double>()) || e.get<double>() <= 0.0) {
      return invalid_argument(name + "[" + std::to_string(i) + "] must be a number > 0, got " + show(e));
    }
    out->push_back(e.get<double>());
  }
  return {};
}

Status need_positive(double v, const std::string& name) {
  if (!(v > 0.0) || !std::isfinite(v)) return invalid_argument(name + " must be > 0, got " + num_str(v));
  return {};
}

// transformers' yarn helpers (double precision, Python floats there).
double yarn_correction_dim(double num_rotations, int dim, double base, double max_pos) {
  return (dim * std::log(max_pos / (num_rotations * 2 * kPi))) / (2 * std::log(base));
}
double yarn_mscale(double scale, double mscale) {
  if (scale <= 1.0) return 1.0;
  return 0.1 * mscale * std::log(scale) + 1.0;
}

}  // namespace

const char* rope_type_name(RopeType t) {
  switch (t) {
    case RopeType::kDefault:
      return "default";
    case RopeType::kLinear:
      return "linear";
    case RopeType::kDynamic:
      return "dynamic";
    case RopeType::kLlama3:
      return "llama3";
    case RopeType::kYarn:
      return "yarn";
    case RopeType::kLongRope:
      return "longrope";
  }
  return "?";
}

std::optional<RopeType> rope_type_from_name(std::string_view name) {
  for (RopeType t : {RopeType::kDefault, RopeType::kLinear, RopeType::kDynamic, RopeType::kLlama3,
                     RopeType::kYarn, RopeType::kLongRope}) {
    if (name == rope_type_name(t)) return t;
  }
  return std::nullopt;
}

// ---- validation ----------------------------------------------------------------------------------------

Status validate_rope_config(const RopeConfig& c) {
  const std::string type = rope_type_name(c.type);
  if (c.head_dim <= 0 || c.head_dim % 2 != 0) {
    return invalid_argument("RoPE head_dim must be a positive even number, got " +
                            std::to_string(c.head_dim));
  }
  if (c.rotary_dim <= 0 || c.rotary_dim % 2 != 0 || c.rotary_dim > c.head_dim) {
    return invalid_argument("RoPE rotary_dim must be even and in [2, head_dim=" + std::to_string(c.head_dim) +
                            "], got " + std::to_string(c.rotary_dim));
  }
  if (!(c.theta > 1.0) || !std::isfinite(c.theta)) {
    return invalid_argument("RoPE theta (rope_theta) must be > 1, got " + num_str(c.theta));
  }
  KILN_RETURN_IF_ERROR(need_positive(c.factor, "RoPE factor"));
  if (c.max_position_embeddings < 0) return invalid_argument("RoPE max_position_embeddings must be >= 0");
  if (c.original_max_position_embeddings < 0) {
    return invalid_argument("RoPE original_max_position_embeddings must be >= 0");
  }
  const bool uses_original =
      c.type == RopeType::kLlama3 || c.type == RopeType::kYarn || c.type == RopeType::kLongRope;
  if (uses_original && c.original_max_position_embeddings <= 0) {
    return invalid_argument("RoPE original_max_position_embeddings is required (> 0) for rope type " + type);
  }
  if (c.type == RopeType::kDynamic) {
    if (c.max_position_embeddings <= 0) {
      return invalid_argument("max_position_embeddings is required (> 0) for rope type dynamic");
    }
    if (c.rotary_dim <= 2) return invalid_argument("rope type dynamic needs rotary_dim > 2");
  }
  if (c.type == RopeType::kLlama3) {
    KILN_RETURN_IF_ERROR(need_positive(c.low_freq_factor, "RoPE low_freq_factor"));
    if (!(c.high_freq_factor > c.low_freq_factor) || !std::isfinite(c.high_freq_factor)) {
      return invalid_argument("RoPE high_freq_factor (" + num_str(c.high_freq_factor) +
                              ") must be greater than low_freq_factor (" + num_str(c.low_freq_factor) + ")");
    }
  }
  if (c.type == RopeType::kYarn) {
    KILN_RETURN_IF_ERROR(need_positive(c.beta_fast, "RoPE beta_fast"));
    KILN_RETURN_IF_ERROR(need_positive(c.beta_slow, "RoPE beta_slow"));
    for (const auto* m : {&c.mscale, &c.mscale_all_dim}) {
      if (m->has_value() && !std::isfinite(**m)) return invalid_argument("RoPE mscale values must be finite");
    }
  } else if (c.mscale || c.mscale_all_dim) {
    return invalid_argument("RoPE mscale / mscale_all_dim apply to rope type yarn only, not " + type);
  }
  if (c.attention_factor) {
    if (c.type != RopeType::kYarn && c.type != RopeType::kLongRope) {
      return invalid_argument("RoPE attention_factor applies to yarn and longrope only, not " + type);
    }
    KILN_RETURN_IF_ERROR(need_positive(*c.attention_factor, "RoPE attention_factor"));
  }
  if (c.type == RopeType::kLongRope) {
    const size_t half = static_cast<size_t>(c.rotary_dim / 2);
    for (const auto& [list, name] :
         {std::pair{&c.short_factor, "short_factor"}, {&c.long_factor, "long_factor"}}) {
      if (list->size() != half) {
        return invalid_argument(std::string("RoPE ") + name + " has " + std::to_string(list->size()) +
                                " entries; rope type longrope needs rotary_dim/2 = " + std::to_string(half));
      }
      for (double v : *list) KILN_RETURN_IF_ERROR(need_positive(v, std::string("RoPE ") + name + " entries"));
    }
  } else if (!c.short_factor.empty() || !c.long_factor.empty()) {
    return invalid_argument("RoPE short_factor / long_factor apply to rope type longrope only, not " + type);
  }
  return {};
}

// ---- canonical JSON --------------------------------------------------------------------------------------

json RopeConfig::to_json() const {
  json j = {
      {"type", rope_type_name(type)},
      {"theta", theta},
      {"head_dim", head_dim},
      {"rotary_dim", rotary_dim},
      {"factor", factor},
      {"original_max_position_embeddings", original_max_position_embeddings},
      {"max_position_embeddings", max_position_embeddings},
      {"low_freq_factor", low_freq_factor},
      {"high_freq_factor", high_freq_factor},
      {"beta_fast", beta_fast},
      {"beta_slow", beta_slow},
      {"truncate", truncate},
      {"short_factor", short_factor},
      {"long_factor", long_factor},
  };
  if (mscale) j["mscale"] = *mscale;
  if (mscale_all_dim) j["mscale_all_dim"] = *mscale_all_dim;
  if (attention_factor) j["attention_factor"] = *attention_factor;
  return j;
}

Result<RopeConfig> RopeConfig::from_json(const json& j) {
  if (!j.is_object()) return invalid_argument("RoPE config: expected a JSON object, got " + show(j));
  static const std::set<std::string> kKeys = {"type",
                                              "theta",
                                              "head_dim",
                                              "rotary_dim",
                                              "factor",
                                              "original_max_position_embeddings",
                                              "max_position_embeddings",
                                              "low_freq_factor",
                                              "high_freq_factor",
                                              "beta_fast",
                                              "beta_slow",
                                              "truncate",
                                              "short_factor",
                                              "long_factor",
                                              "mscale",
                                              "mscale_all_dim",
                                              "attention_factor"};
  for (const auto& item : j.items()) {
    if (!kKeys.count(item.key())) return invalid_argument("RoPE config: unknown key \"" + item.key() + "\"");
  }
  RopeConfig c;
  const json* t = get(j, "type");
  if (t == nullptr || !t->is_string()) return invalid_argument("RoPE config: \"type\" must be a string");
  auto type = rope_type_from_name(t->get<std::string>());
  if (!type) return unimplemented("RoPE config: unknown rope type \"" + t->get<std::string>() + "\"");
  c.type = *type;

  std::optional<double> d;
  std::optional<int64_t> i;
  auto required_int = [&](const char* key, int* out) -> Status {
    KILN_RETURN_IF_ERROR(read_int(get(j, key), std::string("RoPE config: ") + key, &i));
    if (!i) return invalid_argument(std::string("RoPE config: \"") + key + "\" is required");
    if (*i < INT32_MIN || *i > INT32_MAX)
      return invalid_argument(std::string("RoPE config: ") + key + " out of range");
    *out = static_cast<int>(*i);
    return {};
  };
  KILN_RETURN_IF_ERROR(read_number(get(j, "theta"), "RoPE config: theta", &d));
  if (!d) return invalid_argument("RoPE config: \"theta\" is required");
  c.theta = *d;
  KILN_RETURN_IF_ERROR(required_int("head_dim", &c.head_dim));
  KILN_RETURN_IF_ERROR(required_int("rotary_dim", &c.rotary_dim));
  for (auto [key, out] : {std::pair{"factor", &c.factor},
                          {"low_freq_factor", &c.low_freq_factor},
                          {"high_freq_factor", &c.high_freq_factor},
                          {"beta_fast", &c.beta_fast},
                          {"beta_slow", &c.beta_slow}}) {
    KILN_RETURN_IF_ERROR(read_number(get(j, key), std::string("RoPE config: ") + key, &d));
    if (d) *out = *d;
  }
  for (auto [key, out] : {std::pair{"mscale", &c.mscale},
                          {"mscale_all_dim", &c.mscale_all_dim},
                          {"attention_factor", &c.attention_factor}}) {
    KILN_RETURN_IF_ERROR(read_number(get(j, key), std::string("RoPE config: ") + key, out));
  }
  for (auto [key, out] : {std::pair{"original_max_position_embeddings", &c.original_max_position_embeddings},
                          {"max_position_embeddings", &c.max_position_embeddings}}) {
    KILN_RETURN_IF_ERROR(read_int(get(j, key), std::string("RoPE config: ") + key, &i));
    if (i) *out = *i;
  }
  if (const json* v = get(j, "truncate")) {
    if (!v->is_boolean()) return invalid_argument("RoPE config: truncate must be a boolean, got " + show(*v));
    c.truncate = v->get<bool>();
  }
  for (auto [key, out] : {std::pair{"short_factor", &c.short_factor}, {"long_factor", &c.long_factor}}) {
    const json* v = get(j, key);
    if (v == nullptr) continue;
    if (!v->is_array()) return invalid_argument(std::string("RoPE config: ") + key + " must be a list");
    for (const json& e : *v) {
      if (!e.is_number()) return invalid_argument(std::string("RoPE config: ") + key + " must hold numbers");
      out->push_back(e.get<double>());
    }
  }
  KILN_RETURN_IF_ERROR(validate_rope_config(c));
  return c;
}

// ---- Hugging Face config.json ----------------------------------------------------------------------------

Result<RopeConfig> rope_config_from_hf(const json& config, int head_dim) {
  if (!config.is_object())
    return invalid_argument("config.json: expected a JSON object, got " + show(config));
  if (head_dim <= 0 || head_dim % 2 != 0) {
    return invalid_argument("head_dim must be a positive even number, got " + std::to_string(head_dim));
  }

  // Which dict holds the rope settings. transformers 5 does `rope_scaling or rope_parameters`.
  const json* scaling = get(config, "rope_scaling");
  const json* params = get(config, "rope_parameters");
  if (scaling && !scaling->is_object()) {
    return invalid_argument("rope_scaling must be an object or null, got " + show(*scaling));
  }
  if (params && !params->is_object()) {
    return invalid_argument("rope_parameters must be an object or null, got " + show(*params));
  }
  static const json kEmpty = json::object();
  std::string where = "rope_parameters";
  const json* dict = &kEmpty;
  if (scaling && !scaling->empty()) {
    dict = scaling;
    where = "rope_scaling";
  } else if (params) {
    dict = params;
  }
  const json& d = *dict;
  auto field = [&](const char* key) { return where + "." + key; };
  for (const auto& item : d.items()) {
    if (item.value().is_object()) {
      return unimplemented("per-layer-type RoPE parameters are not supported (" + where + "." + item.key() +
                           " is an object)");
    }
  }

  // Type.
  std::string type_name = "default";
  std::string type_field;
  for (const char* key : {"rope_type", "type"}) {
    if (const json* v = get(d, key)) {
      if (!v->is_string()) return invalid_argument(field(key) + " must be a string, got " + show(*v));
      type_name = v->get<std::string>();
      type_field = field(key);
      break;
    }
  }
  std::string model_type;
  if (const json* mt = get(config, "model_type"); mt && mt->is_string()) model_type = mt->get<std::string>();
  RopeConfig c;
  if (type_name == "su" || (type_name == "yarn" && model_type == "phi3")) {
    c.type = RopeType::kLongRope;
  } else if (auto t = rope_type_from_name(type_name)) {
    c.type = *t;
  } else {
    return unimplemented("unknown RoPE type \"" + type_name + "\" (" + type_field +
                         "); Kiln supports default, linear, dynamic, llama3, yarn, longrope (su)");
  }
  const std::string type = rope_type_name(c.type);

  // Theta: the dict's first, then the top level, then 10000.
  std::optional<double> theta_in, theta_top;
  KILN_RETURN_IF_ERROR(read_number(get(d, "rope_theta"), field("rope_theta"), &theta_in));
  KILN_RETURN_IF_ERROR(read_number(get(config, "rope_theta"), "rope_theta", &theta_top));
  c.theta = theta_in ? *theta_in : theta_top ? *theta_top : 10000.0;
  if (!(c.theta > 1.0)) {
    return invalid_argument((theta_in ? field("rope_theta") : std::string("rope_theta")) +
                            " must be > 1, got " + num_str(c.theta));
  }

  // Partial rotary.
  std::optional<double> prf_in, prf_top;
  KILN_RETURN_IF_ERROR(read_number(get(d, "partial_rotary_factor"), field("partial_rotary_factor"), &prf_in));
  KILN_RETURN_IF_ERROR(read_number(get(config, "partial_rotary_factor"), "partial_rotary_factor", &prf_top));
  if (prf_in && prf_top && *prf_in != *prf_top) {
    return invalid_argument("partial_rotary_factor is " + num_str(*prf_top) + " at the top level but " +
                            num_str(*prf_in) + " in " + where);
  }
  const double prf = prf_in ? *prf_in : prf_top ? *prf_top : 1.0;
  if (!(prf > 0.0 && prf <= 1.0)) {
    return invalid_argument("partial_rotary_factor must be in (0, 1], got " + num_str(prf));
  }
  c.head_dim = head_dim;
  c.rotary_dim = static_cast<int>(head_dim * prf);  // Python int(): truncation, as transformers does
  if (c.rotary_dim < 2 || c.rotary_dim % 2 != 0) {
    return invalid_argument("partial_rotary_factor " + num_str(prf) + " with head_dim " +
                            std::to_string(head_dim) + " gives rotary_dim " + std::to_string(c.rotary_dim) +
                            "; it must be even and >= 2");
  }

  // Lengths.
  std::optional<int64_t> max_pos, orig_top, orig_in;
  KILN_RETURN_IF_ERROR(read_int(get(config, "max_position_embeddings"), "max_position_embeddings", &max_pos));
  if (max_pos && *max_pos <= 0) return invalid_argument("max_position_embeddings must be > 0");
  c.max_position_embeddings = max_pos.value_or(0);
  KILN_RETURN_IF_ERROR(read_int(get(config, "original_max_position_embeddings"),
                                "original_max_position_embeddings", &orig_top));
  KILN_RETURN_IF_ERROR(read_int(get(d, "original_max_position_embeddings"),
                                field("original_max_position_embeddings"), &orig_in));
  auto resolve_original = [&]() -> Status {
    // transformers' standardize_rope_params: the top-level value has priority (Phi-3), then the dict's,
    // then max_position_embeddings.
    const int64_t v = orig_top ? *orig_top : orig_in ? *orig_in : c.max_position_embeddings;
    if (v <= 0) {
      return invalid_argument("original_max_position_embeddings is required (> 0) for rope type " + type +
                              " (looked at the top level, " + where + " and max_position_embeddings)");
    }
    c.original_max_position_embeddings = v;
    return {};
  };

  std::optional<double> factor;
  KILN_RETURN_IF_ERROR(read_number(get(d, "factor"), field("factor"), &factor));
  auto required_factor = [&]() -> Status {
    if (!factor) return invalid_argument(field("factor") + " is required for rope type " + type);
    KILN_RETURN_IF_ERROR(need_positive(*factor, field("factor")));
    c.factor = *factor;
    return {};
  };
  auto factor_or_ratio = [&]() -> Status {
    if (factor) {
      KILN_RETURN_IF_ERROR(need_positive(*factor, field("factor")));
      c.factor = *factor;
      return {};
    }
    if (c.max_position_embeddings <= 0) {
      return invalid_argument(field("factor") + " or max_position_embeddings is required for rope type " +
                              type);
    }
    c.factor = static_cast<double>(c.max_position_embeddings) /
               static_cast<double>(c.original_max_position_embeddings);
    return {};
  };
  auto optional_positive = [&](const char* key, std::optional<double>* out) -> Status {
    KILN_RETURN_IF_ERROR(read_number(get(d, key), field(key), out));
    if (*out) KILN_RETURN_IF_ERROR(need_positive(**out, field(key)));
    return {};
  };

  switch (c.type) {
    case RopeType::kDefault:
      break;
    case RopeType::kLinear:
      KILN_RETURN_IF_ERROR(required_factor());
      break;
    case RopeType::kDynamic:
      KILN_RETURN_IF_ERROR(required_factor());
      if (c.max_position_embeddings <= 0) {
        return invalid_argument("max_position_embeddings is required for rope type dynamic");
      }
      break;
    case RopeType::kLlama3: {
      KILN_RETURN_IF_ERROR(required_factor());
      KILN_RETURN_IF_ERROR(resolve_original());
      std::optional<double> low, high;
      KILN_RETURN_IF_ERROR(read_number(get(d, "low_freq_factor"), field("low_freq_factor"), &low));
      KILN_RETURN_IF_ERROR(read_number(get(d, "high_freq_factor"), field("high_freq_factor"), &high));
      if (!low) return invalid_argument(field("low_freq_factor") + " is required for rope type llama3");
      if (!high) return invalid_argument(field("high_freq_factor") + " is required for rope type llama3");
      KILN_RETURN_IF_ERROR(need_positive(*low, field("low_freq_factor")));
      if (!(*high > *low)) {
        return invalid_argument(field("high_freq_factor") + " (" + num_str(*high) +
                                ") must be greater than low_freq_factor (" + num_str(*low) + ")");
      }
      c.low_freq_factor = *low;
      c.high_freq_factor = *high;
      break;
    }
    case RopeType::kYarn: {
      KILN_RETURN_IF_ERROR(resolve_original());
      KILN_RETURN_IF_ERROR(required_factor());  // transformers' validation requires it for yarn
      KILN_RETURN_IF_ERROR(optional_positive("attention_factor", &c.attention_factor));
      KILN_RETURN_IF_ERROR(read_number(get(d, "mscale"), field("mscale"), &c.mscale));
      KILN_RETURN_IF_ERROR(read_number(get(d, "mscale_all_dim"), field("mscale_all_dim"), &c.mscale_all_dim));
      // transformers: `get("beta_fast") or 32`, so 0 also means the default.
      for (auto [key, out, dflt] :
           {std::tuple{"beta_fast", &c.beta_fast, 32.0}, {"beta_slow", &c.beta_slow, 1.0}}) {
        std::optional<double> v;
        KILN_RETURN_IF_ERROR(read_number(get(d, key), field(key), &v));
        *out = (v && *v != 0.0) ? *v : dflt;
        KILN_RETURN_IF_ERROR(need_positive(*out, field(key)));
      }
      if (const json* v = get(d, "truncate")) {
        if (!v->is_boolean())
          return invalid_argument(field("truncate") + " must be a boolean, got " + show(*v));
        c.truncate = v->get<bool>();
      }
      break;
    }
    case RopeType::kLongRope: {
      KILN_RETURN_IF_ERROR(resolve_original());
      KILN_RETURN_IF_ERROR(factor_or_ratio());
      KILN_RETURN_IF_ERROR(optional_positive("attention_factor", &c.attention_factor));
      const size_t half = static_cast<size_t>(c.rotary_dim / 2);
      for (auto [key, out] : {std::pair{"short_factor", &c.short_factor}, {"long_factor", &c.long_factor}}) {
        KILN_RETURN_IF_ERROR(read_factor_list(get(d, key), field(key), out));
        if (out->size() != half) {
          return invalid_argument(
              field(key) + " has " + std::to_string(out->size()) +
              " entries; rope type longrope needs rotary_dim/2 = " + std::to_string(half) + " (head_dim " +
              std::to_string(head_dim) + ", rotary_dim " + std::to_string(c.rotary_dim) + ")");
        }
      }
      break;
    }
  }
  KILN_RETURN_IF_ERROR(validate_rope_config(c));
  return c;
}

// ---- frequencies -----------------------------------------------------------------------------------------

int64_t rope_frequencies_key(const RopeConfig& cfg, int64_t seq_len) {
  switch (cfg.type) {
    case RopeType::kDynamic: return seq_len > cfg.max_position_embeddings ? seq_len : 0;
    case RopeType::kLongRope: return seq_len > cfg.original_max_position_embeddings ? 1 : 0;
    default: return 0;
  }
}

RopeFrequencies rope_frequencies(const RopeConfig& cfg, int64_t seq_len) {
  KILN_CHECK(cfg.rotary_dim >= 2 && cfg.rotary_dim % 2 == 0, "rope_frequencies: invalid rotary_dim");
  const int dim = cfg.rotary_dim;
  const int n = dim / 2;
  RopeFrequencies out;
  out.inv_freq.resize(static_cast<size_t>(n));
  std::vector<float>& inv = out.inv_freq;
  double attention = 1.0;

  // 1 / base ** (arange(0, dim, 2) / dim) on float32 tensors.
  auto plain = [&](float base) {
    for (int i = 0; i < n; ++i) inv[i] = 1.0f / pow_f32(base, exponent_f32(i, dim));
  };

  switch (cfg.type) {
    case RopeType::kDefault:
      plain(f32(cfg.theta));
      break;

    case RopeType::kLinear:
      plain(f32(cfg.theta));
      for (float& v : inv) v = v / f32(cfg.factor);
      break;

    case RopeType::kDynamic: {
      KILN_CHECK(cfg.max_position_embeddings > 0 && dim > 2, "rope_frequencies: invalid dynamic config");
      const int64_t max_pos = cfg.max_position_embeddings;
      const double power = static_cast<double>(dim) / static_cast<double>(dim - 2);
      float base;
      if (seq_len > max_pos) {
        // The forward's recomputation: seq_len is a 0-dim int64 tensor, so the scaled base is a float32
        // tensor built op by op.
        float a = f32(cfg.factor) * static_cast<float>(seq_len);
        a = a / static_cast<float>(max_pos);
        a = a - f32(cfg.factor - 1.0);
        base = f32(cfg.theta) * f32(std::pow(static_cast<double>(a), power));
      } else {
        // The frequencies built at init (seq_len defaults to max_position_embeddings), in Python floats.
        const double m = static_cast<double>(max_pos);
        base = f32(cfg.theta * std::pow((cfg.factor * m / m) - (cfg.factor - 1.0), power));
      }
      plain(base);
      break;
    }

    case RopeType::kLlama3: {
      plain(f32(cfg.theta));
      const double old_len = static_cast<double>(cfg.original_max_position_embeddings);
      const float low_wavelen = f32(old_len / cfg.low_freq_factor);
      const float high_wavelen = f32(old_len / cfg.high_freq_factor);
      const float two_pi = f32(2 * kPi);
      const float factor = f32(cfg.factor);
      for (float& v : inv) {
        const float wavelen = (1.0f / v) * two_pi;  // 2*pi / inv_freq == reciprocal(inv_freq) * 2*pi
        const float scaled = wavelen > low_wavelen ? v / factor : v;
        const float smooth = ((1.0f / wavelen) * f32(old_len) - f32(cfg.low_freq_factor)) /
                             f32(cfg.high_freq_factor - cfg.low_freq_factor);
        const float smoothed = ((1.0f - smooth) * scaled) / factor + smooth * scaled;
        const bool medium = !(wavelen < high_wavelen) && !(wavelen > low_wavelen);
        v = medium ? smoothed : scaled;
      }
      break;
    }

    case RopeType::kYarn: {
      const double factor = cfg.factor;
      if (cfg.attention_factor) {
        attention = *cfg.attention_factor;
      } else if (cfg.mscale && cfg.mscale_all_dim && *cfg.mscale != 0.0 && *cfg.mscale_all_dim != 0.0) {
        attention = yarn_mscale(factor, *cfg.mscale) / yarn_mscale(factor, *cfg.mscale_all_dim);
      } else {
        attention = yarn_mscale(factor, 1.0);
      }
      const double orig = static_cast<double>(cfg.original_max_position_embeddings);
      double low = yarn_correction_dim(cfg.beta_fast, dim, cfg.theta, orig);
      double high = yarn_correction_dim(cfg.beta_slow, dim, cfg.theta, orig);
      if (cfg.truncate) {
        low = std::floor(low);
        high = std::ceil(high);
      }
      low = std::max(low, 0.0);
      high = std::min(high, static_cast<double>(dim - 1));
      if (low == high) high += 0.001;  // transformers: prevent a zero-width ramp
      const float ramp_den = f32(high - low);
      const float theta = f32(cfg.theta);
      for (int i = 0; i < n; ++i) {
        const float pos_freq = pow_f32(theta, exponent_f32(i, dim));
        const float extrapolation = 1.0f / pos_freq;
        const float interpolation = 1.0f / (f32(factor) * pos_freq);
        float ramp = (static_cast<float>(i) - f32(low)) / ramp_den;
        ramp = std::min(std::max(ramp, 0.0f), 1.0f);
        const float extrapolation_factor = 1.0f - ramp;
        inv[i] = interpolation * (1.0f - extrapolation_factor) + extrapolation * extrapolation_factor;
      }
      break;
    }

    case RopeType::kLongRope: {
      KILN_CHECK(cfg.short_factor.size() == static_cast<size_t>(n) &&
                     cfg.long_factor.size() == static_cast<size_t>(n),
                 "rope_frequencies: longrope factor lists must have rotary_dim/2 entries");
      const int64_t orig = cfg.original_max_position_embeddings;
      if (cfg.attention_factor) {
        attention = *cfg.attention_factor;
      } else if (cfg.factor <= 1.0) {
        attention = 1.0;
      } else {
        attention = std::sqrt(1.0 + std::log(cfg.factor) / std::log(static_cast<double>(orig)));
      }
      const std::vector<double>& ext = seq_len > orig ? cfg.long_factor : cfg.short_factor;
      const float theta = f32(cfg.theta);
      for (int i = 0; i < n; ++i) inv[i] = 1.0f / (f32(ext[i]) * pow_f32(theta, exponent_f32(i, dim)));
      break;
    }
  }
  out.attention_scaling = f32(attention);
  return out;
}

const float* RopeCosSinCache::rows(const RopeFrequencies& f, int64_t first, int64_t count) {
  auto it = std::find_if(tables_.begin(), tables_.end(), [&](const Table& t) {
    return t.f.inv_freq == f.inv_freq && t.f.attention_scaling == f.attention_scaling;
  });
  if (it == tables_.end()) {
    if (tables_.size() == kMaxTables) tables_.pop_back();
    tables_.insert(tables_.begin(), Table{f, {}, 0});
    it = tables_.begin();
  } else if (it != tables_.begin()) {
    std::rotate(tables_.begin(), it, it + 1);
    it = tables_.begin();
  }
  Table& t = *it;
  const int64_t rot = static_cast<int64_t>(f.inv_freq.size()) * 2, need = first + count;
  if (need > t.positions) {
    const int64_t grown = std::max<int64_t>(need, std::max<int64_t>(2 * t.positions, 256));
    t.cos_sin.resize(static_cast<size_t>(grown * rot));
    for (int64_t p = t.positions; p < grown; ++p) {
      float* row = t.cos_sin.data() + p * rot;
      rope_cos_sin(f, p, row, row + rot / 2);
    }
    t.positions = grown;
  }
  return t.cos_sin.data() + first * rot;
}

void rope_cos_sin(const RopeFrequencies& f, int64_t position, float* out_cos, float* out_sin) {
  const float pos = static_cast<float>(position);  // position_ids.float()
  const float scale = f.attention_scaling;
  const size_t n = f.inv_freq.size();
  for (size_t i = 0; i < n; ++i) {
    const float angle = pos * f.inv_freq[i];
    out_cos[i] = static_cast<float>(std::cos(static_cast<double>(angle))) * scale;
    out_sin[i] = static_cast<float>(std::sin(static_cast<double>(angle))) * scale;
  }
}

}  // namespace kiln
