// Conformance with Hugging Face `tokenizers` 0.23.2: the golden files hold its
// encode / decode results for every line of the corpus, for four tokenizers.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "test_util.h"
#include "tokenizer/golden_files.h"
#include "tokenizer/tokenizer.h"

namespace kiln {
namespace {

using nlohmann::json;

std::vector<std::string> read_gz_lines(const std::string& path) { return test::lines_of(test::read_gz(path)); }
using test::ids_str;

class Conformance : public ::testing::TestWithParam<std::string> {};

TEST_P(Conformance, MatchesHuggingFace) {
  const std::string name = GetParam();
  auto tok = Tokenizer::from_dir(test::data_path("tokenizers/" + name));
  ASSERT_TRUE(tok.ok()) << tok.status().to_string();
  auto corpus = read_gz_lines(test::data_path("tokenizers/corpus.jsonl.gz"));
  auto golden = read_gz_lines(test::data_path("tokenizers/" + name + "/golden.jsonl.gz"));
  ASSERT_EQ(corpus.size(), 616u);
  ASSERT_EQ(golden.size(), corpus.size());
  int bad_ids = 0, bad_ids_special = 0, bad_decoded = 0, bad_decoded_skip = 0, shown = 0;
  for (size_t i = 0; i < corpus.size(); ++i) {
    std::string text = json::parse(corpus[i]).get<std::string>();
    json g = json::parse(golden[i]);
    auto want_ids = g["ids"].get<std::vector<int32_t>>();
    auto want_special = g["ids_special"].get<std::vector<int32_t>>();
    auto ids = (*tok)->encode(text, false);
    auto ids_special = (*tok)->encode(text, true);
    ASSERT_TRUE(ids.ok()) << ids.status().to_string();
    ASSERT_TRUE(ids_special.ok()) << ids_special.status().to_string();
    if (*ids != want_ids) {
      ++bad_ids;
      if (shown++ < 5) {
        ADD_FAILURE() << name << " line " << i << " ids\n text: " << json(text).dump()
                      << "\n  got: " << ids_str(*ids) << "\n want: " << ids_str(want_ids);
      }
    }
    if (*ids_special != want_special) ++bad_ids_special;
    auto decoded = (*tok)->decode(want_ids, false);
    ASSERT_TRUE(decoded.ok()) << decoded.status().to_string();
    if (*decoded != g["decoded"].get<std::string>()) {
      ++bad_decoded;
      if (shown++ < 5) {
        ADD_FAILURE() << name << " line " << i << " decoded\n  got: " << json(*decoded).dump()
                      << "\n want: " << g["decoded"].dump();
      }
    }
    auto decoded_skip = (*tok)->decode(want_special, true);
    ASSERT_TRUE(decoded_skip.ok()) << decoded_skip.status().to_string();
    if (*decoded_skip != g["decoded_skip"].get<std::string>()) {
      ++bad_decoded_skip;
      if (shown++ < 5) {
        ADD_FAILURE() << name << " line " << i << " decoded_skip\n  got: " << json(*decoded_skip).dump()
                      << "\n want: " << g["decoded_skip"].dump();
      }
    }
  }
  std::printf("[ %s ] mismatches of %zu lines: ids %d, ids_special %d, decoded %d, decoded_skip %d\n",
              name.c_str(), corpus.size(), bad_ids, bad_ids_special, bad_decoded, bad_decoded_skip);
  EXPECT_EQ(bad_ids, 0);
  EXPECT_EQ(bad_ids_special, 0);
  EXPECT_EQ(bad_decoded, 0);
  EXPECT_EQ(bad_decoded_skip, 0);
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, Conformance, ::testing::Values("llama2", "llama3", "phi3", "qwen3"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace kiln
