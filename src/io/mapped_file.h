// MappedFile: a read-only memory map of a whole file.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "core/status.h"

namespace kiln {

// Maps a whole file with mmap(PROT_READ, MAP_PRIVATE). An empty file is allowed: data() is null and
// size() is 0. The mapping stays valid for the life of the object (moving it keeps the same address).
// If another process truncates the file while it is mapped, touching the lost pages raises SIGBUS:
// Kiln treats model files as immutable while they are loaded.
class MappedFile {
 public:
  // Errors: NotFound (no such file), InvalidArgument (a folder or other non-regular file),
  // FailedPrecondition (permission denied and other open errors), ResourceExhausted (mmap out of memory).
  static Result<MappedFile> open(const std::string& path);

  MappedFile() = default;
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  void reset();

  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  std::string path_;
};

}  // namespace kiln
