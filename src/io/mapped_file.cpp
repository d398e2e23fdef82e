#include "io/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <limits>

namespace kiln {

namespace {

std::string errno_text(int err) { return std::strerror(err); }

// Closes a file descriptor on scope exit.
struct FdCloser {
  int fd;
  ~FdCloser() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace

Result<MappedFile> MappedFile::open(const std::string& path) {
  int fd;
  do {
    fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    int err = errno;
    std::string msg = "cannot open '" + path + "': " + errno_text(err);
    if (err == ENOENT || err == ENOTDIR) return not_found(msg);
    return failed_precondition(msg);
  }
  FdCloser closer{fd};

  struct stat st;
  if (::fstat(fd, &st) != 0) {
    return failed_precondition("cannot stat '" + path + "': " + errno_text(errno));
  }
  if (S_ISDIR(st.st_mode)) return invalid_argument("'" + path + "' is a folder, not a file");
  if (!S_ISREG(st.st_mode)) return invalid_argument("'" + path + "' is not a regular file");
  if (st.st_size < 0 ||
      static_cast<uint64_t>(st.st_size) > static_cast<uint64_t>(std::numeric_limits<size_t>::max())) {
    return failed_precondition("'" + path + "' has a size this machine cannot map");
  }

  MappedFile file;
  file.path_ = path;
  file.size_ = static_cast<size_t>(st.st_size);
  if (file.size_ == 0) return file;  // mmap of length 0 is an error; an empty file maps to nothing

  void* p = ::mmap(nullptr, file.size_, PROT_READ, MAP_PRIVATE, fd, 0);
  if (p == MAP_FAILED) {
    int err = errno;
    std::string msg = "cannot map '" + path + "' (" + std::to_string(file.size_) + " bytes): " + errno_text(err);
    file.size_ = 0;
    if (err == ENOMEM) return resource_exhausted(msg);
    return failed_precondition(msg);
  }
  file.data_ = static_cast<const uint8_t*>(p);
  return file;
}

MappedFile::MappedFile(MappedFile&& other) noexcept
    : data_(other.data_), size_(other.size_), path_(std::move(other.path_)) {
  other.data_ = nullptr;
  other.size_ = 0;
}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    reset();
    data_ = other.data_;
    size_ = other.size_;
    path_ = std::move(other.path_);
    other.data_ = nullptr;
    other.size_ = 0;
  }
  return *this;
}

MappedFile::~MappedFile() { reset(); }

void MappedFile::reset() {
  if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
  data_ = nullptr;
  size_ = 0;
}

}  // namespace kiln
