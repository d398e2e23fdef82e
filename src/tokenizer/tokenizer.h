// Kiln's tokenizer: loads a Hugging Face tokenizer.json (BPE models, byte-level
// or SentencePiece-style) and gives the same ids and text as Hugging Face
// `tokenizers` 0.23. See normalizers.h, pre_tokenizers.h, bpe.h,
// added_tokens.h, post_processor.h and decoders.h for what each part supports.
//
// `tokenizers` uses several Unicode versions at once (Oniguruma's 16.0 for
// regex classes, 9.0 for normalization, 8.0 for the Punctuation
// pre-tokenizer, Rust's 17.0 for lowercasing and numbers); unicode_tables.h
// brings PCRE2's and utf8proc's tables to the same answers.
//
// Not applied: the "truncation" and "padding" sections (the engine decides how
// long a prompt may be) and pair templates (Kiln encodes one sequence).
// POSIX bracket classes ([:alpha:] ...) in regexes keep PCRE2's meaning.
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace kiln {

namespace tok {
class Normalizer;
class PreTokenizer;
class Bpe;
class AddedVocabulary;
class PostProcessor;
class Decoder;
}  // namespace tok

class Tokenizer {
 public:
  // Reads dir/tokenizer.json (or dir/tokenizer.json.gz), and when present
  // dir/tokenizer_config.json and dir/generation_config.json.
  static Result<std::shared_ptr<const Tokenizer>> from_dir(const std::string& dir);
  // Reads one tokenizer.json or tokenizer.json.gz file; the configs are looked
  // for in the same directory.
  static Result<std::shared_ptr<const Tokenizer>> from_file(const std::string& path);
  static Result<std::shared_ptr<const Tokenizer>> from_json(
      std::string_view tokenizer_json, const nlohmann::json* tokenizer_config = nullptr,
      const nlohmann::json* generation_config = nullptr);
  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // Text that is not valid UTF-8 is refused (InvalidArgument naming the byte
  // offset). Thread-safe.
  Result<std::vector<int32_t>> encode(std::string_view text, bool add_special_tokens) const;
  // Ids outside [0, vocab_size()) are refused (InvalidArgument naming the id).
  Result<std::string> decode(std::span<const int32_t> ids, bool skip_special_tokens) const;

  // Whether decode(skip_special_tokens=true) drops this id.
  bool is_special(int32_t id) const;
  // Max id + 1 over the model vocab and the added tokens.
  int32_t vocab_size() const { return vocab_size_; }
  std::optional<int32_t> token_to_id(std::string_view token) const;
  // The vocab string of `id` (an added token's content, normalized if it is a
  // normalized one); empty when no token has this id.
  std::string id_to_token(int32_t id) const;
  std::vector<int32_t> eos_token_ids() const { return eos_ids_; }
  std::optional<int32_t> bos_token_id() const { return bos_id_; }
  // tokenizer_config.json (an empty object if none): the chat template lives there.
  const nlohmann::json& config() const { return config_; }

 private:
  Tokenizer();
  Status load(std::string_view tokenizer_json, const nlohmann::json* tokenizer_config,
              const nlohmann::json* generation_config);

  std::unique_ptr<tok::Normalizer> normalizer_;
  std::unique_ptr<tok::PreTokenizer> pre_tokenizer_;
  std::unique_ptr<tok::Bpe> model_;
  std::unique_ptr<tok::AddedVocabulary> added_;
  std::unique_ptr<tok::PostProcessor> post_processor_;
  std::unique_ptr<tok::Decoder> decoder_;

  int32_t vocab_size_ = 0;
  std::vector<const std::string*> id_string_;  // id -> the string decode uses (nullptr: no token)
  std::vector<uint8_t> skip_special_;          // id -> dropped by skip_special_tokens
  std::vector<int32_t> eos_ids_;
  std::optional<int32_t> bos_id_;
  nlohmann::json config_ = nlohmann::json::object();
};

}  // namespace kiln
