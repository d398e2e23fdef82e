// Unit tests of the tokenizer components on small hand-made tokenizer.json
// documents. Expected values were checked against Hugging Face `tokenizers`
// 0.23.2 on the same documents.
#include "tokenizer/tokenizer.h"

#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "test_util.h"

namespace kiln {
namespace {

using nlohmann::json;
using Strings = std::vector<std::string>;

// Printable ASCII plus tab/newline, as one-character tokens.
Strings ascii_chars() {
  Strings v;
  for (int c = 9; c < 127; ++c) v.push_back(std::string(1, static_cast<char>(c)));
  return v;
}

Strings operator+(Strings a, const Strings& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// A BPE tokenizer.json whose vocab is `vocab` (ids in order, duplicates
// skipped). With ignore_merges and no merges, a pre-tokenized piece that is in
// the vocab stays whole and any other piece falls apart into characters, so
// the tokens show the normalizer's and pre-tokenizer's output.
json make_doc(const Strings& vocab, json normalizer = nullptr, json pre = nullptr, json decoder = nullptr,
              json post = nullptr, json added = json::array(), json model_extra = json::object()) {
  json v = json::object();
  for (const auto& s : vocab) {
    if (!v.contains(s)) v[s] = static_cast<int>(v.size());
  }
  json model = {{"type", "BPE"},
                {"dropout", nullptr},
                {"unk_token", nullptr},
                {"continuing_subword_prefix", nullptr},
                {"end_of_word_suffix", nullptr},
                {"fuse_unk", false},
                {"byte_fallback", false},
                {"ignore_merges", true},
                {"vocab", v},
                {"merges", json::array()}};
  for (auto it = model_extra.begin(); it != model_extra.end(); ++it) model[it.key()] = it.value();
  return {{"version", "1.0"},       {"truncation", nullptr},    {"padding", nullptr},
          {"added_tokens", added},  {"normalizer", normalizer}, {"pre_tokenizer", pre},
          {"post_processor", post}, {"decoder", decoder},       {"model", model}};
}

json added_token(const std::string& content, json fields = json::object()) {
  json t = {{"id", 0},         {"content", content},  {"single_word", false}, {"lstrip", false},
            {"rstrip", false}, {"normalized", false}, {"special", true}};
  for (auto it = fields.begin(); it != fields.end(); ++it) t[it.key()] = it.value();
  return t;
}

std::shared_ptr<const Tokenizer> load(const json& doc) {
  auto t = Tokenizer::from_json(doc.dump());
  EXPECT_TRUE(t.ok()) << t.status().to_string();
  return t.ok() ? *t : nullptr;
}

Strings tokens(const json& doc, const std::string& text, bool add_special = false) {
  auto t = load(doc);
  if (!t) return {"<load failed>"};
  auto ids = t->encode(text, add_special);
  EXPECT_TRUE(ids.ok()) << ids.status().to_string();
  Strings out;
  if (ids.ok()) {
    for (int32_t id : *ids) out.push_back(t->id_to_token(id));
  }
  return out;
}

std::vector<int32_t> ids_of(const json& doc, const std::string& text, bool add_special = false) {
  auto t = load(doc);
  auto ids = t->encode(text, add_special);
  EXPECT_TRUE(ids.ok()) << ids.status().to_string();
  return ids.ok() ? *ids : std::vector<int32_t>{};
}

// Decodes the tokens named by their strings.
std::string decode_tokens(const json& doc, const Strings& toks, bool skip_special = false) {
  auto t = load(doc);
  std::vector<int32_t> ids;
  for (const auto& s : toks) {
    auto id = t->token_to_id(s);
    EXPECT_TRUE(id.has_value()) << s;
    ids.push_back(id.value_or(0));
  }
  auto out = t->decode(ids, skip_special);
  EXPECT_TRUE(out.ok()) << out.status().to_string();
  return out.ok() ? *out : "";
}

Status load_status(const json& doc) {
  auto t = Tokenizer::from_json(doc.dump());
  return t.ok() ? Status() : t.status();
}

// ---------------------------------------------------------------- normalizers

TEST(TokenizerNormalizers, UnicodeForms) {
  Strings v = ascii_chars() + Strings{"é", "e", "\u0301", "ﬁ"};
  EXPECT_EQ(tokens(make_doc(v, {{"type", "NFC"}}), "e\u0301 ﬁ"), (Strings{"é", " ", "ﬁ"}));
  EXPECT_EQ(tokens(make_doc(v, {{"type", "NFD"}}), "é ﬁ"), (Strings{"e", "\u0301", " ", "ﬁ"}));
  EXPECT_EQ(tokens(make_doc(v, {{"type", "NFKC"}}), "e\u0301 ﬁ"), (Strings{"é", " ", "f", "i"}));
  EXPECT_EQ(tokens(make_doc(v, {{"type", "NFKD"}}), "é ﬁ"), (Strings{"e", "\u0301", " ", "f", "i"}));
}

TEST(TokenizerNormalizers, Lowercase) {
  Strings v = ascii_chars() + Strings{"σ", "\u0307"};
  // U+0130 lowercases to two characters, as Rust's char::to_lowercase does; U+212A (Kelvin) to k.
  EXPECT_EQ(tokens(make_doc(v, {{"type", "Lowercase"}}), "AbC İΣ K"),
            (Strings{"a", "b", "c", " ", "i", "\u0307", "σ", " ", "k"}));
}

TEST(TokenizerNormalizers, StripAndPrepend) {
  Strings v = ascii_chars() + Strings{"▁"};
  EXPECT_EQ(tokens(make_doc(v, {{"type", "Strip"}, {"strip_left", true}, {"strip_right", true}}), "  a b \t"),
            (Strings{"a", " ", "b"}));
  EXPECT_EQ(
      tokens(make_doc(v, {{"type", "Strip"}, {"strip_left", true}, {"strip_right", false}}), "  a b \t"),
      (Strings{"a", " ", "b", " ", "\t"}));
  EXPECT_EQ(tokens(make_doc(v, {{"type", "Prepend"}, {"prepend", "▁"}}), "ab"), (Strings{"▁", "a", "b"}));
  EXPECT_EQ(tokens(make_doc(v, {{"type", "Prepend"}, {"prepend", "▁"}}), ""), (Strings{}));
}

TEST(TokenizerNormalizers, ReplaceStringRegexAndSequence) {
  Strings v = ascii_chars() + Strings{"▁"};
  json rs = {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "▁"}};
  EXPECT_EQ(tokens(make_doc(v, rs), "a b  c"), (Strings{"a", "▁", "b", "▁", "▁", "c"}));
  json rr = {{"type", "Replace"}, {"pattern", {{"Regex", "\\s+"}}}, {"content", "_"}};
  EXPECT_EQ(tokens(make_doc(v, rr), "a b \t c"), (Strings{"a", "_", "b", "_", "c"}));
  json seq = {
      {"type", "Sequence"},
      {"normalizers",
       {{{"type", "Lowercase"}}, {{"type", "Replace"}, {"pattern", {{"String", "b"}}}, {"content", "xy"}}}}};
  EXPECT_EQ(tokens(make_doc(v, seq), "ABC"), (Strings{"a", "x", "y", "c"}));
}

// ------------------------------------------------------------- pre-tokenizers

json split(const std::string& pattern, const std::string& behavior, bool invert = false, bool regex = true) {
  return {{"type", "Split"},
          {"pattern", {{regex ? "Regex" : "String", pattern}}},
          {"behavior", behavior},
          {"invert", invert}};
}

TEST(TokenizerPreTokenizers, SplitBehaviors) {
  Strings v = ascii_chars() + Strings{"--", "a-", "b-", "c-", "-b", "-c", "-a", "--c", "b--", "b--c", "a-b"};
  const std::string text = "a-b--c-";
  EXPECT_EQ(tokens(make_doc(v, nullptr, split("-", "Removed", false, false)), text),
            (Strings{"a", "b", "c"}));
  EXPECT_EQ(tokens(make_doc(v, nullptr, split("-", "Isolated", false, false)), text),
            (Strings{"a", "-", "b", "-", "-", "c", "-"}));
  EXPECT_EQ(tokens(make_doc(v, nullptr, split("-", "MergedWithPrevious", false, false)), text),
            (Strings{"a-", "b-", "-", "c-"}));
  EXPECT_EQ(tokens(make_doc(v, nullptr, split("-", "MergedWithNext", false, false)), text),
            (Strings{"a", "-b", "-", "-c", "-"}));
  EXPECT_EQ(tokens(make_doc(v, nullptr, split("-", "Contiguous", false, false)), text),
            (Strings{"a", "-", "b", "--", "c", "-"}));
}

TEST(TokenizerPreTokenizers, SplitRegexInvertLookaheadAndEmptyMatches) {
  Strings v = ascii_chars() + Strings{"ab", "cd", "  ", "c"};
  EXPECT_EQ(tokens(make_doc(v, nullptr, split("\\w+", "Isolated", true)), "ab  cd!"),
            (Strings{"ab", "  ", "cd", "!"}));
  EXPECT_EQ(tokens(make_doc(v, nullptr, split("\\w+", "Removed", true)), "ab  cd!"), (Strings{"ab", "cd"}));
  EXPECT_EQ(tokens(make_doc(v, nullptr, split("\\s+(?!\\S)|\\s+", "Isolated")), "x   x "),
            (Strings{"x", "  ", " ", "x", " "}));
  // An empty match splits too (Oniguruma's iteration, which skips an empty match right after a match).
  EXPECT_EQ(tokens(make_doc(v, nullptr, split("x*", "Removed")), "abxxc"), (Strings{"a", "b", "c"}));
}

TEST(TokenizerPreTokenizers, ByteLevel) {
  Strings v = ascii_chars() + Strings{"Ġhello", "Ġworld", "Ċ", "helloĠworld!Ċ"};
  json bl = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}};
  EXPECT_EQ(tokens(make_doc(v, nullptr, bl), "hello world!\n"), (Strings{"Ġhello", "Ġworld", "!", "Ċ"}));
  json bl2 = {
      {"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}};
  EXPECT_EQ(tokens(make_doc(v, nullptr, bl2), "hello world!\n"), (Strings{"helloĠworld!Ċ"}));
}

TEST(TokenizerPreTokenizers, MetaspacePrependSchemes) {
  Strings v = ascii_chars() + Strings{"▁", "▁hello", "▁world", "hello", "world", "▁hello▁world"};
  json added = json::array({added_token("<x>")});
  auto doc = [&](const std::string& scheme, bool split_on = true) {
    json ms = {{"type", "Metaspace"}, {"replacement", "▁"}, {"prepend_scheme", scheme}, {"split", split_on}};
    return make_doc(v, nullptr, ms, nullptr, nullptr, added);
  };
  const std::string text = "hello world<x>world";
  EXPECT_EQ(tokens(doc("always"), text), (Strings{"▁hello", "▁world", "<x>", "▁world"}));
  EXPECT_EQ(tokens(doc("first"), text), (Strings{"▁hello", "▁world", "<x>", "world"}));
  EXPECT_EQ(tokens(doc("never"), text), (Strings{"hello", "▁world", "<x>", "world"}));
  EXPECT_EQ(tokens(doc("always", false), "hello world"), (Strings{"▁hello▁world"}));
}

TEST(TokenizerPreTokenizers, DigitsPunctuationWhitespace) {
  Strings v = ascii_chars() +
              Strings{"12", "34", "١", "²", "ab", "cd", "«", "»", "hello", "world", "!?", "é1", "world!?"};
  EXPECT_EQ(tokens(make_doc(v, nullptr, {{"type", "Digits"}, {"individual_digits", false}}), "a12b34"),
            (Strings{"a", "12", "b", "34"}));
  // Any Unicode number counts, and a contiguous run stays one piece.
  EXPECT_EQ(tokens(make_doc(v, nullptr, {{"type", "Digits"}, {"individual_digits", false}}), "b34١²"),
            (Strings{"b", "3", "4", "١", "²"}));
  EXPECT_EQ(tokens(make_doc(v, nullptr, {{"type", "Digits"}, {"individual_digits", true}}), "a12b"),
            (Strings{"a", "1", "2", "b"}));
  EXPECT_EQ(tokens(make_doc(v, nullptr, {{"type", "Punctuation"}, {"behavior", "Isolated"}}), "ab,cd«»$"),
            (Strings{"ab", ",", "cd", "«", "»", "$"}));
  EXPECT_EQ(tokens(make_doc(v, nullptr, {{"type", "Whitespace"}}), "hello  world!? é1"),
            (Strings{"hello", "world", "!?", "é1"}));
  EXPECT_EQ(tokens(make_doc(v, nullptr, {{"type", "WhitespaceSplit"}}), "hello \t world!?"),
            (Strings{"hello", "world!?"}));
  json seq = {
      {"type", "Sequence"},
      {"pretokenizers", {{{"type", "WhitespaceSplit"}}, {{"type", "Digits"}, {"individual_digits", true}}}}};
  EXPECT_EQ(tokens(make_doc(v, nullptr, seq), "ab 123"), (Strings{"ab", "1", "2", "3"}));
}

// ------------------------------------------ Unicode versions of `tokenizers`

// `tokenizers` mixes Unicode versions: Oniguruma's 16.0 for regex classes,
// 9.0 for normalization, 8.0 for Punctuation, Rust's 17.0 for case mapping.
TEST(TokenizerUnicodeVersions, RegexClassesAreUnicode16) {
  // U+1E5D0 (Ol Onal, 16.0) is a letter; U+11DB0 (Tolong Siki, 17.0) is not yet.
  Strings v = ascii_chars() + Strings{"a\U0001E5D0b", "\U00011DB0"};
  json pre = split("\\p{L}+", "Isolated");
  EXPECT_EQ(tokens(make_doc(v, nullptr, pre), "a\U0001E5D0b"), (Strings{"a\U0001E5D0b"}));
  EXPECT_EQ(tokens(make_doc(v, nullptr, pre), "a\U00011DB0b"), (Strings{"a", "\U00011DB0", "b"}));
  // Oniguruma's \w takes the Latin-1 superscripts and fractions, not U+200D.
  Strings w = ascii_chars() + Strings{"a½b²", "\u200d"};
  json pre_w = split("\\w+", "Removed", true);
  EXPECT_EQ(tokens(make_doc(w, nullptr, pre_w), "a½b² c\u200dd"), (Strings{"a½b²", "c", "d"}));
}

TEST(TokenizerUnicodeVersions, NormalizationIsUnicode9) {
  // U+0EBA (12.0, combining class 9 today) is an unassigned starter to `tokenizers`,
  // so the dagesh from U+FB4A's decomposition is not moved after it.
  Strings v = ascii_chars() + Strings{"\u05EA", "\u05BC", "\u0EBA", "\u1DD0"};
  EXPECT_EQ(tokens(make_doc(v, {{"type", "NFC"}}), "\uFB4A\u0EBA\u1DD0"),
            (Strings{"\u05EA", "\u05BC", "\u0EBA", "\u1DD0"}));
  EXPECT_EQ(tokens(make_doc(v, {{"type", "NFD"}}), "\uFB4A\u0EBA\u1DD0"),
            (Strings{"\u05EA", "\u05BC", "\u0EBA", "\u1DD0"}));
}

TEST(TokenizerUnicodeVersions, PunctuationIsUnicode8AndLowercaseIsCurrent) {
  Strings v = ascii_chars() + Strings{"a\u2E53b", "\u166D", "\u1C8A"};
  json punct = {{"type", "Punctuation"}, {"behavior", "Isolated"}};
  // U+2E53 (14.0) is not punctuation there; U+166D (a symbol since 12.0) still is.
  EXPECT_EQ(tokens(make_doc(v, nullptr, punct), "a\u2E53b"), (Strings{"a\u2E53b"}));
  EXPECT_EQ(tokens(make_doc(v, nullptr, punct), "a\u166Db"), (Strings{"a", "\u166D", "b"}));
  EXPECT_EQ(tokens(make_doc(v, {{"type", "Lowercase"}}), "\u1C89"), (Strings{"\u1C8A"}));
}

// ------------------------------------------------------------------- decoders

Strings decoder_vocab() {
  return {"Ġhello", "Ġworld", "Ã",   "©", "<0xE2>", "<0x82>", "<0xAC>",     "<0x41>", "<0xFF>", "▁hello",
          "▁world", "▁",      "▁▁a", "a", "b",      "__x__",  "<|im_end|>", "xay",    "aaxaa"};
}

TEST(TokenizerDecoders, ByteLevel) {
  json d = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}};
  json doc = make_doc(decoder_vocab(), nullptr, nullptr, d);
  // A token with characters outside the byte alphabet contributes its own bytes.
  EXPECT_EQ(decode_tokens(doc, {"Ġhello", "Ġworld", "Ã", "©", "<|im_end|>"}), " hello worldé<|im_end|>");
  // Incomplete UTF-8 becomes U+FFFD.
  EXPECT_EQ(decode_tokens(doc, {"Ġhello", "Ã"}), " hello\uFFFD");
}

TEST(TokenizerDecoders, Metaspace) {
  auto doc = [](const std::string& scheme) {
    json d = {{"type", "Metaspace"}, {"replacement", "▁"}, {"prepend_scheme", scheme}, {"split", true}};
    return make_doc(decoder_vocab(), nullptr, nullptr, d);
  };
  EXPECT_EQ(decode_tokens(doc("always"), {"▁hello", "▁world", "▁▁a"}), "hello world  a");
  EXPECT_EQ(decode_tokens(doc("never"), {"▁hello", "▁world"}), " hello world");
  EXPECT_EQ(decode_tokens(doc("first"), {"▁▁a", "▁hello"}), "a hello");
}

TEST(TokenizerDecoders, ReplaceByteFallbackFuseStrip) {
  Strings v = decoder_vocab();
  json rs = {{"type", "Replace"}, {"pattern", {{"String", "a"}}}, {"content", "AA"}};
  EXPECT_EQ(decode_tokens(make_doc(v, nullptr, nullptr, rs), {"xay", "b"}), "xAAyb");
  json rr = {{"type", "Replace"}, {"pattern", {{"Regex", "a+"}}}, {"content", "-"}};
  EXPECT_EQ(decode_tokens(make_doc(v, nullptr, nullptr, rr), {"aaxaa"}), "-x-");
  json bf = {{"type", "ByteFallback"}};
  EXPECT_EQ(decode_tokens(make_doc(v, nullptr, nullptr, bf), {"a", "<0xE2>", "<0x82>", "<0xAC>", "b"}),
            "a€b");
  // An invalid byte run gives one U+FFFD per byte.
  EXPECT_EQ(decode_tokens(make_doc(v, nullptr, nullptr, bf), {"a", "<0xE2>", "<0x82>", "b", "<0xFF>"}),
            "a\uFFFD\uFFFDb\uFFFD");
  EXPECT_EQ(decode_tokens(make_doc(v, nullptr, nullptr, {{"type", "Fuse"}}), {"a", "b", "a"}), "aba");
  json st = {{"type", "Strip"}, {"content", "_"}, {"start", 1}, {"stop", 2}};
  EXPECT_EQ(decode_tokens(make_doc(v, nullptr, nullptr, st), {"__x__", "a"}), "_xa");
  // Without a decoder, tokens are joined with spaces.
  EXPECT_EQ(decode_tokens(make_doc(v), {"a", "b", "▁hello"}), "a b ▁hello");
}

json llama_decoder() {
  return {{"type", "Sequence"},
          {"decoders",
           {{{"type", "Replace"}, {"pattern", {{"String", "▁"}}}, {"content", " "}},
            {{"type", "ByteFallback"}},
            {{"type", "Fuse"}},
            {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}};
}

TEST(TokenizerDecoders, SequenceAndSkipSpecial) {
  Strings v = decoder_vocab();
  EXPECT_EQ(
      decode_tokens(make_doc(v, nullptr, nullptr, llama_decoder()), {"▁hello", "<0x41>", "▁world", "<0xE2>"}),
      "helloA world\uFFFD");
  json doc = make_doc(v, nullptr, nullptr, llama_decoder(), nullptr, json::array({added_token("<s>")}));
  EXPECT_EQ(decode_tokens(doc, {"<s>", "▁hello"}, true), "hello");
  EXPECT_EQ(decode_tokens(doc, {"<s>", "▁hello"}, false), "<s> hello");
}

// --------------------------------------------------------------- added tokens

TEST(TokenizerAddedTokens, LongestLeftmostFirst) {
  json doc = make_doc(ascii_chars(), nullptr, nullptr, nullptr, nullptr,
                      json::array({added_token("<a>"), added_token("<ab>"), added_token("<a><b>")}));
  EXPECT_EQ(tokens(doc, "x<a><b>y<ab><a>"), (Strings{"x", "<a><b>", "y", "<ab>", "<a>"}));
}

TEST(TokenizerAddedTokens, LstripRstripSingleWord) {
  Strings v = ascii_chars();
  auto doc = [&](json fields, const std::string& content = "<m>") {
    return make_doc(v, nullptr, nullptr, nullptr, nullptr, json::array({added_token(content, fields)}));
  };
  // The stripped spaces become part of the added token.
  EXPECT_EQ(tokens(doc({{"lstrip", true}}), "a  <m>  b"), (Strings{"a", "<m>", " ", " ", "b"}));
  EXPECT_EQ(tokens(doc({{"rstrip", true}}), "a  <m>  b"), (Strings{"a", " ", " ", "<m>", "b"}));
  EXPECT_EQ(tokens(doc({{"single_word", true}}, "cat"), "cat concat cat. cats"),
            (Strings{"cat", " ", "c", "o", "n", "c", "a", "t", " ", "cat", ".", " ", "c", "a", "t", "s"}));
}

TEST(TokenizerAddedTokens, NormalizedTokensMatchNormalizedText) {
  json added =
      json::array({added_token("HI", {{"normalized", true}, {"special", false}}), added_token("BYE")});
  json doc = make_doc(ascii_chars(), {{"type", "Lowercase"}}, nullptr, nullptr, nullptr, added);
  // "HI" (normalized) matches the lowercased "hi"; "BYE" (not normalized) only the raw "BYE".
  EXPECT_EQ(tokens(doc, "HI hi BYE bye"), (Strings{"hi", " ", "hi", " ", "BYE", " ", "b", "y", "e"}));
  auto t = load(doc);
  auto hi = t->token_to_id("HI");
  ASSERT_TRUE(hi.has_value());
  EXPECT_EQ(t->id_to_token(*hi), "hi");
}

TEST(TokenizerAddedTokens, SplitBeforeNormalizer) {
  // The legacy Llama normalizer runs on each piece around an added token.
  json norm = {{"type", "Sequence"},
               {"normalizers",
                {{{"type", "Prepend"}, {"prepend", "▁"}},
                 {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "▁"}}}}};
  json doc = make_doc(ascii_chars() + Strings{"▁"}, norm, nullptr, nullptr, nullptr,
                      json::array({added_token("<s>")}));
  EXPECT_EQ(tokens(doc, "a <s>b"), (Strings{"▁", "a", "▁", "<s>", "▁", "b"}));
}

TEST(TokenizerAddedTokens, IdsAndSpecialFlags) {
  Strings v = ascii_chars();
  json added = json::array({added_token("<a>"), added_token("<ab>"), added_token("x", {{"special", false}})});
  auto t = load(make_doc(v, nullptr, nullptr, nullptr, nullptr, added));
  const int n = static_cast<int>(v.size());
  // New contents get the ids after the model vocab; known content keeps its vocab id.
  EXPECT_EQ(t->token_to_id("<a>"), n);
  EXPECT_EQ(t->token_to_id("<ab>"), n + 1);
  EXPECT_EQ(t->token_to_id("x"), static_cast<int>('x' - 9));
  EXPECT_EQ(t->vocab_size(), n + 2);
  EXPECT_TRUE(t->is_special(n));
  EXPECT_FALSE(t->is_special('x' - 9));
  EXPECT_FALSE(t->is_special(0));
  // A special token that is also normalized decodes to its normalized form, which
  // is not special content, so skip_special_tokens keeps it (as `tokenizers` does).
  json added2 = json::array({added_token("HI", {{"normalized", true}})});
  auto t2 = load(make_doc(v, {{"type", "Lowercase"}}, nullptr, nullptr, nullptr, added2));
  auto hi = t2->token_to_id("HI");
  ASSERT_TRUE(hi.has_value());
  auto text = t2->decode(std::vector<int32_t>{*hi, *t2->token_to_id("a")}, true);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, "hi a");
}

// ------------------------------------------------------------------------ BPE

Strings bpe_vocab() {
  return {"<unk>",  "a",      "b",      "c",      "ab",     "bc",    "abc",
          "<0x61>", "<0xC3>", "<0xA9>", "<0xE2>", "<0x82>", "<0xAC>"};
}

json bpe_doc(const Strings& vocab, json merges, json extra = json::object()) {
  extra["merges"] = merges;
  if (!extra.contains("ignore_merges")) extra["ignore_merges"] = false;
  return make_doc(vocab, nullptr, nullptr, nullptr, nullptr, json::array(), extra);
}

TEST(TokenizerBpe, MergesAsStringsOrPairs) {
  std::vector<int32_t> want = {6, 4};  // abc ab
  EXPECT_EQ(ids_of(bpe_doc(bpe_vocab(), {"a b", "ab c"}), "abcab"), want);
  EXPECT_EQ(
      ids_of(bpe_doc(bpe_vocab(), json::array({json::array({"a", "b"}), json::array({"ab", "c"})})), "abcab"),
      want);
  // Rank order decides: "b c" first.
  EXPECT_EQ(ids_of(bpe_doc(bpe_vocab(), {"b c", "a b", "ab c"}), "abc"), (std::vector<int32_t>{1, 5}));
}

TEST(TokenizerBpe, LongWordMatchesShortMerges) {
  // A long word exercises the heap merge; the result is a repetition of "abc".
  std::string word;
  std::vector<int32_t> want;
  for (int i = 0; i < 3000; ++i) {
    word += "abc";
    want.push_back(6);
  }
  EXPECT_EQ(ids_of(bpe_doc(bpe_vocab(), {"a b", "ab c"}), word), want);
}

TEST(TokenizerBpe, UnknownAndByteFallback) {
  EXPECT_EQ(
      ids_of(bpe_doc(bpe_vocab(), json::array(), {{"unk_token", "<unk>"}, {"fuse_unk", true}}), "axyzbé"),
      (std::vector<int32_t>{1, 0, 2, 0}));
  EXPECT_EQ(
      ids_of(bpe_doc(bpe_vocab(), json::array(), {{"unk_token", "<unk>"}, {"fuse_unk", false}}), "axyzbé"),
      (std::vector<int32_t>{1, 0, 0, 0, 2, 0}));
  EXPECT_EQ(
      ids_of(bpe_doc(bpe_vocab(), json::array(), {{"unk_token", "<unk>"}, {"byte_fallback", true}}), "aé€x"),
      (std::vector<int32_t>{1, 8, 9, 10, 11, 12, 0}));
  // Without an unk token, unknown characters are dropped.
  EXPECT_EQ(ids_of(bpe_doc(bpe_vocab(), json::array()), "axb"), (std::vector<int32_t>{1, 2}));
}

TEST(TokenizerBpe, PrefixSuffixAndIgnoreMerges) {
  Strings v2 = {"a", "##b", "##c", "ab", "abc"};
  EXPECT_EQ(ids_of(bpe_doc(v2, {"a ##b"}, {{"continuing_subword_prefix", "##"}}), "abc"),
            (std::vector<int32_t>{3, 2}));
  Strings v3 = {"a", "b", "c</w>", "ab", "abc</w>", "b</w>"};
  json suffix = {{"end_of_word_suffix", "</w>"}};
  EXPECT_EQ(ids_of(bpe_doc(v3, {"a b", "ab c</w>"}, suffix), "abc"), (std::vector<int32_t>{4}));
  EXPECT_EQ(ids_of(bpe_doc(v3, {"a b", "ab c</w>"}, suffix), "ab"), (std::vector<int32_t>{0, 5}));
  Strings v4 = {"a", "b", "c", "ab", "abc"};
  EXPECT_EQ(ids_of(bpe_doc(v4, {"a b"}, {{"ignore_merges", true}}), "abc"), (std::vector<int32_t>{4}));
  EXPECT_EQ(ids_of(bpe_doc(v4, {"a b"}, {{"ignore_merges", false}}), "abc"), (std::vector<int32_t>{3, 2}));
}

// ------------------------------------------------------------ post-processors

json template_post() {
  return {{"type", "TemplateProcessing"},
          {"single",
           {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
            {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
            {{"SpecialToken", {{"id", "</s>"}, {"type_id", 0}}}}}},
          {"pair",
           {{{"Sequence", {{"id", "A"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}}},
          {"special_tokens",
           {{"<s>", {{"id", "<s>"}, {"ids", {7}}, {"tokens", {"<s>"}}}},
            {"</s>", {{"id", "</s>"}, {"ids", {8, 9}}, {"tokens", {"</s>", "x"}}}}}}};
}

TEST(TokenizerPostProcessors, TemplateAndSequence) {
  Strings v = {"a", "b", "c", "ab", "abc"};
  json extra = {{"merges", {"a b"}}, {"ignore_merges", false}};
  json doc = make_doc(v, nullptr, nullptr, nullptr, template_post(), json::array(), extra);
  EXPECT_EQ(ids_of(doc, "abc", true), (std::vector<int32_t>{7, 3, 2, 8, 9}));
  EXPECT_EQ(ids_of(doc, "abc", false), (std::vector<int32_t>{3, 2}));
  EXPECT_EQ(ids_of(doc, "", true), (std::vector<int32_t>{7, 8, 9}));
  json seq = {
      {"type", "Sequence"},
      {"processors",
       {{{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}, {"use_regex", false}},
        template_post()}}};
  json doc2 = make_doc(v, nullptr, nullptr, nullptr, seq, json::array(), extra);
  EXPECT_EQ(ids_of(doc2, "abc", true), (std::vector<int32_t>{7, 3, 2, 8, 9}));
}

// ------------------------------------------------------------------ refusals

TEST(TokenizerRefusals, MalformedJsonNamesThePath) {
  json doc = bpe_doc(bpe_vocab(), {"a b", "ab c", "b c", "a b", "a b", "a b", "a b", "a b", "a b", "a b",
                                   "a b", "a b", "abc"});
  Status st = load_status(doc);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("model.merges[12]: expected \"a b\" or [a, b]"), std::string::npos)
      << st.message();

  doc = bpe_doc(bpe_vocab(), json::array({json::array({"a", "b"}), 5}));
  st = load_status(doc);
  EXPECT_NE(st.message().find("model.merges[1]: expected \"a b\" or [a, b]"), std::string::npos)
      << st.message();

  doc = bpe_doc(bpe_vocab(), {"a x"});
  st = load_status(doc);
  EXPECT_NE(st.message().find("model.merges[0]: \"x\" is not in the vocab"), std::string::npos)
      << st.message();

  doc = make_doc(ascii_chars(),
                 {{"type", "Sequence"}, {"normalizers", {{{"type", "NFC"}}, {{"type", "Replace"}}}}});
  st = load_status(doc);
  EXPECT_NE(st.message().find("normalizer.normalizers[1].pattern"), std::string::npos) << st.message();

  doc = make_doc(ascii_chars(), nullptr, split("(", "Isolated"));
  st = load_status(doc);
  EXPECT_NE(st.message().find("pre_tokenizer.pattern.Regex: bad regex"), std::string::npos) << st.message();

  doc = make_doc(ascii_chars(), nullptr, split("a", "Sideways"));
  st = load_status(doc);
  EXPECT_NE(st.message().find("pre_tokenizer.behavior"), std::string::npos) << st.message();

  doc = make_doc(ascii_chars(), nullptr, nullptr, nullptr, nullptr, json::array({json{{"id", 3}}}));
  st = load_status(doc);
  EXPECT_NE(st.message().find("added_tokens[0].content"), std::string::npos) << st.message();

  doc = make_doc(ascii_chars());
  doc["model"]["vocab"]["a"] = "one";
  st = load_status(doc);
  EXPECT_NE(st.message().find("model.vocab[\"a\"]"), std::string::npos) << st.message();

  st = Tokenizer::from_json("{\"model\": ").status();
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("not valid JSON"), std::string::npos) << st.message();
}

TEST(TokenizerRefusals, UnsupportedComponentsByName) {
  json doc = make_doc(ascii_chars());
  doc["model"]["type"] = "WordPiece";
  Status st = load_status(doc);
  EXPECT_EQ(st.code(), StatusCode::kUnimplemented);
  EXPECT_NE(st.message().find("WordPiece"), std::string::npos) << st.message();

  for (const char* type : {"Unigram", "WordLevel"}) {
    doc["model"]["type"] = type;
    st = load_status(doc);
    EXPECT_EQ(st.code(), StatusCode::kUnimplemented);
    EXPECT_NE(st.message().find(type), std::string::npos) << st.message();
  }

  doc = make_doc(ascii_chars());
  doc["model"]["dropout"] = 0.1;
  st = load_status(doc);
  EXPECT_EQ(st.code(), StatusCode::kUnimplemented);
  EXPECT_NE(st.message().find("model.dropout"), std::string::npos) << st.message();
  doc["model"]["dropout"] = 0.0;
  EXPECT_TRUE(load_status(doc).ok());

  st = load_status(make_doc(ascii_chars(), {{"type", "BertNormalizer"}}));
  EXPECT_EQ(st.code(), StatusCode::kUnimplemented);
  EXPECT_NE(st.message().find("normalizer.type: normalizer \"BertNormalizer\""), std::string::npos)
      << st.message();

  st = load_status(make_doc(ascii_chars(), nullptr, {{"type", "BertPreTokenizer"}}));
  EXPECT_EQ(st.code(), StatusCode::kUnimplemented);
  EXPECT_NE(st.message().find("BertPreTokenizer"), std::string::npos) << st.message();

  st = load_status(make_doc(ascii_chars(), nullptr, nullptr, {{"type", "WordPiece"}}));
  EXPECT_EQ(st.code(), StatusCode::kUnimplemented);
  EXPECT_NE(st.message().find("decoder.type"), std::string::npos) << st.message();

  st = load_status(make_doc(ascii_chars(), nullptr, nullptr, nullptr, {{"type", "RobertaProcessing"}}));
  EXPECT_EQ(st.code(), StatusCode::kUnimplemented);
  EXPECT_NE(st.message().find("post_processor.type"), std::string::npos) << st.message();
}

TEST(TokenizerRefusals, InvalidUtf8AndOutOfRangeIds) {
  auto t = load(make_doc(ascii_chars()));
  auto r = t->encode(
      "ab\xff"
      "cd",
      false);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("byte offset 2"), std::string::npos) << r.status().message();
  // A truncated sequence, an overlong form and a surrogate.
  EXPECT_NE(t->encode("abc\xe2\x82", false).status().message().find("byte offset 3"), std::string::npos);
  EXPECT_NE(t->encode("\xc0\xaf", false).status().message().find("byte offset 0"), std::string::npos);
  EXPECT_NE(t->encode("x\xed\xa0\x80", false).status().message().find("byte offset 1"), std::string::npos);

  auto d = t->decode(std::vector<int32_t>{1, t->vocab_size()}, false);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(d.status().message().find(std::to_string(t->vocab_size())), std::string::npos);
  EXPECT_FALSE(t->decode(std::vector<int32_t>{-1}, false).ok());
}

// ------------------------------------------------------- configs and loading

TEST(TokenizerConfig, EosAndBosFromConfigs) {
  json doc = make_doc(ascii_chars(), nullptr, nullptr, nullptr, nullptr,
                      json::array({added_token("<s>"), added_token("</s>"), added_token("<eot>")}));
  const int n = static_cast<int>(ascii_chars().size());
  json tcfg = {
      {"bos_token", "<s>"}, {"eos_token", {{"content", "</s>"}, {"special", true}}}, {"chat_template", "x"}};
  auto t = Tokenizer::from_json(doc.dump(), &tcfg);
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  EXPECT_EQ((*t)->eos_token_ids(), (std::vector<int32_t>{n + 1}));
  EXPECT_EQ((*t)->bos_token_id(), n);
  EXPECT_EQ((*t)->config().value("chat_template", ""), "x");

  json gcfg = {{"eos_token_id", {n + 1, n + 2}}, {"bos_token_id", n}};
  t = Tokenizer::from_json(doc.dump(), &tcfg, &gcfg);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ((*t)->eos_token_ids(), (std::vector<int32_t>{n + 1, n + 2}));
  gcfg = {{"eos_token_id", n + 2}};
  t = Tokenizer::from_json(doc.dump(), &tcfg, &gcfg);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ((*t)->eos_token_ids(), (std::vector<int32_t>{n + 2}));
  EXPECT_EQ((*t)->bos_token_id(), n);  // not in generation_config: from tokenizer_config
  gcfg = {{"eos_token_id", "x"}};
  EXPECT_FALSE(Tokenizer::from_json(doc.dump(), &tcfg, &gcfg).ok());

  t = Tokenizer::from_json(doc.dump());
  ASSERT_TRUE(t.ok());
  EXPECT_TRUE((*t)->eos_token_ids().empty());
  EXPECT_FALSE((*t)->bos_token_id().has_value());
  EXPECT_TRUE((*t)->config().is_object());
}

TEST(TokenizerConfig, FromDirWithGenerationConfig) {
  test::TempDir dir;
  json doc = make_doc(ascii_chars(), nullptr, nullptr, nullptr, nullptr, json::array({added_token("<e>")}));
  std::ofstream(dir.sub("tokenizer.json")) << doc.dump();
  std::ofstream(dir.sub("tokenizer_config.json")) << json{{"eos_token", "<e>"}}.dump();
  std::ofstream(dir.sub("generation_config.json")) << json{{"eos_token_id", {3, 4}}}.dump();
  auto t = Tokenizer::from_dir(dir.path());
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  EXPECT_EQ((*t)->eos_token_ids(), (std::vector<int32_t>{3, 4}));
  EXPECT_EQ(Tokenizer::from_dir(dir.sub("missing")).status().code(), StatusCode::kNotFound);
}

TEST(TokenizerConfig, RealTokenizers) {
  auto llama3 = Tokenizer::from_dir(test::data_path("tokenizers/llama3"));
  ASSERT_TRUE(llama3.ok()) << llama3.status().to_string();
  EXPECT_EQ((*llama3)->vocab_size(), 128256);
  EXPECT_EQ((*llama3)->bos_token_id(), 128000);
  EXPECT_EQ((*llama3)->eos_token_ids(), (std::vector<int32_t>{128001}));
  EXPECT_TRUE((*llama3)->is_special(128009));
  EXPECT_FALSE((*llama3)->is_special(1000));
  EXPECT_EQ((*llama3)->token_to_id("<|eot_id|>"), 128009);
  EXPECT_EQ((*llama3)->id_to_token(128009), "<|eot_id|>");
  EXPECT_TRUE((*llama3)->config().contains("chat_template"));

  auto qwen3 = Tokenizer::from_dir(test::data_path("tokenizers/qwen3"));
  ASSERT_TRUE(qwen3.ok()) << qwen3.status().to_string();
  EXPECT_EQ((*qwen3)->eos_token_ids(), (std::vector<int32_t>{151645}));
  EXPECT_FALSE((*qwen3)->bos_token_id().has_value());
  EXPECT_FALSE((*qwen3)->is_special(151667));  // <think> is an added token, not a special one

  auto llama2 = Tokenizer::from_dir(test::data_path("tokenizers/llama2"));
  ASSERT_TRUE(llama2.ok()) << llama2.status().to_string();
  EXPECT_EQ((*llama2)->vocab_size(), 32000);
  EXPECT_EQ((*llama2)->bos_token_id(), 1);
  EXPECT_EQ((*llama2)->eos_token_ids(), (std::vector<int32_t>{2}));
  auto ids = (*llama2)->encode("Hello world", true);
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(*ids, (std::vector<int32_t>{1, 22557, 1526}));
  auto text = (*llama2)->decode(*ids, true);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, "Hello world");
}

TEST(TokenizerThreads, ConcurrentEncodeIsConsistent) {
  auto t = Tokenizer::from_dir(test::data_path("tokenizers/qwen3"));
  ASSERT_TRUE(t.ok());
  std::vector<std::string> texts;
  for (int i = 0; i < 200; ++i) {
    texts.push_back("line " + std::to_string(i) + ": naïve café <think>" + std::string(i % 7, '!') +
                    " 你好 " + std::to_string(i * 7919));
  }
  std::vector<std::vector<int32_t>> want;
  for (const auto& s : texts) want.push_back((*t)->encode(s, false).value());
  std::vector<int> bad(4, 0);
  std::vector<std::thread> threads;
  for (int k = 0; k < 4; ++k) {
    threads.emplace_back([&, k] {
      for (int rep = 0; rep < 5; ++rep) {
        for (size_t i = 0; i < texts.size(); ++i) {
          auto ids = (*t)->encode(texts[(i + k * 13) % texts.size()], false);
          if (!ids.ok() || *ids != want[(i + k * 13) % texts.size()]) ++bad[k];
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(bad, (std::vector<int>{0, 0, 0, 0}));
}

}  // namespace
}  // namespace kiln
