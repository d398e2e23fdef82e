#include "tokenizer/utf8.h"

#include <utf8proc.h>

#include <cstdlib>
#include <cstring>
#include <vector>

#include "tokenizer/unicode_tables.h"

namespace kiln::tok {

uint32_t utf8_last(std::string_view s) {
  size_t i = s.size() - 1;
  while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
  return utf8_next(s, i);
}

void utf8_append(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    char b[2] = {static_cast<char>(0xC0 | (cp >> 6)), static_cast<char>(0x80 | (cp & 0x3F))};
    out.append(b, 2);
  } else if (cp < 0x10000) {
    char b[3] = {static_cast<char>(0xE0 | (cp >> 12)), static_cast<char>(0x80 | ((cp >> 6) & 0x3F)),
                 static_cast<char>(0x80 | (cp & 0x3F))};
    out.append(b, 3);
  } else {
    char b[4] = {static_cast<char>(0xF0 | (cp >> 18)), static_cast<char>(0x80 | ((cp >> 12) & 0x3F)),
                 static_cast<char>(0x80 | ((cp >> 6) & 0x3F)), static_cast<char>(0x80 | (cp & 0x3F))};
    out.append(b, 4);
  }
}

namespace {

// How many bytes of a well-formed sequence start at p[0..n), or, when the
// sequence is ill-formed, minus the length of its maximal subpart (>= 1).
inline int utf8_check(const unsigned char* p, size_t n) {
  unsigned char b = p[0];
  if (b < 0x80) return 1;
  auto cont = [](unsigned char c) { return (c & 0xC0) == 0x80; };
  if (b >= 0xC2 && b <= 0xDF) {
    if (n >= 2 && cont(p[1])) return 2;
    return -1;
  }
  if (b >= 0xE0 && b <= 0xEF) {
    unsigned char lo = 0x80, hi = 0xBF;
    if (b == 0xE0) lo = 0xA0;
    if (b == 0xED) hi = 0x9F;
    if (n < 2 || p[1] < lo || p[1] > hi) return -1;
    if (n < 3 || !cont(p[2])) return -2;
    return 3;
  }
  if (b >= 0xF0 && b <= 0xF4) {
    unsigned char lo = 0x80, hi = 0xBF;
    if (b == 0xF0) lo = 0x90;
    if (b == 0xF4) hi = 0x8F;
    if (n < 2 || p[1] < lo || p[1] > hi) return -1;
    if (n < 3 || !cont(p[2])) return -2;
    if (n < 4 || !cont(p[3])) return -3;
    return 4;
  }
  return -1;
}

}  // namespace

size_t utf8_first_invalid(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  size_t n = s.size(), i = 0;
  while (i < n) {
    // ASCII fast path, 8 bytes at a time.
    while (i + 8 <= n) {
      uint64_t w;
      std::memcpy(&w, p + i, 8);
      if (w & 0x8080808080808080ull) break;
      i += 8;
    }
    if (i >= n) break;
    if (p[i] < 0x80) {
      ++i;
      continue;
    }
    int r = utf8_check(p + i, n - i);
    if (r < 0) return i;
    i += static_cast<size_t>(r);
  }
  return std::string_view::npos;
}

void utf8_lossy_append(std::string& out, std::string_view bytes) {
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  size_t n = bytes.size(), i = 0;
  while (i < n) {
    size_t start = i;
    while (i < n && p[i] < 0x80) ++i;
    if (i > start) out.append(bytes.data() + start, i - start);
    if (i >= n) break;
    int r = utf8_check(p + i, n - i);
    if (r > 0) {
      out.append(bytes.data() + i, static_cast<size_t>(r));
      i += static_cast<size_t>(r);
    } else {
      out.append("\xEF\xBF\xBD");
      i += static_cast<size_t>(-r);
    }
  }
}

std::string utf8_lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  utf8_lossy_append(out, bytes);
  return out;
}

namespace {

// utf8proc's general category, completed with the characters Unicode 16.0
// assigned after utf8proc's tables.
utf8proc_category_t category(uint32_t cp) {
  auto c = utf8proc_category(static_cast<utf8proc_int32_t>(cp));
  if (c != UTF8PROC_CATEGORY_CN) return c;
  const char* added = unicode16_added_category(cp);
  if (!added) return c;
  static constexpr struct {
    const char* name;
    utf8proc_category_t cat;
  } kNames[] = {{"Lu", UTF8PROC_CATEGORY_LU}, {"Ll", UTF8PROC_CATEGORY_LL}, {"Lt", UTF8PROC_CATEGORY_LT},
                {"Lm", UTF8PROC_CATEGORY_LM}, {"Lo", UTF8PROC_CATEGORY_LO}, {"Mn", UTF8PROC_CATEGORY_MN},
                {"Mc", UTF8PROC_CATEGORY_MC}, {"Me", UTF8PROC_CATEGORY_ME}, {"Nd", UTF8PROC_CATEGORY_ND},
                {"Nl", UTF8PROC_CATEGORY_NL}, {"No", UTF8PROC_CATEGORY_NO}, {"Pc", UTF8PROC_CATEGORY_PC},
                {"Pd", UTF8PROC_CATEGORY_PD}, {"Ps", UTF8PROC_CATEGORY_PS}, {"Pe", UTF8PROC_CATEGORY_PE},
                {"Pi", UTF8PROC_CATEGORY_PI}, {"Pf", UTF8PROC_CATEGORY_PF}, {"Po", UTF8PROC_CATEGORY_PO},
                {"Sm", UTF8PROC_CATEGORY_SM}, {"Sc", UTF8PROC_CATEGORY_SC}, {"Sk", UTF8PROC_CATEGORY_SK},
                {"So", UTF8PROC_CATEGORY_SO}, {"Zs", UTF8PROC_CATEGORY_ZS}, {"Zl", UTF8PROC_CATEGORY_ZL},
                {"Zp", UTF8PROC_CATEGORY_ZP}, {"Cc", UTF8PROC_CATEGORY_CC}, {"Cf", UTF8PROC_CATEGORY_CF}};
  for (const auto& n : kNames) {
    if (n.name[0] == added[0] && n.name[1] == added[1]) return n.cat;
  }
  return c;
}

}  // namespace

bool is_white_space(uint32_t cp) {
  if (cp <= 0x20) return cp == 0x20 || (cp >= 0x09 && cp <= 0x0D);
  if (cp < 0x85) return false;
  switch (cp) {
    case 0x85:
    case 0xA0:
    case 0x1680:
    case 0x2028:
    case 0x2029:
    case 0x202F:
    case 0x205F:
    case 0x3000:
      return true;
    default:
      return cp >= 0x2000 && cp <= 0x200A;
  }
}

bool is_numeric(uint32_t cp) {
  if (cp < 0x80) return cp >= '0' && cp <= '9';
  // Unicode 17.0 numbers (Rust's tables) that utf8proc and the 16.0 additions lack.
  if ((cp >= 0x11DE0 && cp <= 0x11DE9) || (cp >= 0x16FF4 && cp <= 0x16FF6)) return true;
  auto c = category(cp);
  return c == UTF8PROC_CATEGORY_ND || c == UTF8PROC_CATEGORY_NL || c == UTF8PROC_CATEGORY_NO;
}

bool is_punctuation(uint32_t cp) {
  if (cp < 0x80) {
    return (cp >= 0x21 && cp <= 0x2F) || (cp >= 0x3A && cp <= 0x40) || (cp >= 0x5B && cp <= 0x60) ||
           (cp >= 0x7B && cp <= 0x7E);
  }
  // Hugging Face uses Unicode 8.0 categories here: two characters were
  // punctuation then, and later punctuation does not count.
  if (cp == 0x166D || cp == 0x111C9) return true;
  auto c = category(cp);
  return c >= UTF8PROC_CATEGORY_PC && c <= UTF8PROC_CATEGORY_PO && !is_punctuation_added_after_8(cp);
}

bool is_rust_word(uint32_t cp) {
  if (cp < 0x80) {
    return (cp >= '0' && cp <= '9') || (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') || cp == '_';
  }
  if (cp == 0x200C || cp == 0x200D) return true;  // Join_Control
  // Other_Alphabetic symbols (circled and squared Latin letters).
  if ((cp >= 0x24B6 && cp <= 0x24E9) || (cp >= 0x1F130 && cp <= 0x1F149) ||
      (cp >= 0x1F150 && cp <= 0x1F169) || (cp >= 0x1F170 && cp <= 0x1F189)) {
    return true;
  }
  switch (category(cp)) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
    case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_MC:
    case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_PC:
      return true;
    default:
      return false;
  }
}

namespace {

// Lowercase mappings of Rust's char::to_lowercase (Unicode 17.0, as Hugging
// Face `tokenizers` 0.23 is built) that utf8proc's Unicode 15.0 lacks:
// [first, last] map to first + delta.
constexpr struct {
  uint32_t first;
  uint32_t last;
  int32_t delta;
} kLowercaseAdditions[] = {
    {0x1C89, 0x1C89, 1},      {0xA7CB, 0xA7CB, 0x264 - 0xA7CB},
    {0xA7CC, 0xA7CC, 1},      {0xA7CE, 0xA7CE, 1},
    {0xA7D2, 0xA7D2, 1},      {0xA7D4, 0xA7D4, 1},
    {0xA7DA, 0xA7DA, 1},      {0xA7DC, 0xA7DC, 0x19B - 0xA7DC},
    {0x10D50, 0x10D65, 0x20}, {0x16EA0, 0x16EB8, 0x1B},
};

}  // namespace

void append_lowercase(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp >= 'A' && cp <= 'Z' ? cp + 32 : cp));
    return;
  }
  if (cp == 0x130) {  // the one unconditional multi-character lowercase mapping
    out.append("i\xCC\x87");
    return;
  }
  for (const auto& a : kLowercaseAdditions) {
    if (cp >= a.first && cp <= a.last) {
      utf8_append(out, static_cast<uint32_t>(static_cast<int32_t>(cp) + a.delta));
      return;
    }
  }
  utf8_append(out, static_cast<uint32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(cp))));
}

namespace {

std::string utf8proc_normalize(std::string_view s, NormForm form) {
  int options = UTF8PROC_STABLE;
  switch (form) {
    case NormForm::kNFC:
      options |= UTF8PROC_COMPOSE;
      break;
    case NormForm::kNFD:
      options |= UTF8PROC_DECOMPOSE;
      break;
    case NormForm::kNFKC:
      options |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT;
      break;
    case NormForm::kNFKD:
      options |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT;
      break;
  }
  utf8proc_uint8_t* dst = nullptr;
  utf8proc_ssize_t n =
      utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()),
                   static_cast<utf8proc_ssize_t>(s.size()), &dst, static_cast<utf8proc_option_t>(options));
  if (n < 0) {  // cannot happen for valid UTF-8; keep the text as it is
    std::free(dst);
    return std::string(s);
  }
  std::string out(reinterpret_cast<const char*>(dst), static_cast<size_t>(n));
  std::free(dst);
  return out;
}

// Code points below this bound get quick-check bits; others always go to utf8proc.
constexpr uint32_t kNfcTableEnd = 0x30000;

struct NfcTables {
  // Characters that NFC leaves alone whatever surrounds them: combining class
  // 0, unchanged by NFC on their own, and never the second (or later)
  // character of a decomposition, so nothing before them composes with them
  // or is reordered across them.
  std::vector<uint64_t> safe;
  // is_normalization_barrier(), as bits.
  std::vector<uint64_t> barrier;
};

const NfcTables& nfc_tables() {
  static const NfcTables tables = [] {
    NfcTables t;
    t.safe.assign(kNfcTableEnd / 64, ~0ull);
    t.barrier.assign(kNfcTableEnd / 64, 0);
    auto clear = [&](uint32_t cp) {
      if (cp < kNfcTableEnd) t.safe[cp / 64] &= ~(1ull << (cp % 64));
    };
    utf8proc_int32_t buf[32];
    for (uint32_t cp = 0x80; cp < kNfcTableEnd; ++cp) {
      const utf8proc_property_t* p = utf8proc_get_property(static_cast<utf8proc_int32_t>(cp));
      if (p->combining_class != 0) clear(cp);
      if (p->category == UTF8PROC_CATEGORY_CS || p->category == UTF8PROC_CATEGORY_CN) {
        clear(cp);  // surrogates and unassigned: let utf8proc decide
        continue;
      }
      int last_boundclass = 0;
      utf8proc_ssize_t n =
          utf8proc_decompose_char(static_cast<utf8proc_int32_t>(cp), buf, 32,
                                  static_cast<utf8proc_option_t>(UTF8PROC_DECOMPOSE), &last_boundclass);
      if (n <= 1 && (n < 1 || buf[0] == static_cast<utf8proc_int32_t>(cp))) continue;
      if (n < 1 || n > 32) {
        clear(cp);
        continue;
      }
      for (utf8proc_ssize_t k = 1; k < n; ++k) clear(static_cast<uint32_t>(buf[k]));
      utf8proc_ssize_t m = utf8proc_normalize_utf32(
          buf, n, static_cast<utf8proc_option_t>(UTF8PROC_COMPOSE | UTF8PROC_STABLE));
      if (m != 1 || buf[0] != static_cast<utf8proc_int32_t>(cp)) clear(cp);
    }
    for (uint32_t cp = 0x80; cp < kNfcTableEnd; ++cp) {
      if (is_normalization_barrier(cp)) t.barrier[cp / 64] |= 1ull << (cp % 64);
    }
    return t;
  }();
  return tables;
}

inline bool bit(const std::vector<uint64_t>& bits, uint32_t cp) { return (bits[cp / 64] >> (cp % 64)) & 1; }

enum class CharKind { kSafe, kBarrier, kOther };

inline CharKind nfc_kind(const NfcTables& t, uint32_t cp) {
  if (cp < 0x80) return CharKind::kSafe;
  if (cp >= kNfcTableEnd) return CharKind::kOther;
  if (bit(t.barrier, cp)) return CharKind::kBarrier;
  return bit(t.safe, cp) ? CharKind::kSafe : CharKind::kOther;
}

// NFC that copies the runs of safe characters and sends only the stretches
// around other ones through utf8proc: from the last safe character before
// (a safe character starts a stretch nothing before it interacts with) to the
// next safe or barrier character. Barrier characters stay as they are and
// split stretches (see is_normalization_barrier).
std::string nfc(std::string_view s) {
  const NfcTables& t = nfc_tables();
  std::string out;
  size_t copied = 0, boundary = 0, i = 0;
  bool changed = false;
  while (i < s.size()) {
    size_t k = i;
    uint32_t cp = utf8_next(s, i);
    CharKind kind = nfc_kind(t, cp);
    if (kind == CharKind::kSafe) {
      boundary = k;
      continue;
    }
    if (kind == CharKind::kBarrier) {
      boundary = i;
      continue;
    }
    size_t j = i;
    while (j < s.size()) {
      size_t k2 = j;
      uint32_t c2 = utf8_next(s, j);
      if (nfc_kind(t, c2) != CharKind::kOther) {
        j = k2;
        break;
      }
    }
    std::string_view region = s.substr(boundary, j - boundary);
    std::string normalized = utf8proc_normalize(region, NormForm::kNFC);
    if (normalized != region) {
      if (!changed) out.reserve(s.size() + 16);
      changed = true;
      out.append(s.substr(copied, boundary - copied));
      out.append(normalized);
      copied = j;
    }
    boundary = j;
    i = j;
  }
  if (!changed) return std::string(s);
  out.append(s.substr(copied));
  return out;
}

// The other forms: utf8proc on the stretches between barrier characters.
std::string normalize_between_barriers(std::string_view s, NormForm form) {
  std::string out;
  size_t start = 0, i = 0;
  while (i < s.size()) {
    size_t k = i;
    uint32_t cp = utf8_next(s, i);
    if (cp >= 0x80 && is_normalization_barrier(cp)) {
      out += utf8proc_normalize(s.substr(start, k - start), form);
      out.append(s.substr(k, i - k));
      start = i;
    }
  }
  if (start == 0) return utf8proc_normalize(s, form);
  out += utf8proc_normalize(s.substr(start), form);
  return out;
}

}  // namespace

std::string normalize_form(std::string_view s, NormForm form) {
  bool ascii = true;
  for (char c : s) {
    if (static_cast<unsigned char>(c) >= 0x80) {
      ascii = false;
      break;
    }
  }
  if (ascii) return std::string(s);  // ASCII is invariant under every form
  if (form == NormForm::kNFC) return nfc(s);
  return normalize_between_barriers(s, form);
}

}  // namespace kiln::tok
