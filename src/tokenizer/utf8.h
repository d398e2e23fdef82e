// UTF-8 and Unicode helpers for the tokenizer: decoding, validation, lossy
// repair, the character classes the Hugging Face components use, case mapping
// and the four normalization forms.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace kiln::tok {

// Byte length of the UTF-8 sequence that starts with `lead` (1 for bytes that
// are not a valid lead, so loops always advance).
inline size_t utf8_len(unsigned char lead) {
  if (lead < 0x80) return 1;
  if (lead >= 0xF0) return 4;
  if (lead >= 0xE0) return 3;
  if (lead >= 0xC0) return 2;
  return 1;
}

// Decodes the code point at s[i] (s must be valid UTF-8) and advances i.
inline uint32_t utf8_next(std::string_view s, size_t& i) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data()) + i;
  unsigned char b = p[0];
  if (b < 0x80) {
    i += 1;
    return b;
  }
  if (b < 0xE0) {
    i += 2;
    return (static_cast<uint32_t>(b & 0x1F) << 6) | (p[1] & 0x3F);
  }
  if (b < 0xF0) {
    i += 3;
    return (static_cast<uint32_t>(b & 0x0F) << 12) | (static_cast<uint32_t>(p[1] & 0x3F) << 6) |
           (p[2] & 0x3F);
  }
  i += 4;
  return (static_cast<uint32_t>(b & 0x07) << 18) | (static_cast<uint32_t>(p[1] & 0x3F) << 12) |
         (static_cast<uint32_t>(p[2] & 0x3F) << 6) | (p[3] & 0x3F);
}

// Decodes the last code point of non-empty valid UTF-8 `s`.
uint32_t utf8_last(std::string_view s);

void utf8_append(std::string& out, uint32_t cp);

// Byte offset of the first byte that does not start a well-formed UTF-8
// sequence, or npos when `s` is valid UTF-8.
size_t utf8_first_invalid(std::string_view s);

// Rust's String::from_utf8_lossy: every maximal ill-formed subpart becomes U+FFFD.
std::string utf8_lossy(std::string_view bytes);
void utf8_lossy_append(std::string& out, std::string_view bytes);

// Unicode White_Space (Rust char::is_whitespace, regex \s).
bool is_white_space(uint32_t cp);
// Rust char::is_numeric: general categories Nd, Nl, No.
bool is_numeric(uint32_t cp);
// ASCII punctuation or a general category P* as of Unicode 8.0 (Hugging Face's Punctuation).
bool is_punctuation(uint32_t cp);
// Rust regex's Unicode \w: Alphabetic, marks, Nd, Pc and Join_Control.
bool is_rust_word(uint32_t cp);

// Appends Rust's char::to_lowercase(cp).
void append_lowercase(std::string& out, uint32_t cp);

enum class NormForm { kNFC, kNFD, kNFKC, kNFKD };
// Applies a Unicode normalization form to valid UTF-8.
std::string normalize_form(std::string_view s, NormForm form);

}  // namespace kiln::tok
