#include "tokenizer/tokenizer.h"

#include <zlib.h>

#include <algorithm>
#include <climits>
#include <filesystem>

#include "tokenizer/added_tokens.h"
#include "tokenizer/bpe.h"
#include "tokenizer/decoders.h"
#include "tokenizer/json_util.h"
#include "tokenizer/normalizers.h"
#include "tokenizer/post_processor.h"
#include "tokenizer/pre_tokenizers.h"
#include "tokenizer/utf8.h"

namespace kiln {

namespace fs = std::filesystem;
using tok::json;

namespace {

// Reads a file, gunzipping it when it is gzip-compressed (zlib reads plain files as they are).
Result<std::string> read_maybe_gz(const std::string& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  if (!f) return not_found("cannot open " + path);
  std::string out;
  char buf[1 << 16];
  while (true) {
    int n = gzread(f, buf, sizeof(buf));
    if (n < 0) {
      int errnum = 0;
      std::string msg = gzerror(f, &errnum);
      gzclose(f);
      return data_loss("reading " + path + ": " + msg);
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  gzclose(f);
  return out;
}

// Parses an optional JSON file: nullopt when it does not exist.
Result<std::optional<json>> read_optional_json(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) return std::optional<json>();
  KILN_ASSIGN_OR_RETURN(std::string text, read_maybe_gz(path));
  try {
    return std::optional<json>(json::parse(text));
  } catch (const json::exception& e) {
    return invalid_argument(path + ": not valid JSON: " + e.what());
  }
}

Result<std::shared_ptr<const Tokenizer>> load_with_configs(const std::string& tokenizer_path,
                                                           const std::string& dir) {
  KILN_ASSIGN_OR_RETURN(std::string text, read_maybe_gz(tokenizer_path));
  KILN_ASSIGN_OR_RETURN(auto tcfg, read_optional_json((fs::path(dir) / "tokenizer_config.json").string()));
  KILN_ASSIGN_OR_RETURN(auto gcfg, read_optional_json((fs::path(dir) / "generation_config.json").string()));
  auto t = Tokenizer::from_json(text, tcfg ? &*tcfg : nullptr, gcfg ? &*gcfg : nullptr);
  if (!t.ok()) return t.status().with_context(tokenizer_path);
  return t;
}

tok::Workspace& thread_workspace() {
  thread_local tok::Workspace ws;
  return ws;
}

}  // namespace

Tokenizer::Tokenizer() = default;
Tokenizer::~Tokenizer() = default;

Result<std::shared_ptr<const Tokenizer>> Tokenizer::from_dir(const std::string& dir) {
  std::error_code ec;
  std::string path = (fs::path(dir) / "tokenizer.json").string();
  if (!fs::exists(path, ec)) {
    path += ".gz";
    if (!fs::exists(path, ec)) return not_found("no tokenizer.json or tokenizer.json.gz in " + dir);
  }
  return load_with_configs(path, dir);
}

Result<std::shared_ptr<const Tokenizer>> Tokenizer::from_file(const std::string& path) {
  std::string dir = fs::path(path).parent_path().string();
  return load_with_configs(path, dir.empty() ? "." : dir);
}

Result<std::shared_ptr<const Tokenizer>> Tokenizer::from_json(std::string_view tokenizer_json,
                                                              const nlohmann::json* tokenizer_config,
                                                              const nlohmann::json* generation_config) {
  std::shared_ptr<Tokenizer> t(new Tokenizer());
  KILN_RETURN_IF_ERROR(t->load(tokenizer_json, tokenizer_config, generation_config));
  return std::shared_ptr<const Tokenizer>(std::move(t));
}

Status Tokenizer::load(std::string_view text, const nlohmann::json* tokenizer_config,
                       const nlohmann::json* generation_config) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    return invalid_argument(std::string("tokenizer.json is not valid JSON: ") + e.what());
  }
  if (!j.is_object()) return tok::json_error("", "expected a JSON object");
  if (const json* v = tok::jfind(j, "version"); v && (!v->is_string() || v->get<std::string>() != "1.0")) {
    return tok::json_error("version", "unknown tokenizer.json version " + v->dump() + " (expected \"1.0\")");
  }

  const json* model = tok::jfind(j, "model");
  if (!model) return tok::json_error("model", "missing");
  if (!model->is_object()) return tok::json_error("model", "expected an object");
  KILN_ASSIGN_OR_RETURN(std::string type, tok::jstring_or(*model, "model", "type", ""));
  if (type.empty() && tok::jfind(*model, "merges")) type = "BPE";
  if (type == "WordPiece" || type == "Unigram" || type == "WordLevel") {
    return unimplemented("model.type: " + type + " models are not supported (only BPE)");
  }
  if (type != "BPE") return tok::json_error("model.type", "unknown model type \"" + type + "\"");
  KILN_ASSIGN_OR_RETURN(model_, tok::Bpe::from_json(*model, "model"));

  if (const json* n = tok::jfind(j, "normalizer")) {
    KILN_ASSIGN_OR_RETURN(normalizer_, tok::parse_normalizer(*n, "normalizer"));
  }
  if (const json* p = tok::jfind(j, "pre_tokenizer")) {
    KILN_ASSIGN_OR_RETURN(pre_tokenizer_, tok::parse_pre_tokenizer(*p, "pre_tokenizer"));
  }
  if (const json* p = tok::jfind(j, "post_processor")) {
    KILN_ASSIGN_OR_RETURN(post_processor_, tok::parse_post_processor(*p, "post_processor"));
  }
  if (const json* d = tok::jfind(j, "decoder")) {
    KILN_ASSIGN_OR_RETURN(decoder_, tok::parse_decoder(*d, "decoder"));
  }
  KILN_ASSIGN_OR_RETURN(added_, tok::AddedVocabulary::from_json(tok::jfind(j, "added_tokens"), "added_tokens",
                                                                *model_, normalizer_.get()));

  vocab_size_ = std::max(model_->max_id(), added_->max_id()) + 1;
  id_string_.assign(static_cast<size_t>(vocab_size_), nullptr);
  skip_special_.assign(static_cast<size_t>(vocab_size_), 0);
  for (int32_t id = 0; id < vocab_size_; ++id) {
    const std::string* s = added_->decode_string(id);
    if (!s) s = model_->id_to_token(id);
    id_string_[id] = s;
    // As `tokenizers` does: an id is skipped when the string it decodes to is
    // the content of a special added token.
    if (s && added_->is_special_content(*s)) skip_special_[id] = 1;
  }

  if (tokenizer_config) {
    if (!tokenizer_config->is_object())
      return invalid_argument("tokenizer_config.json: expected a JSON object");
    config_ = *tokenizer_config;
  }
  // A special token named in tokenizer_config.json: "text" or {"content": "text", ...}.
  auto config_token = [&](const char* key) -> std::optional<int32_t> {
    const json* v = tok::jfind(config_, key);
    if (!v) return std::nullopt;
    const json* content = v->is_object() ? tok::jfind(*v, "content") : v;
    if (!content || !content->is_string()) return std::nullopt;
    return token_to_id(content->get<std::string>());
  };
  // Any non-negative id is taken: a model's embedding table may be larger than the tokenizer's vocab.
  auto id_in_range = [&](const json& v) {
    return v.is_number_integer() && v.get<int64_t>() >= 0 && v.get<int64_t>() <= INT32_MAX;
  };
  const json* gen_eos = generation_config ? tok::jfind(*generation_config, "eos_token_id") : nullptr;
  if (gen_eos) {
    if (gen_eos->is_array()) {
      for (size_t i = 0; i < gen_eos->size(); ++i) {
        if (!id_in_range((*gen_eos)[i])) {
          return invalid_argument("generation_config.json: eos_token_id[" + std::to_string(i) +
                                  "]: expected a token id");
        }
        eos_ids_.push_back(static_cast<int32_t>((*gen_eos)[i].get<int64_t>()));
      }
    } else if (id_in_range(*gen_eos)) {
      eos_ids_.push_back(static_cast<int32_t>(gen_eos->get<int64_t>()));
    } else {
      return invalid_argument("generation_config.json: eos_token_id: expected a token id or a list of them");
    }
  } else if (auto id = config_token("eos_token")) {
    eos_ids_.push_back(*id);
  }
  const json* gen_bos = generation_config ? tok::jfind(*generation_config, "bos_token_id") : nullptr;
  if (gen_bos) {
    if (!id_in_range(*gen_bos)) {
      return invalid_argument("generation_config.json: bos_token_id: expected a token id");
    }
    bos_id_ = static_cast<int32_t>(gen_bos->get<int64_t>());
  } else {
    bos_id_ = config_token("bos_token");
  }
  return {};
}

Result<std::vector<int32_t>> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  size_t bad = tok::utf8_first_invalid(text);
  if (bad != std::string_view::npos) {
    return invalid_argument("encode: the text is not valid UTF-8 (at byte offset " + std::to_string(bad) +
                            ")");
  }
  tok::Workspace& ws = thread_workspace();
  ws.clear();
  std::vector<int32_t> ids;
  if (!text.empty()) ws.pieces.push_back({ws.add(text), text.size(), -1, true});

  added_->split(ws, /*normalized=*/false);
  if (normalizer_) {
    ws.next.clear();
    std::string& s = ws.tmp;
    for (const tok::Piece& p : ws.pieces) {
      if (p.id >= 0) {
        ws.next.push_back(p);
        continue;
      }
      s.assign(ws.view(p));
      bool at_start = p.at_start;
      KILN_RETURN_IF_ERROR(normalizer_->normalize(s, at_start));
      if (s.empty()) continue;
      size_t off = ws.add(s);
      ws.next.push_back({off, s.size(), -1, at_start});
    }
    ws.pieces.swap(ws.next);
  }
  added_->split(ws, /*normalized=*/true);
  if (pre_tokenizer_) KILN_RETURN_IF_ERROR(pre_tokenizer_->apply(ws));

  ids.reserve(text.size() / 3 + 4);
  for (const tok::Piece& p : ws.pieces) {
    if (p.id >= 0) {
      ids.push_back(p.id);
    } else {
      KILN_RETURN_IF_ERROR(model_->tokenize(ws.view(p), ids));
    }
  }
  if (post_processor_) post_processor_->process(ids, add_special_tokens);

  // Do not keep a huge input's buffers alive in this thread.
  constexpr size_t kKeep = 16u << 20;
  if (ws.arena.capacity() > kKeep) ws = tok::Workspace();
  return ids;
}

Result<std::string> Tokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size_) {
      return invalid_argument("decode: token id " + std::to_string(id) + " is out of range [0, " +
                              std::to_string(vocab_size_) + ")");
    }
    const std::string* s = id_string_[id];
    if (!s) continue;
    if (skip_special_tokens && skip_special_[id]) continue;
    tokens.push_back(*s);
  }
  std::string out;
  if (decoder_) {
    KILN_RETURN_IF_ERROR(decoder_->decode_chain(tokens));
    for (const std::string& t : tokens) out.append(t);
  } else {
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i) out.push_back(' ');
      out.append(tokens[i]);
    }
  }
  return out;
}

bool Tokenizer::is_special(int32_t id) const { return id >= 0 && id < vocab_size_ && skip_special_[id] != 0; }

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  int32_t id = added_->token_to_id(token);
  if (id < 0) id = model_->token_to_id(token);
  if (id < 0) return std::nullopt;
  return id;
}

std::string Tokenizer::id_to_token(int32_t id) const {
  if (id < 0 || id >= vocab_size_ || !id_string_[id]) return {};
  return *id_string_[id];
}

}  // namespace kiln
