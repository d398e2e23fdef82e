// Runs the kiln program as a user does (the binary CMake built), for the CLI tests.
#pragma once

#include <sys/wait.h>

#include <cstdio>
#include <string>

namespace kiln::test {

struct CliRun {
  int code;            // the exit status (-1: killed by a signal)
  std::string output;  // stdout and stderr
};

// `kiln ARGS` through the shell, with stderr folded into stdout.
inline CliRun kiln(const std::string& args) {
  std::string cmd = std::string(KILN_BINARY) + " " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  int status = pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

}  // namespace kiln::test
