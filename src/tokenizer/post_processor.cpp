#include "tokenizer/post_processor.h"

#include <map>

namespace kiln::tok {

namespace {

class TemplateProcessor final : public PostProcessor {
 public:
  // A piece of the single-sequence template: the sequence itself (ids empty,
  // is_sequence) or the ids of a special token.
  struct Item {
    bool is_sequence;
    std::vector<int32_t> ids;
  };
  explicit TemplateProcessor(std::vector<Item> items) : items_(std::move(items)) {}

  void process(std::vector<int32_t>& ids, bool add_special_tokens) const override {
    thread_local std::vector<int32_t> out;
    out.clear();
    for (const Item& it : items_) {
      if (it.is_sequence) {
        out.insert(out.end(), ids.begin(), ids.end());
      } else if (add_special_tokens) {
        out.insert(out.end(), it.ids.begin(), it.ids.end());
      }
    }
    ids.assign(out.begin(), out.end());
  }

 private:
  std::vector<Item> items_;
};

class NoOpProcessor final : public PostProcessor {
 public:
  void process(std::vector<int32_t>&, bool) const override {}
};

class SequenceProcessor final : public PostProcessor {
 public:
  explicit SequenceProcessor(std::vector<std::unique_ptr<PostProcessor>> items) : items_(std::move(items)) {}
  void process(std::vector<int32_t>& ids, bool add_special_tokens) const override {
    for (const auto& p : items_) p->process(ids, add_special_tokens);
  }

 private:
  std::vector<std::unique_ptr<PostProcessor>> items_;
};

Result<std::unique_ptr<PostProcessor>> parse_template(const json& j, const std::string& path) {
  // special_tokens: {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}, ...}
  std::map<std::string, std::vector<int32_t>> specials;
  std::string spath = jkey(path, "special_tokens");
  if (const json* st = jfind(j, "special_tokens")) {
    if (!st->is_object()) return json_error(spath, "expected an object");
    for (auto it = st->begin(); it != st->end(); ++it) {
      std::string tpath = spath + "[\"" + it.key() + "\"]";
      const json* ids = jfind(it.value(), "ids");
      if (!ids || !ids->is_array()) return json_error(jkey(tpath, "ids"), "expected an array of ids");
      std::vector<int32_t> v;
      for (size_t k = 0; k < ids->size(); ++k) {
        const json& x = (*ids)[k];
        if (!x.is_number_unsigned() || x.get<uint64_t>() > INT32_MAX) {
          return json_error(jidx(jkey(tpath, "ids"), k), "expected a non-negative integer id");
        }
        v.push_back(static_cast<int32_t>(x.get<uint64_t>()));
      }
      specials[it.key()] = std::move(v);
    }
  }
  const json* single = jfind(j, "single");
  std::string tpath = jkey(path, "single");
  if (!single || !single->is_array()) return json_error(tpath, "expected an array of template pieces");
  std::vector<TemplateProcessor::Item> items;
  for (size_t i = 0; i < single->size(); ++i) {
    const json& piece = (*single)[i];
    std::string ppath = jidx(tpath, i);
    if (const json* seq = jfind(piece, "Sequence")) {
      const json* id = jfind(*seq, "id");
      if (!id || !id->is_string())
        return json_error(jkey(jkey(ppath, "Sequence"), "id"), "expected \"A\" or \"B\"");
      if (id->get<std::string>() != "A") {
        return json_error(jkey(jkey(ppath, "Sequence"), "id"),
                          "a single-sequence template can only use sequence A");
      }
      items.push_back({true, {}});
    } else if (const json* sp = jfind(piece, "SpecialToken")) {
      const json* id = jfind(*sp, "id");
      if (!id || !id->is_string())
        return json_error(jkey(jkey(ppath, "SpecialToken"), "id"), "expected a string");
      auto it = specials.find(id->get<std::string>());
      if (it == specials.end()) {
        return json_error(jkey(jkey(ppath, "SpecialToken"), "id"),
                          "\"" + id->get<std::string>() + "\" is not in post_processor.special_tokens");
      }
      items.push_back({false, it->second});
    } else {
      return json_error(ppath, "expected {\"Sequence\": ...} or {\"SpecialToken\": ...}");
    }
  }
  return std::unique_ptr<PostProcessor>(new TemplateProcessor(std::move(items)));
}

}  // namespace

Result<std::unique_ptr<PostProcessor>> parse_post_processor(const json& j, const std::string& path) {
  KILN_ASSIGN_OR_RETURN(std::string type, jtype(j, path));
  if (type == "TemplateProcessing") return parse_template(j, path);
  if (type == "ByteLevel") return std::unique_ptr<PostProcessor>(new NoOpProcessor());
  if (type == "Sequence") {
    KILN_ASSIGN_OR_RETURN(auto items, jsequence<PostProcessor>(j, path, "processors", "post-processors", parse_post_processor));
    return std::unique_ptr<PostProcessor>(new SequenceProcessor(std::move(items)));
  }
  return unimplemented(jkey(path, "type") + ": post-processor \"" + type + "\" is not supported");
}

}  // namespace kiln::tok
