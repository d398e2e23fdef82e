// Characters assigned between Unicode 14.0 and Unicode 16.0, with their 16.0
// general category. The system PCRE2 (10.42) knows Unicode 14.0 and utf8proc
// (2.8) Unicode 15.0, while Hugging Face `tokenizers` 0.23 matches its
// patterns with Oniguruma's Unicode 16.0 tables; these ranges close the gap
// (every character that changed category since 14.0 was unassigned in 14.0).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace kiln::tok {

// The 16.0 category ("Lo", "Nd", ...) of `cp` when it was unassigned in 14.0 and
// is assigned in 16.0; nullptr otherwise.
const char* unicode16_added_category(uint32_t cp);

// Appends, in PCRE2 character-class syntax ("\x{105C0}-\x{105F3}..."), the
// added characters whose category belongs to the property `name`: a category
// ("Lo"), a major class ("L") or its long name ("Letter"). Appends nothing for
// other properties (scripts, binary properties).
void append_unicode16_additions(std::string& out, std::string_view name);

// Hugging Face `tokenizers` normalizes (NFC, NFD, NFKC, NFKD) with Unicode 9.0
// tables, where characters assigned later are unassigned: starters that never
// decompose, compose or reorder. True for the characters utf8proc would treat
// otherwise; normalization leaves them as they are and does not cross them.
bool is_normalization_barrier(uint32_t cp);

// Whether `cp` is punctuation now but was not in Unicode 8.0, whose tables
// Hugging Face's Punctuation pre-tokenizer uses.
bool is_punctuation_added_after_8(uint32_t cp);

}  // namespace kiln::tok
