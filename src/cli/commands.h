// The subcommands of the `kiln` program; each returns a process exit code.
#pragma once

#include <string>
#include <vector>

namespace kiln::cli {

int cmd_convert(const std::vector<std::string>& args);
int cmd_build(const std::vector<std::string>& args);
int cmd_run(const std::vector<std::string>& args);
int cmd_bench(const std::vector<std::string>& args);
int cmd_chat(const std::vector<std::string>& args);
int cmd_tokenize(const std::vector<std::string>& args);
int cmd_chat_template(const std::vector<std::string>& args);
int cmd_serve(const std::vector<std::string>& args);
int cmd_repo(const std::vector<std::string>& args);  // kiln repo init

}  // namespace kiln::cli
