// IncrementalDetokenizer over the corpus for four tokenizers, and
// StopStringMatcher unit tests.
#include "tokenizer/detokenizer.h"

#include <gtest/gtest.h>
#include <zlib.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace kiln {
namespace {

std::vector<std::string> read_corpus(const std::string& path) {
  std::vector<std::string> lines;
  gzFile f = gzopen(path.c_str(), "rb");
  if (!f) return lines;
  std::string line;
  char buf[1 << 16];
  while (gzgets(f, buf, sizeof(buf)) != nullptr) {
    line.append(buf);
    if (!line.empty() && line.back() == '\n') {
      line.pop_back();
      if (!line.empty()) lines.push_back(nlohmann::json::parse(line).get<std::string>());
      line.clear();
    }
  }
  if (!line.empty()) lines.push_back(nlohmann::json::parse(line).get<std::string>());
  gzclose(f);
  return lines;
}

bool valid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    auto c = static_cast<unsigned char>(s[i]);
    size_t n;
    uint32_t cp;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      n = 1, cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      n = 2, cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      n = 3, cp = c & 0x07;
    } else {
      return false;
    }
    if (i + n >= s.size()) return false;
    for (size_t k = 1; k <= n; ++k) {
      auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || cp > 0x10FFFF ||
        (cp >= 0xD800 && cp <= 0xDFFF))
      return false;
    i += n + 1;
  }
  return true;
}

TEST(DetokUtf8Validator, Basics) {
  EXPECT_TRUE(valid_utf8(""));
  EXPECT_TRUE(valid_utf8("abc \xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80"));
  EXPECT_FALSE(valid_utf8("\xC3"));
  EXPECT_FALSE(valid_utf8("a\xF0\x9F\x98"));
  EXPECT_FALSE(valid_utf8("\x80"));
  EXPECT_FALSE(valid_utf8("\xC0\x80"));
  EXPECT_FALSE(valid_utf8("\xED\xA0\x80"));
}

class DetokCorpus : public ::testing::TestWithParam<std::string> {};

TEST_P(DetokCorpus, DeltasConcatenateToFullDecode) {
  auto tok_r = Tokenizer::from_file(test::data_path("tokenizers/" + GetParam() + "/tokenizer.json.gz"));
  ASSERT_TRUE(tok_r.ok()) << tok_r.status().message();
  std::shared_ptr<const Tokenizer> tok = *tok_r;
  auto corpus = read_corpus(test::data_path("tokenizers/corpus.jsonl.gz"));
  ASSERT_EQ(corpus.size(), 616u);

  auto prompt_r = tok->encode("Question: what is this?\nAnswer:", /*add_special_tokens=*/true);
  ASSERT_TRUE(prompt_r.ok());
  const std::vector<int32_t> prompt = *prompt_r;

  int bad = 0;
  for (size_t li = 0; li < corpus.size(); ++li) {
    auto ids_r = tok->encode(corpus[li], /*add_special_tokens=*/false);
    ASSERT_TRUE(ids_r.ok()) << "line " << li;
    const std::vector<int32_t>& ids = *ids_r;
    for (bool skip : {false, true}) {
      for (bool with_prompt : {false, true}) {
        std::span<const int32_t> p = with_prompt ? std::span<const int32_t>(prompt) : std::span<const int32_t>();
        std::string expected;
        if (with_prompt) {
          // The text the generated ids add after the prompt context.
          size_t n = std::min(prompt.size(), IncrementalDetokenizer::kPromptContext);
          std::vector<int32_t> ctx(prompt.end() - static_cast<std::ptrdiff_t>(n), prompt.end());
          std::vector<int32_t> both = ctx;
          both.insert(both.end(), ids.begin(), ids.end());
          std::string a = *tok->decode(ctx, skip), b = *tok->decode(both, skip);
          ASSERT_EQ(b.compare(0, a.size(), a), 0) << GetParam() << " line " << li;
          expected = b.substr(a.size());
        } else {
          expected = *tok->decode(ids, skip);
        }
        IncrementalDetokenizer det(tok, p, skip);
        std::string got;
        bool deltas_ok = true;
        for (int32_t id : ids) {
          auto d = det.add(id);
          ASSERT_TRUE(d.ok()) << d.status().message();
          if (!valid_utf8(*d)) deltas_ok = false;
          got += *d;
        }
        auto f = det.finish();
        ASSERT_TRUE(f.ok());
        got += *f;
        if (got != expected || !deltas_ok) {
          if (++bad <= 5)
            ADD_FAILURE() << GetParam() << " line " << li << " skip=" << skip << " prompt=" << with_prompt
                          << " deltas_valid=" << deltas_ok << "\n got:      " << nlohmann::json(got).dump()
                          << "\n expected: " << nlohmann::json(expected).dump();
        }
      }
    }
  }
  EXPECT_EQ(bad, 0);
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, DetokCorpus, ::testing::Values("llama2", "llama3", "phi3", "qwen3"));

TEST(DetokPrompt, KeepsLeadingSpaceOfFirstToken) {
  auto tok_r = Tokenizer::from_file(test::data_path("tokenizers/llama2/tokenizer.json.gz"));
  ASSERT_TRUE(tok_r.ok());
  std::shared_ptr<const Tokenizer> tok = *tok_r;
  auto all = *tok->encode("Hello world", false);
  ASSERT_GE(all.size(), 2u);
  std::vector<int32_t> prompt(all.begin(), all.end() - 1);
  IncrementalDetokenizer det(tok, prompt, true);
  std::string out = *det.add(all.back());
  out += *det.finish();
  EXPECT_EQ(out, " world");
}

std::string feed(StopStringMatcher& m, const std::vector<std::string>& deltas, bool* stopped,
                 std::string* matched) {
  std::string out;
  *stopped = false;
  for (const auto& d : deltas) {
    auto o = m.push(d);
    out += o.text;
    if (o.stopped) {
      *stopped = true;
      *matched = o.matched;
      return out;
    }
  }
  out += m.flush();
  return out;
}

TEST(StopStringMatcher, SplitAcrossDeltas) {
  StopStringMatcher m({"</end>"});
  auto o1 = m.push("hello </e");
  EXPECT_EQ(o1.text, "hello ");
  EXPECT_FALSE(o1.stopped);
  auto o2 = m.push("nd");
  EXPECT_EQ(o2.text, "");
  auto o3 = m.push(">tail");
  EXPECT_TRUE(o3.stopped);
  EXPECT_EQ(o3.text, "");
  EXPECT_EQ(o3.matched, "</end>");
  EXPECT_EQ(m.push("more").text, "");
  EXPECT_EQ(m.flush(), "");
}

TEST(StopStringMatcher, PartialMatchThatFails) {
  StopStringMatcher m({"STOP"});
  auto o1 = m.push("abc ST");
  EXPECT_EQ(o1.text, "abc ");
  auto o2 = m.push("OX");
  EXPECT_FALSE(o2.stopped);
  EXPECT_EQ(o2.text, "STOX");
  auto o3 = m.push("S");
  EXPECT_EQ(o3.text, "");
  EXPECT_EQ(m.flush(), "S");
}

TEST(StopStringMatcher, PartialOverlapThenMatch) {
  StopStringMatcher m({"aab"});
  bool stopped;
  std::string matched;
  EXPECT_EQ(feed(m, {"xa", "a", "a", "b", "z"}, &stopped, &matched), "xa");
  EXPECT_TRUE(stopped);
  EXPECT_EQ(matched, "aab");
}

TEST(StopStringMatcher, MultipleStops) {
  StopStringMatcher m({"\n\n", "Human:", "###"});
  bool stopped;
  std::string matched;
  EXPECT_EQ(feed(m, {"one ", "#", "# two H", "uman", ": x ###"}, &stopped, &matched), "one ## two ");
  EXPECT_TRUE(stopped);
  EXPECT_EQ(matched, "Human:");
}

TEST(StopStringMatcher, EarliestStopWins) {
  StopStringMatcher m({"bc", "abcd"});
  auto o = m.push("xabcd");
  EXPECT_TRUE(o.stopped);
  EXPECT_EQ(o.text, "x");
  EXPECT_EQ(o.matched, "abcd");
}

TEST(StopStringMatcher, StopAtVeryStart) {
  StopStringMatcher m({"<|im_end|>"});
  auto o1 = m.push("<|im");
  EXPECT_EQ(o1.text, "");
  auto o2 = m.push("_end|>rest");
  EXPECT_TRUE(o2.stopped);
  EXPECT_EQ(o2.text, "");
  EXPECT_EQ(o2.matched, "<|im_end|>");
}

TEST(StopStringMatcher, NoStopsPassesThrough) {
  StopStringMatcher m({});
  EXPECT_EQ(m.push("abc").text, "abc");
  EXPECT_EQ(m.flush(), "");
  StopStringMatcher m2({"", "zz"});
  EXPECT_EQ(m2.push("abc").text, "abc");
}

TEST(StopStringMatcher, Utf8HoldBack) {
  StopStringMatcher m({"\xC3\xA9t\xC3\xA9"});  // "été"
  auto o1 = m.push("caf\xC3\xA9");
  EXPECT_EQ(o1.text, "caf");
  auto o2 = m.push("!");
  EXPECT_EQ(o2.text, "\xC3\xA9!");
}

}  // namespace
}  // namespace kiln
