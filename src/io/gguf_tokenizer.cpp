#include "io/gguf_tokenizer.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <string_view>
#include <unordered_map>
#include <unordered_set>

namespace kiln {

using nlohmann::json;

namespace {

enum TokenType : int32_t {
  kUndefined = 0,
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6,
};

// ---------------------------------------------------------------------------
// Pre-tokenizer rows (see the table in the header).

// GPT-2's pattern. llama.cpp leaves out the final "|\s+", which changes
// nothing: every character the other branches skip is whitespace, and the
// text between matches stays a piece of its own.
constexpr const char* kGpt2 =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
// English contractions, case-insensitive for ASCII only (llama.cpp's form).
#define KILN_CONTRACTIONS R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD]))"
constexpr const char* kLlama3 = KILN_CONTRACTIONS
    R"(|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kQwen2 = KILN_CONTRACTIONS
    R"(|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kQwen35 = KILN_CONTRACTIONS
    R"(|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kSeedCoder = KILN_CONTRACTIONS
    R"(|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+)";
// "Upper-case run then lower-case run" written as llama.cpp writes it: a letter
// that is not a-z, then letters that are not A-Z.
#define KILN_UPPER R"(((?=[\p{L}])([^a-z])))"
#define KILN_LOWER R"(((?=[\p{L}])([^A-Z])))"
constexpr const char* kGpt4o =
    R"([^\r\n\p{L}\p{N}]?)" KILN_UPPER "*" KILN_LOWER "+" KILN_CONTRACTIONS "?"
    R"(|[^\r\n\p{L}\p{N}]?)" KILN_UPPER "+" KILN_LOWER "*" KILN_CONTRACTIONS "?"
    R"(|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kTekken =
    R"([^\r\n\p{L}\p{N}]?)" KILN_UPPER "*" KILN_LOWER "+"
    R"(|[^\r\n\p{L}\p{N}]?)" KILN_UPPER "+" KILN_LOWER "*"
    R"(|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
#undef KILN_UPPER
#undef KILN_LOWER
#undef KILN_CONTRACTIONS
// Text up to a space or one of these sentence marks: . , ! ? … 。 ， 、 । ۔ ،
constexpr const char* kBloom = R"( ?[^(\s|.,!?\x{2026}\x{3002}\x{FF0C}\x{3001}\x{0964}\x{06D4}\x{060C})]+)";
// CJK ideographs U+4E00..U+9FA5, U+0800..U+4E00 and Hangul syllables .. U+D7FF.
constexpr const char* kDeepseekCjk = R"([\x{4E00}-\x{9FA5}\x{0800}-\x{4E00}\x{AC00}-\x{D7FF}]+)";
// The cased letters of DeepSeek LLM's tokenizer (Latin, Greek, Cyrillic,
// Armenian, Georgian, Cherokee, ... upper and lower case), with an optional
// leading whitespace.
constexpr const char* kDeepseekLetters =
    R"(\s?[A-Za-z\x{B5}\x{C0}-\x{D6}\x{D8}-\x{F6}\x{F8}-\x{1BA}\x{1BC}-\x{1BF}\x{1C4}-\x{293})"
    R"(\x{295}-\x{2AF}\x{370}-\x{373}\x{376}\x{377}\x{37B}-\x{37D}\x{37F}\x{386}\x{388}-\x{38A}\x{38C})"
    R"(\x{38E}-\x{3A1}\x{3A3}-\x{3F5}\x{3F7}-\x{481}\x{48A}-\x{52F}\x{531}-\x{556}\x{10A0}-\x{10C5})"
    R"(\x{13A0}-\x{13F5}\x{13F8}-\x{13FD}\x{1C90}-\x{1CBA}\x{1CBD}-\x{1CBF}\x{1D00}-\x{1D2B})"
    R"(\x{1D6B}-\x{1D77}\x{1D79}-\x{1D9A}\x{1E00}-\x{1F15}\x{1F18}-\x{1F1D}\x{1F20}-\x{1F45})"
    R"(\x{1F48}-\x{1F4D}\x{1F50}-\x{1F57}\x{1F59}\x{1F5B}\x{1F5D}\x{1F5F}-\x{1F7D}\x{1F80}-\x{1FB4})"
    R"(\x{1FB6}-\x{1FBC}\x{1FBE}\x{1FC2}-\x{1FC4}\x{1FC6}-\x{1FCC}\x{1FD0}-\x{1FD3}\x{1FD6}-\x{1FDB})"
    R"(\x{1FE0}-\x{1FEC}\x{1FF2}-\x{1FF4}\x{1FF6}-\x{1FFC}\x{2102}\x{2107}\x{210A}-\x{2113}\x{2115})"
    R"(\x{2119}-\x{211D}\x{2124}\x{2126}\x{2128}\x{212A}-\x{212D}\x{212F}-\x{2134}\x{2139})"
    R"(\x{213C}-\x{213F}\x{2145}-\x{2149}\x{214E}\x{2183}\x{2184}\x{2C00}-\x{2C7B}\x{2C7E}-\x{2CE4})"
    R"(\x{2CEB}-\x{2CEE}\x{2CF2}\x{2CF3}\x{A640}-\x{A66D}\x{A680}-\x{A69B}\x{A722}-\x{A76F})"
    R"(\x{A771}-\x{A787}\x{A78B}-\x{A78E}\x{AB70}-\x{ABBF}\x{FB00}-\x{FB06}\x{FB13}-\x{FB17})"
    R"(\x{FF21}-\x{FF3A}\x{FF41}-\x{FF5A}\x{10400}-\x{1044F}\x{104B0}-\x{104D3}\x{104D8}-\x{104FB})"
    R"(\x{10C80}-\x{10CB2}\x{10CC0}-\x{10CF2}\x{118A0}-\x{118DF}\x{1E900}-\x{1E943}]+)";
// ASCII and full-width punctuation, curly quotes, ideographic space and marks.
constexpr const char* kDeepseekPunct =
    R"(\s?[!-/:-~\x{FF01}-\x{FF0F}\x{FF1A}-\x{FF5E}\x{2018}-\x{201F}\x{3000}-\x{3002}]+)";

struct PreRow {
  std::vector<std::string> names;
  std::vector<std::string> regexes;
  bool ignore_merges = false;
  bool add_bos = false;  // llama.cpp's default when the file has no add_bos_token
};

const std::vector<PreRow>& pre_rows() {
  static const std::vector<PreRow> rows = {
      {{"default"}, {R"([\p{P}\$\+<=>\^~\|]+)", kGpt2, R"(\p{N}+)", "[0-9][0-9][0-9]"}},
      {{"gpt-2", "gpt2", "phi-2", "mpt", "olmo", "jais", "exaone4", "trillion", "granite-docling"}, {kGpt2}},
      {{"starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b"},
       {R"(\p{N})", kGpt2}},
      {{"falcon"}, {R"([\p{P}\$\+<=>\^~\|`]+)", kGpt2, "[0-9][0-9][0-9]"}},
      {{"llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"},
       {kLlama3},
       true,
       true},
      {{"dbrx", "smaug-bpe", "glm4", "chatglm-bpe"}, {kLlama3}},
      {{"qwen2", "deepseek-r1-qwen", "stablelm2", "megrez", "hunyuan", "grok-2"}, {kQwen2}},
      {{"qwen35"}, {kQwen35}},
      {{"seed-coder"}, {kSeedCoder}},
      {{"deepseek-llm"}, {R"([\r\n])", kDeepseekLetters, kDeepseekPunct, R"(\s+\z)", kDeepseekCjk, R"(\p{N}+)"}},
      {{"deepseek-coder"}, {R"([\r\n])", R"(\s?\p{L}+)", R"(\s?\p{P}+)", kDeepseekCjk, R"(\p{N})"}},
      {{"deepseek-v3", "hunyuan-dense"},
       {R"(\p{N}{1,3})", R"([\x{4E00}-\x{9FA5}\x{3040}-\x{309F}\x{30A0}-\x{30FF}]+)",
        R"([!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+)"
        R"(| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"}},
      {{"gpt-4o", "llama4", "minimax-m2"}, {kGpt4o}},
      {{"tekken"}, {kTekken}, true, true},
      {{"poro-chat", "bloom", "gpt3-finnish"}, {kBloom}},
      {{"viking"}, {kBloom, R"(\p{N})"}},
  };
  return rows;
}

const PreRow* find_pre(const std::string& name) {
  const std::string& n = name.empty() ? std::string("default") : name;
  for (const PreRow& r : pre_rows())
    if (std::find(r.names.begin(), r.names.end(), n) != r.names.end()) return &r;
  return nullptr;
}

// What llama.cpp makes of a token from its text alone (its load-time fix-ups
// for files whose converter did not mark them).
enum class Marker {
  kNone,
  kEndOfGeneration,  // ends generation; a control token
  kControl,          // fill-in-the-middle prefix / suffix / middle: a control token
  kUserDefined,      // gpt-oss channel markers: always user-defined
};

Marker marker_of(std::string_view s) {
  // End of turn / message / text, and the fill-in-the-middle pad, repo and
  // file-separator tokens, which llama.cpp also stops at. ("\xEF\xBD\x9C" is
  // U+FF5C and "\xE2\x96\x81" U+2581, of DeepSeek's "<｜end▁of▁sentence｜>".)
  static const char* const kEnd[] = {
      "<|eot_id|>",  "<|eom_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
      "<EOT>",       "_<EOT>",     "[EOT]",      "[EOS]",   "</s>",          "<eos>",         "<|return|>",
      "<|call|>",    "<end_of_utterance>",       "<\xEF\xBD\x9C" "end\xE2\x96\x81" "of\xE2\x96\x81" "sentence\xEF\xBD\x9C>",
      "<|fim_pad|>", "<fim-pad>",  "<fim_pad>",  "<PAD>",   "[PAD]",         "<|fim_repo|>",  "<|repo_name|>",
      "<fim-repo>",  "<REPO>",     "<reponame>", "<|file_sep|>"};
  static const char* const kFim[] = {
      "<|fim_prefix|>",  "<fim-prefix>",  "<fim_prefix>", "<\xEF\xBD\x9C" "fim\xE2\x96\x81" "begin\xEF\xBD\x9C>",
      "<PRE>",           "\xE2\x96\x81<PRE>",       "<|code_prefix|>", "<|prefix|>",
      "<|fim_suffix|>",  "<fim-suffix>",  "<fim_suffix>", "<\xEF\xBD\x9C" "fim\xE2\x96\x81" "hole\xEF\xBD\x9C>",
      "<SUF>",           "\xE2\x96\x81<SUF>",       "<|code_suffix|>", "<|suffix|>",
      "<|fim_middle|>",  "<fim-middle>",  "<fim_middle>", "<\xEF\xBD\x9C" "fim\xE2\x96\x81" "end\xEF\xBD\x9C>",
      "<MID>",           "\xE2\x96\x81<MID>",       "<|code_middle|>", "<|middle|>"};
  static const char* const kUser[] = {"<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"};
  for (const char* m : kEnd)
    if (s == m) return Marker::kEndOfGeneration;
  for (const char* m : kFim)
    if (s == m) return Marker::kControl;
  for (const char* m : kUser)
    if (s == m) return Marker::kUserDefined;
  return Marker::kNone;
}

bool is_byte_token_text(std::string_view s) {
  auto hex = [](char c) { return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F') || (c >= 'a' && c <= 'f'); };
  return s.size() == 6 && s.substr(0, 3) == "<0x" && hex(s[3]) && hex(s[4]) && s[5] == '>';
}

// The resolved view of the metadata that every output is built from.
struct Vocab {
  bool spm = false;
  const PreRow* pre = nullptr;  // gpt2 only
  std::vector<std::string> text;
  std::vector<int32_t> type;
  // Views into `text` (moving a Vocab moves the vector's buffer, so they stay valid).
  std::unordered_map<std::string_view, int32_t> id_of;
  std::vector<uint8_t> end_of_generation;  // id -> llama.cpp stops generating at it
  std::optional<int32_t> bos, eos, unk, pad, eot;
  bool add_bos = false, add_eos = false, add_space_prefix = false;

  int32_t find(std::string_view s) const {
    auto it = id_of.find(s);
    return it == id_of.end() ? -1 : it->second;
  }
  bool added(int32_t id) const {
    return type[id] == kControl || type[id] == kUnknown || type[id] == kUserDefined;
  }
  bool special(int32_t id) const { return type[id] == kControl || type[id] == kUnknown; }
};

std::string json_quote(std::string_view s) {
  json j = std::string(s);
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string supported_pre_list() {
  std::string out;
  for (const std::string& n : gguf_supported_pre_tokenizers()) out += (out.empty() ? "" : ", ") + n;
  return out;
}

// Resolves `d` into a Vocab. `strict`: report metadata errors (tokenizer.json);
// otherwise keep going with what is usable (the configs, which cannot fail).
Result<Vocab> resolve(const GgufTokenizerData& d, bool strict) {
  Vocab v;
  if (d.model == "llama") {
    v.spm = true;
  } else if (d.model == "gpt2") {
    v.pre = find_pre(d.pre);
    if (!v.pre) {
      if (strict)
        return unimplemented("tokenizer.ggml.pre: unknown pre-tokenizer " + json_quote(d.pre) +
                             " (supported: " + supported_pre_list() + ")");
      v.pre = find_pre("default");
    }
  } else if (strict) {
    return unimplemented("tokenizer.ggml.model: unsupported tokenizer model " + json_quote(d.model) +
                         " (supported: \"gpt2\" (byte-level BPE), \"llama\" (SentencePiece BPE))");
  }
  const size_t n = d.tokens.size();
  if (strict && n == 0) return invalid_argument("tokenizer.ggml.tokens: the vocabulary is empty");
  if (strict && n > static_cast<size_t>(INT32_MAX))
    return invalid_argument("tokenizer.ggml.tokens: too many tokens (" + std::to_string(n) + ")");
  if (strict && !d.token_types.empty() && d.token_types.size() != n)
    return invalid_argument("tokenizer.ggml.token_type has " + std::to_string(d.token_types.size()) +
                            " entries but tokenizer.ggml.tokens has " + std::to_string(n));
  if (strict && !d.scores.empty() && d.scores.size() != n)
    return invalid_argument("tokenizer.ggml.scores has " + std::to_string(d.scores.size()) +
                            " entries but tokenizer.ggml.tokens has " + std::to_string(n));

  v.text.resize(n);
  v.type.assign(n, kNormal);
  for (size_t i = 0; i < n; ++i) {
    v.text[i] = d.tokens[i].empty() ? "[EMPTY_" + std::to_string(i) + "]" : d.tokens[i];
    if (i < d.token_types.size()) v.type[i] = d.token_types[i];
  }
  v.id_of.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    auto [it, inserted] = v.id_of.emplace(std::string_view(v.text[i]), static_cast<int32_t>(i));
    if (!inserted && strict)
      return invalid_argument("tokenizer.ggml.tokens: token " + std::to_string(i) + " " + json_quote(v.text[i]) +
                              " repeats token " + std::to_string(it->second));
  }
  // llama.cpp's fix-ups by token text. gpt-oss (o200k_harmony) has <|return|>
  // and <|call|>; there <|end|> ends a message, not the generation, and is
  // user-defined.
  const bool harmony = v.find("<|return|>") >= 0 && v.find("<|call|>") >= 0;
  v.end_of_generation.assign(n, 0);
  for (size_t i = 0; i < n; ++i) {
    Marker m = marker_of(v.text[i]);
    if (harmony && v.text[i] == "<|end|>") m = Marker::kUserDefined;
    if (m == Marker::kUserDefined) {
      v.type[i] = kUserDefined;
    } else if (m != Marker::kNone) {
      if (v.type[i] == kNormal || v.type[i] == kUserDefined) v.type[i] = kControl;
      v.end_of_generation[i] = m == Marker::kEndOfGeneration && v.type[i] == kControl;
    }
  }

  struct Special {
    const char* key;
    const std::optional<int64_t>& value;
    std::optional<int32_t>& out;
    int64_t spm_default;
  };
  const Special specials[] = {
      {"tokenizer.ggml.bos_token_id", d.bos_id, v.bos, 1},
      {"tokenizer.ggml.eos_token_id", d.eos_id, v.eos, 2},
      {"tokenizer.ggml.unknown_token_id", d.unk_id, v.unk, 0},
      {"tokenizer.ggml.padding_token_id", d.pad_id, v.pad, -1},
      {"tokenizer.ggml.eot_token_id", d.eot_id, v.eot, -1},
  };
  for (const Special& s : specials) {
    if (s.value) {
      if (*s.value < 0 || *s.value >= static_cast<int64_t>(n)) {
        if (strict)
          return invalid_argument(std::string(s.key) + " = " + std::to_string(*s.value) +
                                  " is outside the vocabulary [0, " + std::to_string(n) + ")");
        continue;
      }
      s.out = static_cast<int32_t>(*s.value);
    } else if (v.spm && s.spm_default >= 0 && s.spm_default < static_cast<int64_t>(n)) {
      s.out = static_cast<int32_t>(s.spm_default);
    }
  }

  v.add_bos = d.add_bos.value_or(v.spm ? true : (v.pre && v.pre->add_bos));
  v.add_eos = d.add_eos.value_or(false);
  v.add_space_prefix = v.spm && d.add_space_prefix.value_or(true);
  if (strict && v.add_bos && !v.bos)
    return invalid_argument("tokenizer.ggml.add_bos_token is true (or defaults to true for this model) "
                            "but there is no tokenizer.ggml.bos_token_id");
  if (strict && v.add_eos && !v.eos)
    return invalid_argument("tokenizer.ggml.add_eos_token is true but there is no tokenizer.ggml.eos_token_id");
  return v;
}

// ---------------------------------------------------------------------------
// Merges.

// "a b" -> [a, b] for byte-level files, checked against the vocabulary.
Result<json> byte_level_merges(const GgufTokenizerData& d, const Vocab& v) {
  if (d.merges.empty())
    return invalid_argument("tokenizer.ggml.merges: missing or empty (a \"gpt2\" tokenizer needs its merges)");
  json out = json::array();
  std::unordered_set<uint64_t> seen;  // (left id, right id) pairs already ranked
  seen.reserve(d.merges.size());
  std::string merged;
  for (size_t i = 0; i < d.merges.size(); ++i) {
    const std::string& m = d.merges[i];
    const std::string where = "tokenizer.ggml.merges[" + std::to_string(i) + "] " + json_quote(m);
    size_t sp = m.size() > 1 ? m.find(' ', 1) : std::string::npos;
    if (sp == std::string::npos || sp + 1 >= m.size())
      return invalid_argument(where + ": expected two tokens separated by a space");
    std::string_view a(m.data(), sp), b(m.data() + sp + 1, m.size() - sp - 1);
    int32_t ia = v.find(a), ib = v.find(b);
    if (ia < 0) return invalid_argument(where + ": " + json_quote(a) + " is not a token");
    if (ib < 0) return invalid_argument(where + ": " + json_quote(b) + " is not a token");
    merged.assign(a);
    merged.append(b);
    if (v.find(merged) < 0) return invalid_argument(where + ": the merged " + json_quote(merged) + " is not a token");
    uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(ia)) << 32) | static_cast<uint32_t>(ib);
    if (!seen.insert(key).second) continue;  // llama.cpp keeps a pair's first rank
    out.push_back(json::array({std::string(a), std::string(b)}));
  }
  return out;
}

// SentencePiece merges from the scores (the rule in the header).
json spm_merges(const GgufTokenizerData& d, const Vocab& v) {
  struct Merge {
    float score;
    int32_t merged, left, right;
  };
  std::vector<Merge> merges;
  const size_t n = v.text.size();
  for (size_t t = 0; t < n; ++t) {
    const std::string& s = v.text[t];
    float score = t < d.scores.size() ? d.scores[t] : 0.0f;
    if (std::isnan(score)) score = -INFINITY;
    // Split points at character boundaries (after the first character, before the last).
    for (size_t p = 1; p < s.size(); ++p) {
      if ((static_cast<unsigned char>(s[p]) & 0xC0) == 0x80) continue;
      int32_t l = v.find(std::string_view(s).substr(0, p));
      if (l < 0) continue;
      int32_t r = v.find(std::string_view(s).substr(p));
      if (r < 0) continue;
      merges.push_back({score, static_cast<int32_t>(t), l, r});
    }
  }
  std::sort(merges.begin(), merges.end(), [](const Merge& x, const Merge& y) {
    if (x.score != y.score) return x.score > y.score;
    if (x.merged != y.merged) return x.merged < y.merged;
    if (x.left != y.left) return x.left < y.left;
    return x.right < y.right;
  });
  json out = json::array();
  for (const Merge& m : merges) out.push_back(json::array({v.text[m.left], v.text[m.right]}));
  return out;
}

// ---------------------------------------------------------------------------
// tokenizer.json parts.

json template_processing(const Vocab& v) {
  json special_tokens = json::object();
  auto token = [&](int32_t id, int type_id) {
    const std::string& t = v.text[id];
    special_tokens[t] = {{"id", t}, {"ids", json::array({id})}, {"tokens", json::array({t})}};
    return json{{"SpecialToken", {{"id", t}, {"type_id", type_id}}}};
  };
  auto sequence = [](const char* id, int type_id) { return json{{"Sequence", {{"id", id}, {"type_id", type_id}}}}; };
  json single = json::array(), pair = json::array();
  if (v.add_bos) single.push_back(token(*v.bos, 0));
  single.push_back(sequence("A", 0));
  if (v.add_eos) single.push_back(token(*v.eos, 0));
  pair = single;
  if (v.add_bos) pair.push_back(token(*v.bos, 1));
  pair.push_back(sequence("B", 1));
  if (v.add_eos) pair.push_back(token(*v.eos, 1));
  return {{"type", "TemplateProcessing"}, {"single", single}, {"pair", pair}, {"special_tokens", special_tokens}};
}

json added_token(const Vocab& v, int32_t id) {
  return {{"id", id},           {"content", v.text[id]}, {"single_word", false}, {"lstrip", false},
          {"rstrip", false},    {"normalized", false},   {"special", v.special(id)}};
}

json string_pattern(const char* s) { return {{"String", s}}; }

}  // namespace

std::vector<std::string> gguf_supported_pre_tokenizers() {
  std::vector<std::string> out;
  for (const PreRow& r : pre_rows()) out.insert(out.end(), r.names.begin(), r.names.end());
  return out;
}

Result<json> gguf_to_hf_tokenizer_json(const GgufTokenizerData& d) {
  KILN_ASSIGN_OR_RETURN(Vocab v, resolve(d, /*strict=*/true));
  const int32_t n = static_cast<int32_t>(v.text.size());

  json vocab = json::object();
  for (int32_t i = 0; i < n; ++i) vocab[v.text[i]] = i;
  json added = json::array();
  for (int32_t i = 0; i < n; ++i)
    if (v.added(i)) added.push_back(added_token(v, i));

  json model = {{"type", "BPE"}, {"dropout", nullptr}, {"continuing_subword_prefix", nullptr},
                {"end_of_word_suffix", nullptr}};
  json out = {{"version", "1.0"}, {"truncation", nullptr}, {"padding", nullptr}, {"added_tokens", added}};
  const char* kMeta = "\xE2\x96\x81";  // U+2581, SentencePiece's space
  if (v.spm) {
    bool has_bytes = false;
    for (int32_t i = 0; i < n && !has_bytes; ++i)
      has_bytes = v.type[i] == kByte || is_byte_token_text(v.text[i]);
    model["unk_token"] = v.unk ? json(v.text[*v.unk]) : json(nullptr);
    model["fuse_unk"] = true;
    model["byte_fallback"] = has_bytes;
    model["ignore_merges"] = false;
    model["vocab"] = std::move(vocab);
    model["merges"] = spm_merges(d, v);
    json replace = {{"type", "Replace"}, {"pattern", string_pattern(" ")}, {"content", kMeta}};
    if (v.add_space_prefix) {
      out["normalizer"] = {{"type", "Sequence"},
                           {"normalizers", {{{"type", "Prepend"}, {"prepend", kMeta}}, replace}}};
    } else {
      out["normalizer"] = replace;
    }
    out["pre_tokenizer"] = nullptr;
    json decoders = json::array({{{"type", "Replace"}, {"pattern", string_pattern(kMeta)}, {"content", " "}},
                                 {{"type", "ByteFallback"}},
                                 {{"type", "Fuse"}}});
    if (v.add_space_prefix) decoders.push_back({{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}});
    out["decoder"] = {{"type", "Sequence"}, {"decoders", decoders}};
  } else {
    KILN_ASSIGN_OR_RETURN(json merges, byte_level_merges(d, v));
    model["unk_token"] = nullptr;
    model["fuse_unk"] = false;
    model["byte_fallback"] = false;
    model["ignore_merges"] = v.pre->ignore_merges;
    model["vocab"] = std::move(vocab);
    model["merges"] = std::move(merges);
    out["normalizer"] = nullptr;
    json steps = json::array();
    for (const std::string& r : v.pre->regexes) {
      steps.push_back({{"type", "Split"}, {"pattern", {{"Regex", r}}}, {"behavior", "Isolated"}, {"invert", false}});
    }
    steps.push_back({{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}});
    out["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", steps}};
    out["decoder"] = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}};
  }
  out["post_processor"] = (v.add_bos || v.add_eos) ? template_processing(v) : json(nullptr);
  out["model"] = std::move(model);
  return out;
}

json gguf_to_hf_tokenizer_config(const GgufTokenizerData& d) {
  Result<Vocab> r = resolve(d, /*strict=*/false);
  json c = json::object();
  if (!r.ok()) return c;  // resolve(strict=false) does not fail
  const Vocab& v = *r;
  auto text = [&](const std::optional<int32_t>& id) { return id ? json(v.text[*id]) : json(nullptr); };
  c["add_bos_token"] = v.add_bos;
  c["add_eos_token"] = v.add_eos;
  json decoder = json::object();
  for (int32_t i = 0; i < static_cast<int32_t>(v.text.size()); ++i) {
    if (!v.added(i)) continue;
    decoder[std::to_string(i)] = {{"content", v.text[i]}, {"lstrip", false}, {"normalized", false},
                                  {"rstrip", false},      {"single_word", false}, {"special", v.special(i)}};
  }
  c["added_tokens_decoder"] = std::move(decoder);
  c["bos_token"] = text(v.bos);
  c["eos_token"] = text(v.eos);
  c["unk_token"] = text(v.unk);
  c["pad_token"] = text(v.pad);
  if (!d.chat_template.empty()) c["chat_template"] = d.chat_template;
  c["clean_up_tokenization_spaces"] = false;
  c["tokenizer_class"] = "PreTrainedTokenizerFast";
  return c;
}

json gguf_to_hf_generation_config(const GgufTokenizerData& d) {
  Result<Vocab> r = resolve(d, /*strict=*/false);
  json g = json::object();
  if (!r.ok()) return g;
  const Vocab& v = *r;
  std::vector<int32_t> eos;
  auto add = [&](int32_t id) {
    if (std::find(eos.begin(), eos.end(), id) == eos.end()) eos.push_back(id);
  };
  if (v.eos) add(*v.eos);
  if (v.eot) add(*v.eot);
  for (int32_t i = 0; i < static_cast<int32_t>(v.text.size()); ++i)
    if (v.end_of_generation[i]) add(i);
  if (v.bos) g["bos_token_id"] = *v.bos;
  g["eos_token_id"] = eos;
  if (v.pad) g["pad_token_id"] = *v.pad;
  return g;
}

}  // namespace kiln
