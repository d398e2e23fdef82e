#include "cli/args.h"

#include <charconv>
#include <cmath>
#include <cstdio>

namespace kiln::cli {

Result<Args> Args::parse(const std::vector<std::string>& argv, const std::vector<FlagSpec>& specs) {
  Args a;
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& arg = argv[i];
    if (arg.rfind("--", 0) != 0) return invalid_argument("unexpected argument '" + arg + "' (flags start with --)");
    std::string name = arg.substr(2), value;
    bool inline_value = false;
    if (auto eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      inline_value = true;
    }
    const FlagSpec* spec = nullptr;
    for (const auto& s : specs)
      if (s.name == name) spec = &s;
    if (!spec) {
      std::string known;
      for (const auto& s : specs) known += " --" + s.name;
      return invalid_argument("unknown flag --" + name + "; known flags:" + known);
    }
    if (spec->takes_value && !inline_value) {
      if (i + 1 >= argv.size()) return invalid_argument("flag --" + name + " needs a value");
      value = argv[++i];
    } else if (!spec->takes_value && inline_value) {
      return invalid_argument("flag --" + name + " takes no value");
    }
    a.values_[name].push_back(value);
  }
  return a;
}

std::optional<std::string> Args::get(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end()) return std::nullopt;
  return it->second.back();
}

std::vector<std::string> Args::get_all(const std::string& name) const {
  auto it = values_.find(name);
  return it == values_.end() ? std::vector<std::string>{} : it->second;
}

Result<std::string> Args::require(const std::string& name) const {
  auto v = get(name);
  if (!v) return invalid_argument("missing required flag --" + name);
  return *v;
}

Result<int64_t> Args::get_int(const std::string& name, int64_t fallback) const {
  auto v = get(name);
  if (!v) return fallback;
  int64_t out = 0;
  auto [p, ec] = std::from_chars(v->data(), v->data() + v->size(), out);
  if (ec != std::errc() || p != v->data() + v->size())
    return invalid_argument("flag --" + name + " expects an integer, got '" + *v + "'");
  return out;
}

Result<double> Args::get_float(const std::string& name, double fallback) const {
  auto v = get(name);
  if (!v) return fallback;
  double out = 0;
  auto [p, ec] = std::from_chars(v->data(), v->data() + v->size(), out);
  if (ec != std::errc() || p != v->data() + v->size() || !std::isfinite(out))
    return invalid_argument("flag --" + name + " expects a number, got '" + *v + "'");
  return out;
}

std::string usage(const std::string& command, const std::string& summary, const std::vector<FlagSpec>& specs) {
  std::string s = "usage: kiln " + command + " [flags]\n" + summary + "\n\nflags:\n";
  for (const auto& f : specs) {
    std::string left = "  --" + f.name + (f.takes_value ? " VALUE" : "");
    if (left.size() < 28) left.resize(28, ' ');
    s += left + " " + f.help + "\n";
  }
  return s;
}

}  // namespace kiln::cli

namespace kiln::cli {
int report_error(const std::string& command, const Status& status) {
  std::fprintf(stderr, "kiln %s: error: %s\n", command.c_str(), status.message().c_str());
  return status.code() == StatusCode::kInvalidArgument ? 2 : 1;
}
bool wants_help(const std::vector<std::string>& args) {
  for (const auto& a : args)
    if (a == "--help" || a == "-h") return true;
  return false;
}
}  // namespace kiln::cli
