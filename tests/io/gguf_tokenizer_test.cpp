// GGUF tokenizer metadata -> Hugging Face tokenizer files, checked by loading
// the result with Kiln's Tokenizer and comparing encodings with references:
//  * SmolLM2-135M-Instruct (gpt2, pre "smollm"): the real file's metadata
//    (tests/data/gguf/smollm2_tokenizer.json.gz, written by
//    export_tokenizer_metadata.py) against Hugging Face `tokenizers` running
//    SmolLM2's own kind of tokenizer.json and against llama.cpp's ids (both
//    recorded in the fixture; also tests/data/gguf/smollm2_llamacpp_goldens.json
//    when present);
//  * Llama-2 (llama / SentencePiece): metadata built from the Llama-2
//    tokenizer.json as a GGUF converter would (scores from the merge ranks),
//    against the Hugging Face goldens of tests/data/tokenizers;
//  * Llama-3 (pre "llama-bpe") and Qwen-3 (pre "qwen2") the same way (the
//    same metadata written to GGUF files and tokenized by llama-cpp-python
//    gave the converted tokenizers' ids on all 616 corpus lines of all three);
//  * metadata errors.
#include "io/gguf_tokenizer.h"

#include <gtest/gtest.h>
#include <utf8proc.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "test_util.h"
#include "tokenizer/golden_files.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace kiln {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

using test::ids_str;
using test::lines_of;
using test::read_gz;

void write_file(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << text;
  ASSERT_TRUE(f.good()) << path;
}

// ---------------------------------------------------------------------------
// SmolLM2 (gpt2 / smollm), from the real GGUF file's metadata.

const json& smollm2_fixture() {
  static const json j = [] {
    std::string text = read_gz(test::data_path("gguf/smollm2_tokenizer.json.gz"));
    return text.empty() ? json() : json::parse(text);
  }();
  return j;
}

GgufTokenizerData data_from_metadata(const json& m) {
  GgufTokenizerData d;
  d.model = m.at("tokenizer.ggml.model").get<std::string>();
  if (m.contains("tokenizer.ggml.pre")) d.pre = m.at("tokenizer.ggml.pre").get<std::string>();
  d.tokens = m.at("tokenizer.ggml.tokens").get<std::vector<std::string>>();
  if (m.contains("tokenizer.ggml.token_type")) d.token_types = m["tokenizer.ggml.token_type"].get<std::vector<int32_t>>();
  if (m.contains("tokenizer.ggml.scores")) d.scores = m["tokenizer.ggml.scores"].get<std::vector<float>>();
  if (m.contains("tokenizer.ggml.merges")) d.merges = m["tokenizer.ggml.merges"].get<std::vector<std::string>>();
  auto id = [&](const char* key, std::optional<int64_t>& out) {
    if (m.contains(key)) out = m[key].get<int64_t>();
  };
  id("tokenizer.ggml.bos_token_id", d.bos_id);
  id("tokenizer.ggml.eos_token_id", d.eos_id);
  id("tokenizer.ggml.unknown_token_id", d.unk_id);
  id("tokenizer.ggml.padding_token_id", d.pad_id);
  id("tokenizer.ggml.eot_token_id", d.eot_id);
  auto flag = [&](const char* key, std::optional<bool>& out) {
    if (m.contains(key)) out = m[key].get<bool>();
  };
  flag("tokenizer.ggml.add_bos_token", d.add_bos);
  flag("tokenizer.ggml.add_eos_token", d.add_eos);
  flag("tokenizer.ggml.add_space_prefix", d.add_space_prefix);
  if (m.contains("tokenizer.chat_template")) d.chat_template = m["tokenizer.chat_template"].get<std::string>();
  return d;
}

// Converts `d` and loads the result the way a converted checkpoint is loaded:
// the three files in one directory, read by Tokenizer::from_dir.
struct Converted {
  json tokenizer, config, generation;
  std::shared_ptr<const Tokenizer> tok;
};

void convert_and_load(const GgufTokenizerData& d, const test::TempDir& dir, Converted& c) {
  auto j = gguf_to_hf_tokenizer_json(d);
  ASSERT_TRUE(j.ok()) << j.status().to_string();
  c.tokenizer = std::move(*j);
  c.config = gguf_to_hf_tokenizer_config(d);
  c.generation = gguf_to_hf_generation_config(d);
  write_file(dir.sub("tokenizer.json"), c.tokenizer.dump());
  write_file(dir.sub("tokenizer_config.json"), c.config.dump(2));
  write_file(dir.sub("generation_config.json"), c.generation.dump(2));
  auto t = Tokenizer::from_dir(dir.path());
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  c.tok = *t;
}

class GgufTokenizerSmolLM2 : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(smollm2_fixture().is_object()) << "missing tests/data/gguf/smollm2_tokenizer.json.gz";
    d_ = data_from_metadata(smollm2_fixture().at("metadata"));
    convert_and_load(d_, dir_, c_);
  }
  GgufTokenizerData d_;
  test::TempDir dir_;
  Converted c_;
};

TEST_F(GgufTokenizerSmolLM2, MatchesHuggingFaceTokenizers) {
  const json& ref = smollm2_fixture().at("reference");
  const auto& texts = ref.at("texts");
  const auto& ids = ref.at("ids");
  const auto& decoded = ref.at("decoded");
  ASSERT_EQ(texts.size(), ids.size());
  ASSERT_GT(texts.size(), 600u);
  int bad_ids = 0, bad_special = 0, bad_decoded = 0, shown = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    const std::string text = texts[i].get<std::string>();
    const auto want = ids[i].get<std::vector<int32_t>>();
    auto got = c_.tok->encode(text, false);
    ASSERT_TRUE(got.ok()) << got.status().to_string();
    if (*got != want) {
      ++bad_ids;
      if (shown++ < 5)
        ADD_FAILURE() << "text " << i << ": " << json(text).dump() << "\n  got: " << ids_str(*got)
                      << "\n want: " << ids_str(want);
    }
    // add_bos_token is false in this file: add_special_tokens adds nothing.
    auto got_special = c_.tok->encode(text, true);
    ASSERT_TRUE(got_special.ok());
    if (*got_special != want) ++bad_special;
    auto dec = c_.tok->decode(want, false);
    ASSERT_TRUE(dec.ok()) << dec.status().to_string();
    if (*dec != decoded[i].get<std::string>()) {
      ++bad_decoded;
      if (shown++ < 5) ADD_FAILURE() << "text " << i << " decoded: " << json(*dec).dump();
    }
  }
  std::printf("[ smollm2 ] %zu texts (%d hand-written + corpus): ids equal %zu, with specials %zu, decoded %zu\n",
              texts.size(), ref.at("n_handwritten").get<int>(), texts.size() - bad_ids, texts.size() - bad_special,
              texts.size() - bad_decoded);
  EXPECT_EQ(bad_ids, 0);
  EXPECT_EQ(bad_special, 0);
  EXPECT_EQ(bad_decoded, 0);
}

TEST_F(GgufTokenizerSmolLM2, MatchesLlamaCpp) {
  // llama.cpp's ids for the same texts, recorded in the fixture by the exporter.
  const json& ref = smollm2_fixture().at("reference");
  const json& lcpp = smollm2_fixture().at("llamacpp");
  const auto& texts = ref.at("texts");
  ASSERT_EQ(lcpp.at("ids").size(), texts.size());
  ASSERT_EQ(lcpp.at("ids_add_bos").size(), texts.size());
  size_t equal = 0, equal_bos = 0;
  int shown = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    const std::string text = texts[i].get<std::string>();
    auto ids = c_.tok->encode(text, false);
    auto ids_bos = c_.tok->encode(text, true);
    ASSERT_TRUE(ids.ok() && ids_bos.ok());
    const auto want = lcpp["ids"][i].get<std::vector<int32_t>>();
    if (*ids == want) {
      ++equal;
    } else if (shown++ < 5) {
      ADD_FAILURE() << "text " << i << ": " << json(text).dump() << "\n  got: " << ids_str(*ids)
                    << "\n want: " << ids_str(want);
    }
    if (*ids_bos == lcpp["ids_add_bos"][i].get<std::vector<int32_t>>()) ++equal_bos;
  }
  std::printf("[ smollm2 ] llama.cpp (%s): ids equal on %zu of %zu texts, with add_bos %zu\n",
              lcpp.value("how", "").c_str(), equal, texts.size(), equal_bos);
  EXPECT_EQ(equal, texts.size());
  EXPECT_EQ(equal_bos, texts.size());

  // The other helper's goldens (prompts run through llama.cpp), when present.
  const std::string path = test::data_path("gguf/smollm2_llamacpp_goldens.json");
  std::ifstream f(path);
  if (!f) GTEST_SKIP() << "no " << path;
  json g = json::parse(f);
  const auto& prompts = g.at("prompts");
  ASSERT_FALSE(prompts.empty());
  size_t equal_prompts = 0;
  for (const auto& p : prompts) {
    const std::string text = p.at("text").get<std::string>();
    auto ids = c_.tok->encode(text, false);
    auto ids_bos = c_.tok->encode(text, true);
    ASSERT_TRUE(ids.ok() && ids_bos.ok());
    const auto want = p.at("token_ids").get<std::vector<int32_t>>();
    const auto want_bos = p.at("token_ids_add_bos").get<std::vector<int32_t>>();
    EXPECT_EQ(*ids, want) << p.value("name", "") << ": " << json(text).dump();
    EXPECT_EQ(*ids_bos, want_bos) << p.value("name", "") << " (add_special_tokens)";
    if (*ids == want && *ids_bos == want_bos) ++equal_prompts;
  }
  std::printf("[ smollm2 ] smollm2_llamacpp_goldens.json: %zu of %zu prompts equal\n", equal_prompts,
              prompts.size());
  // The ids that end generation, as llama.cpp lists them.
  auto want_eog = g.at("model").at("eog_ids").get<std::vector<int32_t>>();
  auto got_eog = c_.tok->eos_token_ids();
  std::sort(got_eog.begin(), got_eog.end());
  EXPECT_EQ(got_eog, want_eog);
}

TEST_F(GgufTokenizerSmolLM2, ConfigAndSpecialTokens) {
  const json& t = c_.tokenizer;
  EXPECT_EQ(t["model"]["type"], "BPE");
  EXPECT_EQ(t["model"]["merges"].size(), d_.merges.size());
  EXPECT_EQ(t["model"]["vocab"].size(), d_.tokens.size());
  EXPECT_EQ(t["added_tokens"].size(), 17u);  // the control tokens 0..16
  EXPECT_TRUE(t["post_processor"].is_null());  // add_bos_token false

  EXPECT_EQ(c_.config["bos_token"], "<|im_start|>");
  EXPECT_EQ(c_.config["eos_token"], "<|im_end|>");
  EXPECT_EQ(c_.config["unk_token"], "<|endoftext|>");
  EXPECT_EQ(c_.config["pad_token"], "<|im_end|>");
  EXPECT_EQ(c_.config["add_bos_token"], false);
  EXPECT_EQ(c_.config["add_eos_token"], false);
  EXPECT_EQ(c_.config["clean_up_tokenization_spaces"], false);
  EXPECT_EQ(c_.config["chat_template"], d_.chat_template);
  EXPECT_EQ(c_.generation["bos_token_id"], 1);
  // eos, then as llama.cpp <|endoftext|> and <reponame> (a fill-in-the-middle repo token).
  EXPECT_EQ(c_.generation["eos_token_id"], json::array({2, 0, 4}));

  EXPECT_EQ(c_.tok->bos_token_id(), 1);
  EXPECT_EQ(c_.tok->eos_token_ids(), (std::vector<int32_t>{2, 0, 4}));
  for (int32_t id = 0; id <= 16; ++id) EXPECT_TRUE(c_.tok->is_special(id)) << id;
  EXPECT_FALSE(c_.tok->is_special(17));

  // The chat template renders from the converted config as the file's template does.
  json messages = json::array({{{"role", "user"}, {"content", "What is the color of the sky?"}}});
  auto prompt = apply_chat_template(c_.config, messages, true);
  ASSERT_TRUE(prompt.ok()) << prompt.status().to_string();
  EXPECT_EQ(*prompt,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
            "<|im_start|>user\nWhat is the color of the sky?<|im_end|>\n<|im_start|>assistant\n");
  auto ids = c_.tok->encode(*prompt, true);
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ((*ids)[0], 1);
  auto back = c_.tok->decode(*ids, false);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, *prompt);
  auto skipped = c_.tok->decode(*ids, true);
  ASSERT_TRUE(skipped.ok());
  EXPECT_EQ(skipped->find("<|im_start|>"), std::string::npos);
}

TEST(GgufTokenizer, UserDefinedTokensAreMatchedButNotSpecial) {
  ASSERT_TRUE(smollm2_fixture().is_object());
  GgufTokenizerData d = data_from_metadata(smollm2_fixture().at("metadata"));
  ASSERT_EQ(d.tokens[3], "<repo_name>");
  d.token_types[3] = 4;  // user-defined
  d.add_bos = true;
  d.add_eos = true;
  test::TempDir dir;
  Converted c;
  convert_and_load(d, dir, c);
  ASSERT_TRUE(c.tok);
  EXPECT_EQ(c.config["added_tokens_decoder"]["3"]["special"], false);
  EXPECT_EQ(c.config["added_tokens_decoder"]["2"]["special"], true);
  auto ids = c.tok->encode("x<repo_name>y", false);
  ASSERT_TRUE(ids.ok());
  ASSERT_EQ(ids->size(), 3u);
  EXPECT_EQ((*ids)[1], 3);
  EXPECT_FALSE(c.tok->is_special(3));
  auto kept = c.tok->decode(*ids, true);
  ASSERT_TRUE(kept.ok());
  EXPECT_EQ(*kept, "x<repo_name>y");
  // add_bos / add_eos as a TemplateProcessing post-processor.
  auto with = c.tok->encode("x<repo_name>y", true);
  ASSERT_TRUE(with.ok());
  std::vector<int32_t> want = {1};
  want.insert(want.end(), ids->begin(), ids->end());
  want.push_back(2);
  EXPECT_EQ(*with, want);
}

// ---------------------------------------------------------------------------
// Hugging Face tokenizer.json -> GGUF-style metadata, as a converter writes it.

struct HfFixture {
  json tokenizer, config;
  std::vector<std::string> corpus;
  std::vector<json> golden;
};

HfFixture load_hf(const std::string& name) {
  HfFixture f;
  f.tokenizer = json::parse(read_gz(test::data_path("tokenizers/" + name + "/tokenizer.json.gz")));
  std::ifstream cfg(test::data_path("tokenizers/" + name + "/tokenizer_config.json"));
  f.config = json::parse(cfg);
  for (const std::string& l : lines_of(read_gz(test::data_path("tokenizers/corpus.jsonl.gz"))))
    f.corpus.push_back(json::parse(l).get<std::string>());
  for (const std::string& l : lines_of(read_gz(test::data_path("tokenizers/" + name + "/golden.jsonl.gz"))))
    f.golden.push_back(json::parse(l));
  return f;
}

std::string merge_string(const json& m) {
  return m.is_string() ? m.get<std::string>() : m[0].get<std::string>() + " " + m[1].get<std::string>();
}

// Tokens in id order (vocab and added tokens) and their GGUF types: added
// special tokens are control (the unknown token: unknown), other added tokens
// user-defined, <0xXX> byte tokens byte, the rest normal.
void tokens_from_hf(const json& t, GgufTokenizerData& d) {
  const json& vocab = t["model"]["vocab"];
  int64_t n = 0;
  for (auto it = vocab.begin(); it != vocab.end(); ++it) n = std::max<int64_t>(n, it.value().get<int64_t>() + 1);
  for (const auto& a : t["added_tokens"]) n = std::max<int64_t>(n, a["id"].get<int64_t>() + 1);
  d.tokens.assign(static_cast<size_t>(n), "");
  d.token_types.assign(static_cast<size_t>(n), 1);
  for (auto it = vocab.begin(); it != vocab.end(); ++it) d.tokens[it.value().get<int64_t>()] = it.key();
  std::string unk = t["model"].value("unk_token", json()).is_string() ? t["model"]["unk_token"].get<std::string>() : "";
  for (const auto& a : t["added_tokens"]) {
    int64_t id = a["id"].get<int64_t>();
    d.tokens[id] = a["content"].get<std::string>();
    d.token_types[id] = a["special"].get<bool>() ? (d.tokens[id] == unk ? 2 : 3) : 4;
  }
  for (size_t i = 0; i < d.tokens.size(); ++i) {
    const std::string& s = d.tokens[i];
    if (d.token_types[i] == 1 && s.size() == 6 && s.rfind("<0x", 0) == 0 && s[5] == '>') d.token_types[i] = 6;
  }
}

struct CorpusResult {
  size_t lines = 0, ids = 0, ids_special = 0, decoded = 0, decoded_skip = 0, skipped = 0;
};

// Encodes the corpus with `tok` and compares with the Hugging Face goldens;
// `skip(text)` leaves a line out (counted in `skipped`).
template <typename Skip>
CorpusResult compare_corpus(const std::string& name, const Tokenizer& tok, const HfFixture& f, Skip skip) {
  CorpusResult r;
  int shown = 0;
  EXPECT_EQ(f.golden.size(), f.corpus.size());
  for (size_t i = 0; i < f.corpus.size() && i < f.golden.size(); ++i) {
    const std::string& text = f.corpus[i];
    if (skip(text)) {
      ++r.skipped;
      continue;
    }
    ++r.lines;
    const json& g = f.golden[i];
    auto want = g["ids"].get<std::vector<int32_t>>();
    auto want_special = g["ids_special"].get<std::vector<int32_t>>();
    auto ids = tok.encode(text, false);
    auto ids_special = tok.encode(text, true);
    if (!ids.ok() || !ids_special.ok()) {
      ADD_FAILURE() << name << " line " << i << ": " << ids.status().to_string();
      continue;
    }
    if (*ids == want) {
      ++r.ids;
    } else if (shown++ < 5) {
      ADD_FAILURE() << name << " line " << i << " ids\n text: " << json(text).dump() << "\n  got: " << ids_str(*ids)
                    << "\n want: " << ids_str(want);
    }
    if (*ids_special == want_special) ++r.ids_special;
    auto dec = tok.decode(want, false);
    if (dec.ok() && *dec == g["decoded"].get<std::string>()) ++r.decoded;
    auto dec_skip = tok.decode(want_special, true);
    if (dec_skip.ok() && *dec_skip == g["decoded_skip"].get<std::string>()) ++r.decoded_skip;
  }
  std::printf("[ %s ] %zu corpus lines compared (%zu left out): equal ids %zu, ids_special %zu, decoded %zu, "
              "decoded_skip %zu\n",
              name.c_str(), r.lines, r.skipped, r.ids, r.ids_special, r.decoded, r.decoded_skip);
  return r;
}

// ---------------------------------------------------------------------------
// Llama-2 (llama / SentencePiece BPE).

// The metadata a GGUF converter writes for Llama-2. The SentencePiece scores are
// not in tokenizer.json; they are rebuilt from the merge ranks: a token's score
// is -(rank of the first merge that produces it), tokens no merge produces
// (single characters) score below every merge, special and byte tokens 0.
GgufTokenizerData llama2_data(const HfFixture& f) {
  GgufTokenizerData d;
  d.model = "llama";
  d.pre = "default";
  tokens_from_hf(f.tokenizer, d);
  const json& merges = f.tokenizer["model"]["merges"];
  std::unordered_map<std::string, size_t> first;
  for (size_t i = 0; i < merges.size(); ++i) {
    std::string m = merge_string(merges[i]);
    size_t sp = m.find(' ');
    first.emplace(m.substr(0, sp) + m.substr(sp + 1), i);
  }
  d.scores.assign(d.tokens.size(), 0.0f);
  for (size_t id = 0; id < d.tokens.size(); ++id) {
    if (d.token_types[id] != 1) continue;
    auto it = first.find(d.tokens[id]);
    d.scores[id] = -static_cast<float>(it != first.end() ? it->second : merges.size() + id);
  }
  d.bos_id = 1;
  d.eos_id = 2;
  d.unk_id = 0;
  d.add_bos = true;
  d.add_eos = false;
  d.add_space_prefix = true;
  return d;
}

TEST(GgufTokenizerLlama2, DerivedMergesEqualThePublishedOnes) {
  HfFixture f = load_hf("llama2");
  GgufTokenizerData d = llama2_data(f);
  auto j = gguf_to_hf_tokenizer_json(d);
  ASSERT_TRUE(j.ok()) << j.status().to_string();
  const json& want = f.tokenizer["model"]["merges"];
  const json& got = (*j)["model"]["merges"];
  ASSERT_EQ(got.size(), want.size());
  size_t differ = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    if (merge_string(got[i]) != merge_string(want[i]) && differ++ < 5)
      ADD_FAILURE() << "merge " << i << ": got " << merge_string(got[i]) << ", want " << merge_string(want[i]);
  }
  EXPECT_EQ(differ, 0u);
  EXPECT_EQ((*j)["model"]["byte_fallback"], true);
  EXPECT_EQ((*j)["model"]["unk_token"], "<unk>");
  EXPECT_EQ((*j)["normalizer"], f.tokenizer["normalizer"]);
  EXPECT_EQ((*j)["decoder"], f.tokenizer["decoder"]);
  EXPECT_EQ((*j)["added_tokens"], f.tokenizer["added_tokens"]);
}

TEST(GgufTokenizerLlama2, MatchesHuggingFaceGoldens) {
  HfFixture f = load_hf("llama2");
  test::TempDir dir;
  Converted c;
  convert_and_load(llama2_data(f), dir, c);
  ASSERT_TRUE(c.tok);
  CorpusResult r = compare_corpus("llama2 via gguf", *c.tok, f, [](const std::string&) { return false; });
  EXPECT_EQ(r.lines, 616u);
  EXPECT_EQ(r.ids, r.lines);
  EXPECT_EQ(r.ids_special, r.lines);
  EXPECT_EQ(r.decoded, r.lines);
  EXPECT_EQ(r.decoded_skip, r.lines);
  EXPECT_EQ(c.config["bos_token"], "<s>");
  EXPECT_EQ(c.config["eos_token"], "</s>");
  EXPECT_EQ(c.config["unk_token"], "<unk>");
  EXPECT_EQ(c.config["add_bos_token"], true);
  EXPECT_EQ(c.generation["eos_token_id"], json::array({2}));
}

TEST(GgufTokenizerLlama2, SpmDefaultsAndNoSpacePrefix) {
  // A tiny SentencePiece vocabulary: merges follow the scores, not the ids.
  GgufTokenizerData d;
  d.model = "llama";
  d.tokens = {"<unk>", "<s>", "</s>", "a", "b", "c", "\xE2\x96\x81", "ab", "bc", "abc", "\xE2\x96\x81" "a"};
  d.token_types = {2, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1};
  d.scores = {0, 0, 0, -10, -10, -10, -10, -3, -1, -2, -5};
  d.add_space_prefix = false;
  auto j = gguf_to_hf_tokenizer_json(d);
  ASSERT_TRUE(j.ok()) << j.status().to_string();
  // bc (-1), then abc = a+bc and ab+c (-2, by left id), ab (-3), ▁a (-5).
  json want = json::array({json::array({"b", "c"}), json::array({"a", "bc"}), json::array({"ab", "c"}),
                           json::array({"a", "b"}), json::array({"\xE2\x96\x81", "a"})});
  EXPECT_EQ((*j)["model"]["merges"], want);
  EXPECT_EQ((*j)["normalizer"]["type"], "Replace");  // no Prepend without add_space_prefix
  EXPECT_EQ((*j)["decoder"]["decoders"].size(), 3u);  // no Strip
  EXPECT_EQ((*j)["model"]["byte_fallback"], false);
  // llama.cpp's defaults for a llama vocab: bos 1, eos 2, unk 0, add_bos.
  EXPECT_EQ((*j)["post_processor"]["single"][0]["SpecialToken"]["id"], "<s>");
  auto tok = Tokenizer::from_json(j->dump());
  ASSERT_TRUE(tok.ok()) << tok.status().to_string();
  auto ids = (*tok)->encode("abc a", true);
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(*ids, (std::vector<int32_t>{1, 9, 10}));
  auto text = (*tok)->decode(*ids, true);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, "abc a");
  json cfg = gguf_to_hf_tokenizer_config(d);
  EXPECT_EQ(cfg["bos_token"], "<s>");
  EXPECT_EQ(cfg["eos_token"], "</s>");
  EXPECT_EQ(cfg["pad_token"], nullptr);
  EXPECT_FALSE(cfg.contains("chat_template"));
}

// ---------------------------------------------------------------------------
// Byte-level files of other pre-tokenizers, rebuilt from Hugging Face tokenizers.

GgufTokenizerData byte_level_data(const HfFixture& f, const std::string& pre) {
  GgufTokenizerData d;
  d.model = "gpt2";
  d.pre = pre;
  tokens_from_hf(f.tokenizer, d);
  for (const auto& m : f.tokenizer["model"]["merges"]) d.merges.push_back(merge_string(m));
  auto id_of = [&](const char* key) -> std::optional<int64_t> {
    const json& v = f.config.value(key, json());
    if (!v.is_string()) return std::nullopt;
    for (size_t i = 0; i < d.tokens.size(); ++i)
      if (d.tokens[i] == v.get<std::string>()) return static_cast<int64_t>(i);
    return std::nullopt;
  };
  d.bos_id = id_of("bos_token");
  d.eos_id = id_of("eos_token");
  d.pad_id = id_of("pad_token");
  d.add_bos = false;  // these tokenizer.json files add nothing (ByteLevel post-processor)
  return d;
}

TEST(GgufTokenizerLlama3, MatchesHuggingFaceGoldens) {
  HfFixture f = load_hf("llama3");
  test::TempDir dir;
  Converted c;
  convert_and_load(byte_level_data(f, "llama-bpe"), dir, c);
  ASSERT_TRUE(c.tok);
  EXPECT_EQ(c.tokenizer["model"]["ignore_merges"], true);
  CorpusResult r = compare_corpus("llama3 via gguf", *c.tok, f, [](const std::string&) { return false; });
  EXPECT_EQ(r.ids, r.lines);
  EXPECT_EQ(r.ids_special, r.lines);
  EXPECT_EQ(r.decoded, r.lines);
  EXPECT_EQ(r.decoded_skip, r.lines);
  // llama.cpp's end-of-generation ids for this vocabulary: <|end_of_text|>, <|eot_id|>.
  auto eog = c.tok->eos_token_ids();
  std::sort(eog.begin(), eog.end());
  EXPECT_EQ(eog, (std::vector<int32_t>{128001, 128009}));
  // Without add_bos_token in the file, llama.cpp adds BOS for llama-bpe.
  GgufTokenizerData d = byte_level_data(f, "llama-bpe");
  d.add_bos.reset();
  EXPECT_EQ(gguf_to_hf_tokenizer_config(d)["add_bos_token"], true);
}

bool is_nfc(const std::string& s) {
  utf8proc_uint8_t* out = nullptr;
  utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()),
                                    static_cast<utf8proc_ssize_t>(s.size()), &out,
                                    static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
  bool same = n >= 0 && std::string(reinterpret_cast<char*>(out), static_cast<size_t>(n)) == s;
  std::free(out);
  return same;
}

TEST(GgufTokenizerQwen3, MatchesHuggingFaceGoldensWhereLlamaCppAgrees) {
  // Two llama.cpp behaviours differ from Qwen's tokenizer.json, and the
  // converted tokenizer follows llama.cpp (checked against llama-cpp-python on
  // this corpus): no NFC normalization, and "</s>" (a normal token in Qwen's
  // vocabulary) is taken as an end-of-generation control token, so it is
  // matched in the text. Lines where either matters are left out.
  HfFixture f = load_hf("qwen3");
  test::TempDir dir;
  Converted c;
  convert_and_load(byte_level_data(f, "qwen2"), dir, c);
  ASSERT_TRUE(c.tok);
  auto differs = [](const std::string& s) { return !is_nfc(s) || s.find("</s>") != std::string::npos; };
  CorpusResult r = compare_corpus("qwen3 via gguf", *c.tok, f, differs);
  EXPECT_GT(r.lines, 400u);  // 426 of the 616 lines
  EXPECT_EQ(r.ids, r.lines);
  EXPECT_EQ(r.ids_special, r.lines);
  EXPECT_EQ(r.decoded, r.lines);
  EXPECT_EQ(r.decoded_skip, r.lines);
  auto s = c.tok->token_to_id("</s>");
  ASSERT_TRUE(s.has_value());
  EXPECT_TRUE(c.tok->is_special(*s));
  // llama.cpp's end-of-generation ids for this vocabulary.
  auto eog = c.tok->eos_token_ids();
  std::sort(eog.begin(), eog.end());
  EXPECT_EQ(eog, (std::vector<int32_t>{128247, 151643, 151645, 151662, 151663, 151664}));
}

// ---------------------------------------------------------------------------
// Every pre-tokenizer row loads, and errors.

GgufTokenizerData tiny_gpt2() {
  GgufTokenizerData d;
  d.model = "gpt2";
  d.pre = "gpt-2";
  d.tokens = {"a", "b", "ab", "\xC4\xA0", "<|endoftext|>"};  // \xC4\xA0 = "Ġ" (space)
  d.token_types = {1, 1, 1, 1, 3};
  d.merges = {"a b"};
  d.eos_id = 4;
  return d;
}

std::string error_of(const GgufTokenizerData& d) {
  auto j = gguf_to_hf_tokenizer_json(d);
  return j.ok() ? std::string("(no error)") : j.status().to_string();
}

TEST(GgufTokenizer, EveryPreTokenizerLoads) {
  for (const std::string& pre : gguf_supported_pre_tokenizers()) {
    GgufTokenizerData d = tiny_gpt2();
    d.pre = pre;
    d.bos_id = 4;
    auto j = gguf_to_hf_tokenizer_json(d);
    ASSERT_TRUE(j.ok()) << pre << ": " << j.status().to_string();
    auto tok = Tokenizer::from_json(j->dump());
    ASSERT_TRUE(tok.ok()) << pre << ": " << tok.status().to_string();
    auto ids = (*tok)->encode("ab a<|endoftext|>b 123 Ab's ab\n", false);
    ASSERT_TRUE(ids.ok()) << pre << ": " << ids.status().to_string();
    EXPECT_EQ((*ids)[0], 2) << pre;
  }
  GgufTokenizerData d = tiny_gpt2();
  d.pre.clear();  // missing: llama.cpp's "default"
  auto j = gguf_to_hf_tokenizer_json(d);
  ASSERT_TRUE(j.ok());
  EXPECT_EQ((*j)["pre_tokenizer"]["pretokenizers"].size(), 5u);
}

TEST(GgufTokenizer, Errors) {
  auto expect_error = [](const GgufTokenizerData& d, const std::vector<std::string>& parts) {
    std::string msg = error_of(d);
    for (const std::string& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
  };
  GgufTokenizerData d = tiny_gpt2();
  ASSERT_EQ(error_of(d), "(no error)");

  d = tiny_gpt2();
  d.model = "bert";
  expect_error(d, {"tokenizer.ggml.model", "\"bert\"", "gpt2", "llama"});

  d = tiny_gpt2();
  d.pre = "my-new-model";
  expect_error(d, {"tokenizer.ggml.pre", "\"my-new-model\"", "smollm", "llama-bpe", "qwen2"});

  d = tiny_gpt2();
  d.token_types.pop_back();
  expect_error(d, {"tokenizer.ggml.token_type", "4", "5"});

  d = tiny_gpt2();
  d.scores = {0, 0, 0};
  expect_error(d, {"tokenizer.ggml.scores", "3", "5"});

  d = tiny_gpt2();
  d.merges = {"a b", "a c"};
  expect_error(d, {"tokenizer.ggml.merges[1]", "\"c\" is not a token"});

  d = tiny_gpt2();
  d.merges = {"b a"};
  expect_error(d, {"tokenizer.ggml.merges[0]", "\"ba\" is not a token"});

  d = tiny_gpt2();
  d.merges = {"ab"};
  expect_error(d, {"tokenizer.ggml.merges[0]", "separated by a space"});

  d = tiny_gpt2();
  d.merges.clear();
  expect_error(d, {"tokenizer.ggml.merges", "missing"});

  d = tiny_gpt2();
  d.eos_id = 5;
  expect_error(d, {"tokenizer.ggml.eos_token_id = 5", "outside the vocabulary [0, 5)"});

  d = tiny_gpt2();
  d.bos_id = -1;
  expect_error(d, {"tokenizer.ggml.bos_token_id = -1"});

  d = tiny_gpt2();
  d.pad_id = 99;
  expect_error(d, {"tokenizer.ggml.padding_token_id = 99"});

  d = tiny_gpt2();
  d.tokens[1] = "a";
  expect_error(d, {"token 1 \"a\" repeats token 0"});

  d = tiny_gpt2();
  d.add_bos = true;  // no bos id
  expect_error(d, {"add_bos_token", "bos_token_id"});

  d = tiny_gpt2();
  d.tokens.clear();
  d.token_types.clear();
  expect_error(d, {"tokenizer.ggml.tokens", "empty"});

  // The configs cannot fail: bad ids are left out.
  d = tiny_gpt2();
  d.eos_id = 42;
  json cfg = gguf_to_hf_tokenizer_config(d);
  EXPECT_EQ(cfg["eos_token"], nullptr);
  json gen = gguf_to_hf_generation_config(d);
  EXPECT_EQ(gen["eos_token_id"], json::array({4}));  // <|endoftext|> still ends generation
}

}  // namespace
}  // namespace kiln
