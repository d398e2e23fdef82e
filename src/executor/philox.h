// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011), the counter-based
// generator of Random123 and cuRAND. A draw is a pure function of (key, counter), so a request's random stream
// depends only on its seed and step, never on batching, and a CUDA sampler can reproduce it bit for bit.
// Plain 32/64-bit integer arithmetic only (constexpr, no <random>) so the same code ports to a kernel.
#pragma once

#include <array>
#include <cstdint>

namespace kiln {

using PhiloxCounter = std::array<uint32_t, 4>;
using PhiloxKey = std::array<uint32_t, 2>;

namespace philox_detail {

inline constexpr uint32_t kMul0 = 0xD2511F53u;  // round multipliers
inline constexpr uint32_t kMul1 = 0xCD9E8D57u;
inline constexpr uint32_t kWeyl0 = 0x9E3779B9u;  // key schedule increments (golden ratio, sqrt(3) - 1)
inline constexpr uint32_t kWeyl1 = 0xBB67AE85u;

constexpr PhiloxCounter round(const PhiloxCounter& c, const PhiloxKey& k) {
  const uint64_t p0 = static_cast<uint64_t>(kMul0) * c[0];
  const uint64_t p1 = static_cast<uint64_t>(kMul1) * c[2];
  const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
  const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
  return {hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0};
}

}  // namespace philox_detail

// The 4 output words of Philox4x32 with 10 rounds; the key is bumped between rounds.
constexpr PhiloxCounter philox4x32_10(PhiloxCounter counter, PhiloxKey key) {
  for (int r = 0; r < 10; ++r) {
    if (r > 0) {
      key[0] += philox_detail::kWeyl0;
      key[1] += philox_detail::kWeyl1;
    }
    counter = philox_detail::round(counter, key);
  }
  return counter;
}

// A uniform float in [0, 1): counter = (step lo, step hi, 0, 0), key = (seed lo, seed hi); the top 24 bits of
// the first output word, scaled by 2^-24 (exact in float, never 1.0).
constexpr float philox_uniform(uint64_t seed, uint64_t step) {
  const PhiloxCounter out = philox4x32_10({static_cast<uint32_t>(step), static_cast<uint32_t>(step >> 32), 0u, 0u},
                                          {static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)});
  return static_cast<float>(out[0] >> 8) * (1.0f / 16777216.0f);
}

}  // namespace kiln
