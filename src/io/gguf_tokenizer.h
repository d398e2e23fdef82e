// GGUF tokenizer metadata -> the Hugging Face tokenizer files Kiln's Tokenizer
// reads (tokenizer.json, tokenizer_config.json, generation_config.json), so
// that a checkpoint converted from a GGUF file tokenizes like llama.cpp does
// with the same file.
//
// Vocabulary: every GGUF token becomes a vocab entry at its id (an empty
// string becomes "[EMPTY_<id>]", as llama.cpp names it); two tokens with the
// same text are an error. Token types: control (3) and unknown (2) tokens
// become special added tokens (matched in the input, skipped by
// decode(skip_special_tokens)); user-defined (4) tokens become non-special
// added tokens (matched in the raw input, kept by decode); normal (1), unused
// (5) and byte (6) tokens are only vocab entries. llama.cpp's fix-ups by
// token text are applied: a normal or user-defined token whose text is a known
// end-of-generation marker ("<|im_end|>", "<|eot_id|>", "</s>", ...; also the
// fill-in-the-middle pad / repo / file-separator tokens) or a fill-in-the-
// middle prefix / suffix / middle token is a control token; gpt-oss's
// <|channel|>, <|message|>, <|start|>, <|constrain|> (and <|end|> when the
// vocabulary has <|return|> and <|call|>) are user-defined. Every added token
// is matched on the raw text (normalized: false) and has no lstrip/rstrip
// (llama.cpp's name-based rstrip for Phi-3 files is not applied). Added tokens are found leftmost-longest (Hugging Face);
// llama.cpp looks for the longest token first over the whole text, which only
// differs when two special tokens overlap in the input.
//
// "gpt2" (byte-level BPE): BPE over GPT-2's byte alphabet with the file's
// merges ("a b", split at the first space after the first character, as
// llama.cpp does; a repeated pair keeps its first rank). The pre-tokenizer is
// the list of regular expressions llama.cpp uses for tokenizer.ggml.pre, each a
// Split with behavior Isolated (llama.cpp keeps the text between matches as
// pieces too), then ByteLevel without its own regex; a missing pre means
// llama.cpp's "default". The names (aliases of one row share its rules):
//
//   default (or missing)          [\p{P}$+<=>^~|]+ ; GPT-2 ; \p{N}+ ; [0-9]{3}
//   gpt-2 gpt2 phi-2 mpt olmo jais exaone4 trillion granite-docling
//                                 GPT-2
//   starcoder refact command-r smollm codeshell exaone minerva-7b
//                                 \p{N} ; GPT-2
//   falcon                        [\p{P}$+<=>^~|`]+ ; GPT-2 ; [0-9]{3}
//   llama3 llama-v3 llama-bpe falcon3 falcon-h1 pixtral midm-2.0 lfm2
//                                 Llama-3 regex; ignore_merges; add_bos default true
//   dbrx smaug-bpe glm4 chatglm-bpe
//                                 Llama-3 regex
//   qwen2 deepseek-r1-qwen stablelm2 megrez hunyuan grok-2
//                                 Qwen-2 regex (Llama-3's with single digits)
//   qwen35                        Qwen-3.5 regex (marks join letters)
//   seed-coder                    Seed-Coder regex
//   deepseek-llm                  DeepSeek LLM list (6 regexes)
//   deepseek-coder                DeepSeek Coder list (5 regexes)
//   deepseek-v3 hunyuan-dense     DeepSeek V3 list (3 regexes)
//   gpt-4o llama4 minimax-m2      GPT-4o regex in llama.cpp's form
//   tekken                        Tekken regex in llama.cpp's form; ignore_merges; add_bos default true
//   poro-chat bloom gpt3-finnish   ?[^(\s|.,!?…。，、।۔،)]+
//   viking                         ?[^(\s|.,!?…。，、।۔،)]+ ; \p{N}
//
// (GPT-2 = 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+.)
// Where llama.cpp rewrote a model's regex for its own engine (contractions as
// '[sS] instead of (?i:'s), GPT-4o's and Tekken's upper/lower-case classes as
// "a letter that is not a-z / A-Z"), its form is used, so non-ASCII letters
// split as in llama.cpp (which can differ from the model's own tokenizer.json).
// No normalizer (llama.cpp applies none, e.g. no NFC for Qwen); ByteLevel
// decoder; no unk token (like llama.cpp, a byte with no token is dropped).
//
// "llama" (SentencePiece BPE with scores): BPE with byte_fallback (when the
// vocabulary has <0xXX> tokens), unk_token = the unknown token, fuse_unk; the
// normalizer Replace(" " -> "▁"), preceded by Prepend("▁") when
// add_space_prefix (default true), which like llama.cpp puts "▁" before the
// text and before the text after every added token; no pre-tokenizer; the
// decoder Replace("▁" -> " "), ByteFallback, Fuse, then Strip(" ", 1, 0) when
// add_space_prefix. GGUF has no merges for these models, so they are derived
// from the vocabulary and the scores:
//
//   SPM merges rule: for every token T and every split of T's text into two
//   non-empty parts at a character boundary where both parts are tokens L and
//   R, (L, R) is a merge; merges are ranked by T's score, highest first; ties
//   by T's id, then L's id, then R's id (ascending). NaN scores rank last;
//   missing scores count as 0.
//
// This is how SentencePiece's BPE picks merges (the adjacent pair whose
// concatenation is the highest-scoring piece) and how Hugging Face's converter
// writes them, so a Llama-2 GGUF gives back Llama-2's published merges. One
// difference remains: SentencePiece / llama.cpp break a tie between equal
// scores by position (leftmost pair first), a BPE merge list only by rank, so
// runs of pieces with one shared score (Llama's whitespace pieces all have
// -1e9) can segment differently; and a character that is not itself a token
// falls back to bytes before merging (llama.cpp can still merge it into a
// longer token).
//
// Special ids out of [0, number of tokens) are an error. For "llama" models a
// missing bos / eos / unk id means 1 / 2 / 0 (llama.cpp's defaults); for "gpt2"
// there is no default. add_bos / add_eos (defaults: llama true / false, gpt2
// per pre-tokenizer row / false) become a TemplateProcessing post-processor.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "core/status.h"

namespace kiln {

struct GgufTokenizerData {
  std::string model, pre;                   // tokenizer.ggml.model / .pre
  std::vector<std::string> tokens;          // tokenizer.ggml.tokens, in id order
  std::vector<int32_t> token_types;         // tokenizer.ggml.token_type (empty: all normal)
  std::vector<float> scores;                // tokenizer.ggml.scores (empty: none)
  std::vector<std::string> merges;          // tokenizer.ggml.merges, "a b"
  std::optional<int64_t> bos_id, eos_id, unk_id, pad_id, eot_id;
  std::optional<bool> add_bos, add_eos, add_space_prefix;
  std::string chat_template;                // tokenizer.chat_template
};

// tokenizer.json (Hugging Face `tokenizers` format) that tokenizes as
// llama.cpp does with this metadata. Errors (InvalidArgument, Unimplemented
// for an unknown model or pre-tokenizer) name the metadata key at fault.
Result<nlohmann::json> gguf_to_hf_tokenizer_json(const GgufTokenizerData& d);

// tokenizer_config.json: bos/eos/unk/pad tokens (their text, null when absent
// or out of range), add_bos_token / add_eos_token (with the defaults above),
// added_tokens_decoder, chat_template (when the file has one) and
// clean_up_tokenization_spaces false.
nlohmann::json gguf_to_hf_tokenizer_config(const GgufTokenizerData& d);

// generation_config.json: bos_token_id, pad_token_id, and eos_token_id = the
// ids that end generation as llama.cpp decides them: eos, eot, then (in id
// order) every control token that is an end-of-generation marker by its text
// (where llama.cpp takes one fill-in-the-middle pad / repo / separator token of
// each kind, every one is taken). Ids out of range are left out.
nlohmann::json gguf_to_hf_generation_config(const GgufTokenizerData& d);

// The tokenizer.ggml.pre names gguf_to_hf_tokenizer_json accepts for "gpt2".
std::vector<std::string> gguf_supported_pre_tokenizers();

}  // namespace kiln
