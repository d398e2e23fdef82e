// Philox4x32-10 against Random123's published known-answer vectors (tests/kat_vectors, "philox4x32 10" lines:
// counter[4] key[2] -> output[4]), and philox_uniform's mapping of them.
#include "executor/philox.h"

#include <gtest/gtest.h>

#include <set>

namespace kiln {
namespace {

struct Kat {
  PhiloxCounter counter;
  PhiloxKey key;
  PhiloxCounter want;
};

constexpr Kat kKats[] = {
    {{0x00000000, 0x00000000, 0x00000000, 0x00000000},
     {0x00000000, 0x00000000},
     {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
    {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
     {0xffffffff, 0xffffffff},
     {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
    {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
     {0xa4093822, 0x299f31d0},
     {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
};

// Plain integer arithmetic: the generator runs at compile time too.
static_assert(philox4x32_10(kKats[0].counter, kKats[0].key) == kKats[0].want);
static_assert(philox4x32_10(kKats[2].counter, kKats[2].key) == kKats[2].want);

TEST(Philox, KnownAnswers) {
  for (const Kat& k : kKats) EXPECT_EQ(philox4x32_10(k.counter, k.key), k.want);
}

TEST(Philox, UniformIsTopBitsOfFirstWord) {
  // counter (step lo, step hi, 0, 0) = 0 and key (seed lo, seed hi) = 0: the first vector's first word.
  EXPECT_EQ(philox_uniform(0, 0), static_cast<float>(0x6627e8d5u >> 8) / 16777216.0f);
  // seed 0xffffffffffffffff, step 0xffffffffffffffff sets counter words 0-1 and both key words to ones.
  const PhiloxCounter out = philox4x32_10({0xffffffff, 0xffffffff, 0, 0}, {0xffffffff, 0xffffffff});
  EXPECT_EQ(philox_uniform(~0ull, ~0ull), static_cast<float>(out[0] >> 8) / 16777216.0f);
  // The seed's and the step's high halves both matter.
  EXPECT_NE(philox_uniform(1ull << 32, 0), philox_uniform(0, 0));
  EXPECT_NE(philox_uniform(0, 1ull << 32), philox_uniform(0, 0));
}

TEST(Philox, UniformRangeAndSpread) {
  std::set<float> seen;
  double sum = 0;
  const int n = 100000;
  for (int i = 0; i < n; ++i) {
    const float u = philox_uniform(12345, i);
    ASSERT_GE(u, 0.0f);
    ASSERT_LT(u, 1.0f);
    sum += u;
    seen.insert(u);
  }
  EXPECT_NEAR(sum / n, 0.5, 0.005);
  EXPECT_GT(seen.size(), static_cast<size_t>(n * 0.99));  // 2^24 values: few collisions
}

}  // namespace
}  // namespace kiln
