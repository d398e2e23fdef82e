// Helpers shared by the tests: data paths and scratch directories.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <string>

namespace kiln::test {

// tests/data of the source tree the tests were built from, or $KILN_TEST_DATA_DIR (a binary carried to
// another machine, e.g. the GPU device, finds the checkout there).
inline std::string data_path(const std::string& rel) {
  const char* env = std::getenv("KILN_TEST_DATA_DIR");
  return std::string(env && *env ? env : KILN_TEST_DATA_DIR) + "/" + rel;
}

// A fresh directory under the system temp dir, removed when the object dies.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "kiln_test_XXXXXX").string();
    path_ = ::mkdtemp(tmpl.data()) ? tmpl : "";
  }
  ~TempDir() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string sub(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

}  // namespace kiln::test
