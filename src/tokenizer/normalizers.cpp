#include "tokenizer/normalizers.h"

#include <vector>

#include "tokenizer/regex.h"
#include "tokenizer/utf8.h"

namespace kiln::tok {

namespace {

class UnicodeNormalizer final : public Normalizer {
 public:
  explicit UnicodeNormalizer(NormForm form) : form_(form) {}
  Status normalize(std::string& s, bool&) const override {
    s = normalize_form(s, form_);
    return {};
  }

 private:
  NormForm form_;
};

class LowercaseNormalizer final : public Normalizer {
 public:
  Status normalize(std::string& s, bool&) const override {
    bool ascii = true;
    for (char& c : s) {
      unsigned char b = static_cast<unsigned char>(c);
      if (b >= 0x80) {
        ascii = false;
        break;
      }
    }
    if (ascii) {
      for (char& c : s) {
        if (c >= 'A' && c <= 'Z') c = static_cast<char>(c + 32);
      }
      return {};
    }
    std::string out;
    out.reserve(s.size() + 8);
    for (size_t i = 0; i < s.size();) append_lowercase(out, utf8_next(s, i));
    s.swap(out);
    return {};
  }
};

class StripNormalizer final : public Normalizer {
 public:
  StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
  Status normalize(std::string& s, bool& at_start) const override {
    size_t begin = 0, end = s.size();
    if (left_) {
      while (begin < end) {
        size_t j = begin;
        if (!is_white_space(utf8_next(s, j))) break;
        begin = j;
      }
    }
    if (right_) {
      while (end > begin) {
        size_t j = end - 1;
        while (j > begin && (static_cast<unsigned char>(s[j]) & 0xC0) == 0x80) --j;
        size_t k = j;
        if (!is_white_space(utf8_next(s, k))) break;
        end = j;
      }
    }
    if (begin > 0) at_start = false;
    if (begin > 0 || end < s.size()) s = s.substr(begin, end - begin);
    return {};
  }

 private:
  bool left_, right_;
};

class PrependNormalizer final : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prefix) : prefix_(std::move(prefix)) {}
  Status normalize(std::string& s, bool&) const override {
    if (!s.empty()) s.insert(0, prefix_);
    return {};
  }

 private:
  std::string prefix_;
};

class ReplaceNormalizer final : public Normalizer {
 public:
  ReplaceNormalizer(Matcher m, std::string content) : matcher_(std::move(m)), content_(std::move(content)) {}
  Status normalize(std::string& s, bool& at_start) const override {
    if (s.empty()) return {};
    if (matcher_.is_literal() && !matcher_.source().empty() &&
        s.find(matcher_.source()) == std::string::npos) {
      return {};
    }
    thread_local std::string out;
    KILN_RETURN_IF_ERROR(matcher_.replace_all(s, content_, out));
    if (content_.empty() && at_start) {
      size_t ms, me;
      if (matcher_.find_at(s, 0, &ms, &me) == 1 && ms == 0 && me > 0) at_start = false;
    }
    s.assign(out);
    return {};
  }

 private:
  Matcher matcher_;
  std::string content_;
};

class SequenceNormalizer final : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> items) : items_(std::move(items)) {}
  Status normalize(std::string& s, bool& at_start) const override {
    for (const auto& n : items_) KILN_RETURN_IF_ERROR(n->normalize(s, at_start));
    return {};
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> items_;
};

}  // namespace

Result<std::unique_ptr<Normalizer>> parse_normalizer(const json& j, const std::string& path) {
  KILN_ASSIGN_OR_RETURN(std::string type, jtype(j, path));
  if (type == "NFC") return std::unique_ptr<Normalizer>(new UnicodeNormalizer(NormForm::kNFC));
  if (type == "NFD") return std::unique_ptr<Normalizer>(new UnicodeNormalizer(NormForm::kNFD));
  if (type == "NFKC") return std::unique_ptr<Normalizer>(new UnicodeNormalizer(NormForm::kNFKC));
  if (type == "NFKD") return std::unique_ptr<Normalizer>(new UnicodeNormalizer(NormForm::kNFKD));
  if (type == "Lowercase") return std::unique_ptr<Normalizer>(new LowercaseNormalizer());
  if (type == "Strip") {
    KILN_ASSIGN_OR_RETURN(bool left, jbool_or(j, path, "strip_left", true));
    KILN_ASSIGN_OR_RETURN(bool right, jbool_or(j, path, "strip_right", true));
    return std::unique_ptr<Normalizer>(new StripNormalizer(left, right));
  }
  if (type == "Prepend") {
    KILN_ASSIGN_OR_RETURN(std::string prefix, jstring(j, path, "prepend"));
    return std::unique_ptr<Normalizer>(new PrependNormalizer(std::move(prefix)));
  }
  if (type == "Replace") {
    KILN_ASSIGN_OR_RETURN(Matcher m, parse_pattern(j, path));
    KILN_ASSIGN_OR_RETURN(std::string content, jstring(j, path, "content"));
    return std::unique_ptr<Normalizer>(new ReplaceNormalizer(std::move(m), std::move(content)));
  }
  if (type == "Sequence") {
    KILN_ASSIGN_OR_RETURN(auto items, jsequence<Normalizer>(j, path, "normalizers", "normalizers", parse_normalizer));
    return std::unique_ptr<Normalizer>(new SequenceNormalizer(std::move(items)));
  }
  return unimplemented(jkey(path, "type") + ": normalizer \"" + type + "\" is not supported");
}

}  // namespace kiln::tok
