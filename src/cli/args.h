// Command-line flags: --name value or --name=value, repeatable, every flag declared up front so a typo
// is an error that lists the known flags.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "core/status.h"

namespace kiln::cli {

struct FlagSpec {
  std::string name;   // without dashes
  bool takes_value;   // false: boolean switch
  std::string help;
};

class Args {
 public:
  static Result<Args> parse(const std::vector<std::string>& argv, const std::vector<FlagSpec>& specs);
  bool has(const std::string& name) const { return values_.count(name) > 0; }
  std::optional<std::string> get(const std::string& name) const;
  std::vector<std::string> get_all(const std::string& name) const;
  Result<std::string> require(const std::string& name) const;
  Result<int64_t> get_int(const std::string& name, int64_t fallback) const;
  Result<double> get_float(const std::string& name, double fallback) const;

 private:
  std::map<std::string, std::vector<std::string>> values_;
};

std::string usage(const std::string& command, const std::string& summary, const std::vector<FlagSpec>& specs);

}  // namespace kiln::cli

namespace kiln::cli {
// Prints "kiln COMMAND: error: ..." to stderr and returns the exit code for this status (2 for usage errors, 1 otherwise).
int report_error(const std::string& command, const Status& status);
// True if args ask for --help (handled before parsing so that required flags are not demanded).
bool wants_help(const std::vector<std::string>& args);
}  // namespace kiln::cli
