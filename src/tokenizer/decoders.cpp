#include "tokenizer/decoders.h"

#include "tokenizer/pre_tokenizers.h"
#include "tokenizer/regex.h"
#include "tokenizer/utf8.h"

namespace kiln::tok {

namespace {

// All tokens become bytes again through the byte-level table (a token with a
// character outside the table contributes its own UTF-8 bytes), then one
// string, with ill-formed UTF-8 replaced by U+FFFD.
class ByteLevelDecoder final : public Decoder {
 public:
  Status decode_chain(std::vector<std::string>& tokens) const override {
    const ByteLevelTable& t = byte_level_table();
    std::string bytes;
    for (const std::string& tok : tokens) {
      size_t mark = bytes.size();
      bool ok = true;
      for (size_t i = 0; i < tok.size();) {
        uint32_t cp = utf8_next(tok, i);
        if (cp >= 512 || t.byte_of[cp] < 0) {
          ok = false;
          break;
        }
        bytes.push_back(static_cast<char>(t.byte_of[cp]));
      }
      if (!ok) {
        bytes.resize(mark);
        bytes.append(tok);
      }
    }
    tokens.assign(1, utf8_lossy(bytes));
    return {};
  }
};

enum class PrependScheme { kAlways, kFirst, kNever };

class MetaspaceDecoder final : public Decoder {
 public:
  MetaspaceDecoder(std::string repl, PrependScheme scheme) : repl_(std::move(repl)), scheme_(scheme) {}
  Status decode_chain(std::vector<std::string>& tokens) const override {
    std::string out;
    for (size_t i = 0; i < tokens.size(); ++i) {
      const std::string& tok = tokens[i];
      if (tok.find(repl_) == std::string::npos) continue;
      out.clear();
      for (size_t k = 0; k < tok.size();) {
        if (tok.compare(k, repl_.size(), repl_) == 0) {
          if (!(i == 0 && scheme_ != PrependScheme::kNever)) out.push_back(' ');
          k += repl_.size();
        } else {
          out.push_back(tok[k++]);
        }
      }
      tokens[i] = out;
    }
    return {};
  }

 private:
  std::string repl_;
  PrependScheme scheme_;
};

class ReplaceDecoder final : public Decoder {
 public:
  ReplaceDecoder(Matcher m, std::string content) : matcher_(std::move(m)), content_(std::move(content)) {}
  Status decode_chain(std::vector<std::string>& tokens) const override {
    std::string out;
    for (std::string& tok : tokens) {
      if (matcher_.is_literal() && !matcher_.source().empty() &&
          tok.find(matcher_.source()) == std::string::npos) {
        continue;
      }
      KILN_RETURN_IF_ERROR(matcher_.replace_all(tok, content_, out));
      tok.swap(out);
    }
    return {};
  }

 private:
  Matcher matcher_;
  std::string content_;
};

// "<0x41>" -> 0x41 (as Rust's u8::from_str_radix reads the two characters, a
// leading '+' included); -1 when the token is not a byte token.
int byte_token_value(const std::string& t) {
  if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
  auto hex = [](char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  if (t[3] == '+') return hex(t[4]);
  int hi = hex(t[3]), lo = hex(t[4]);
  if (hi < 0 || lo < 0) return -1;
  return hi * 16 + lo;
}

class ByteFallbackDecoder final : public Decoder {
 public:
  Status decode_chain(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    out.reserve(tokens.size());
    std::string pending;
    auto flush = [&] {
      if (pending.empty()) return;
      if (utf8_first_invalid(pending) == std::string::npos) {
        out.push_back(pending);
      } else {
        for (size_t k = 0; k < pending.size(); ++k) out.emplace_back("\xEF\xBF\xBD");
      }
      pending.clear();
    };
    for (std::string& tok : tokens) {
      int b = byte_token_value(tok);
      if (b >= 0) {
        pending.push_back(static_cast<char>(b));
        continue;
      }
      flush();
      out.push_back(std::move(tok));
    }
    flush();
    tokens.swap(out);
    return {};
  }
};

class FuseDecoder final : public Decoder {
 public:
  Status decode_chain(std::vector<std::string>& tokens) const override {
    std::string all;
    for (const std::string& t : tokens) all.append(t);
    tokens.assign(1, std::move(all));
    return {};
  }
};

// Removes up to `start` leading and `stop` trailing `content` characters of each token.
class StripDecoder final : public Decoder {
 public:
  StripDecoder(uint32_t content, size_t start, size_t stop) : content_(content), start_(start), stop_(stop) {}
  Status decode_chain(std::vector<std::string>& tokens) const override {
    std::vector<size_t> bounds;  // byte offset of each character, then the size
    for (std::string& tok : tokens) {
      bounds.clear();
      std::vector<uint32_t> cps;
      for (size_t i = 0; i < tok.size();) {
        bounds.push_back(i);
        cps.push_back(utf8_next(tok, i));
      }
      bounds.push_back(tok.size());
      size_t n = cps.size(), start_cut = 0, stop_cut = n;
      for (size_t i = 0; i < n && i < start_; ++i) {
        if (cps[i] != content_) break;
        start_cut = i + 1;
      }
      for (size_t i = 0; i < stop_ && i < n; ++i) {
        size_t index = n - i - 1;
        if (cps[index] != content_) break;
        stop_cut = index;
      }
      if (stop_cut < start_cut) stop_cut = start_cut;
      if (start_cut == 0 && stop_cut == n) continue;
      tok = tok.substr(bounds[start_cut], bounds[stop_cut] - bounds[start_cut]);
    }
    return {};
  }

 private:
  uint32_t content_;
  size_t start_, stop_;
};

class SequenceDecoder final : public Decoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> items) : items_(std::move(items)) {}
  Status decode_chain(std::vector<std::string>& tokens) const override {
    for (const auto& d : items_) KILN_RETURN_IF_ERROR(d->decode_chain(tokens));
    return {};
  }

 private:
  std::vector<std::unique_ptr<Decoder>> items_;
};

}  // namespace

Result<std::unique_ptr<Decoder>> parse_decoder(const json& j, const std::string& path) {
  KILN_ASSIGN_OR_RETURN(std::string type, jtype(j, path));
  if (type == "ByteLevel") return std::unique_ptr<Decoder>(new ByteLevelDecoder());
  if (type == "Metaspace") {
    KILN_ASSIGN_OR_RETURN(std::string repl, jchar(j, path, "replacement", std::string("\xE2\x96\x81")));
    PrependScheme scheme = PrependScheme::kAlways;
    const json* ps = jfind(j, "prepend_scheme");
    if (ps) {
      std::string s = ps->is_string() ? ps->get<std::string>() : "";
      if (s == "always") {
        scheme = PrependScheme::kAlways;
      } else if (s == "first") {
        scheme = PrependScheme::kFirst;
      } else if (s == "never") {
        scheme = PrependScheme::kNever;
      } else {
        return json_error(jkey(path, "prepend_scheme"), "expected \"always\", \"first\" or \"never\"");
      }
    }
    if (const json* aps = jfind(j, "add_prefix_space"); aps && aps->is_boolean() && !aps->get<bool>()) {
      if (ps && scheme != PrependScheme::kNever) {
        return json_error(jkey(path, "add_prefix_space"), "false does not match prepend_scheme");
      }
      scheme = PrependScheme::kNever;
    }
    return std::unique_ptr<Decoder>(new MetaspaceDecoder(std::move(repl), scheme));
  }
  if (type == "Replace") {
    KILN_ASSIGN_OR_RETURN(Matcher m, parse_pattern(j, path));
    KILN_ASSIGN_OR_RETURN(std::string content, jstring(j, path, "content"));
    return std::unique_ptr<Decoder>(new ReplaceDecoder(std::move(m), std::move(content)));
  }
  if (type == "ByteFallback") return std::unique_ptr<Decoder>(new ByteFallbackDecoder());
  if (type == "Fuse") return std::unique_ptr<Decoder>(new FuseDecoder());
  if (type == "Strip") {
    KILN_ASSIGN_OR_RETURN(std::string content, jchar(j, path, "content"));
    KILN_ASSIGN_OR_RETURN(int64_t start, jint_or(j, path, "start", 0));
    KILN_ASSIGN_OR_RETURN(int64_t stop, jint_or(j, path, "stop", 0));
    if (start < 0) return json_error(jkey(path, "start"), "expected a non-negative integer");
    if (stop < 0) return json_error(jkey(path, "stop"), "expected a non-negative integer");
    size_t i = 0;
    uint32_t cp = utf8_next(content, i);
    return std::unique_ptr<Decoder>(
        new StripDecoder(cp, static_cast<size_t>(start), static_cast<size_t>(stop)));
  }
  if (type == "Sequence") {
    KILN_ASSIGN_OR_RETURN(auto items, jsequence<Decoder>(j, path, "decoders", "decoders", parse_decoder));
    return std::unique_ptr<Decoder>(new SequenceDecoder(std::move(items)));
  }
  return unimplemented(jkey(path, "type") + ": decoder \"" + type + "\" is not supported");
}

}  // namespace kiln::tok
