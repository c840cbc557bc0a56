// The I/O toolkit: the one place that talks to the kernel about file descriptors.
//
// Everything else in the project goes through these calls, so that EINTR, short reads and
// writes, descriptor ownership and the temp-fsync-rename dance are each written once, and so that
// every step that changes a file on disk passes one hook (FaultHook) where the commit crash-point
// tests fail or kill the process at step N (tests/unit/commit_crash_points_test.cpp).
//
// Errors are SysError (formats/core/errors.h) carrying the errno, with a message naming what
// failed ("PATH: fsync: Input/output error").
#pragma once

#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace nemofs {

// An owned file descriptor: closed exactly once, by its destructor or reset().
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() { reset(); }
  UniqueFd(UniqueFd&& o) noexcept : fd_(o.release()) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept {
    if (this != &o) reset(o.release());
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;

  int get() const { return fd_; }
  explicit operator bool() const { return fd_ >= 0; }
  int release() {
    int f = fd_;
    fd_ = -1;
    return f;
  }
  void reset(int fd = -1);

 private:
  int fd_ = -1;
};

namespace io {

// ---- Fault injection (tests only; a null hook costs one relaxed atomic load per step).
enum class Step { Create, Write, Copy, Truncate, Fsync, Rename, Unlink, DirFsync, Mkdir };
const char* step_name(Step s);
// Called before each step that changes a file. Returns 0 to let it run, or an errno to make it fail
// with that errno without doing anything. A hook may also end the process (a kill at that point).
using FaultHook = int (*)(Step step, const char* what);
void set_fault_hook(FaultHook hook);

// ---- Opening.
// open(2) with O_CLOEXEC added; throws SysError("PATH: open: ...").
UniqueFd open(const std::string& path, int flags, mode_t mode = 0);
// As open, but a missing file (ENOENT) is nullopt instead of an error.
std::optional<UniqueFd> open_if_exists(const std::string& path, int flags, mode_t mode = 0);
// A new file `<prefix>XXXXXX` (mkostemp, O_CLOEXEC, mode 0600); `path` receives its name.
UniqueFd create_temp(const std::string& prefix, std::string& path);

// ---- Reading (never a fault step).
// Reads up to `len` bytes at `off`; fewer only at the end of the file. Throws SysError on failure.
size_t pread_full(int fd, void* buf, size_t len, uint64_t off, const std::string& what = "read");
// Exactly `len` bytes at `off`, or SysError(EIO, "WHAT: file shrank ...").
void pread_exact(int fd, void* buf, size_t len, uint64_t off, const std::string& what = "read");
// preadv(2) of `count` buffers at `off`, resuming after short transfers: every buffer filled, or
// fewer bytes only at the end of the file. Returns the bytes read. `iov` is used up on the way
// (its entries are advanced past what was read). Throws SysError on failure.
size_t preadv_full(int fd, iovec* iov, size_t count, uint64_t off, const std::string& what = "preadv");
// A whole file (a journal, a state file). nullopt when it does not exist.
std::optional<std::string> read_file(const std::string& path);

// One line of /proc/self/mountinfo: the device (MAJ:MIN), mount point, type and source, with the
// kernel's \ooo escapes (space, tab, newline, backslash) undone.
struct MountEntry {
  std::string dev, mountpoint, fstype, source;
};
// Every mount this process sees, in mountinfo's order (the last of a mount point is the top of
// its stack); empty when mountinfo cannot be read.
std::vector<MountEntry> mounts();

// ---- Writing (fault steps).
void pwrite_full(int fd, const void* buf, size_t len, uint64_t off, const std::string& what = "write");
// pwrite_full for large buffers: the bytes go into the file by vmsplice + splice (see io.cpp for
// why), falling back to pwrite where the file cannot take spliced pages.
void pwrite_spliced(int fd, const void* buf, size_t len, uint64_t off, const std::string& what = "write");
void write_full(int fd, const void* buf, size_t len, const std::string& what = "write");
void ftruncate(int fd, uint64_t size, const std::string& what = "truncate");
void fsync(int fd, const std::string& what = "fsync");
void fdatasync(int fd, const std::string& what = "fdatasync");
void fsync_dir(const std::string& dir);
void rename(const std::string& from, const std::string& to);
// unlink(2); a missing file is not an error. Throws on any other failure when `strict`.
void unlink(const std::string& path, bool strict = false);
// mkdir(2); an existing folder is not an error. Returns whether it was created.
bool mkdir(const std::string& path, mode_t mode);

// Copies `len` bytes of `in` at `in_off` to `out` at `out_off`: copy_file_range (the kernel
// copies, or shares extents), falling back to a buffer where the filesystems cannot; offsets that
// differ modulo the page size (nothing can share those) are spliced through a pipe of up to 1 MiB
// (each byte copied once, nothing mapped). Returns the bytes copied: fewer than `len` only when `in` ends first.
uint64_t copy_range(int in, uint64_t in_off, int out, uint64_t out_off, uint64_t len, const std::string& what = "copy");
// Bytes of the file's first `size` bytes that lie in extents shared with another file (reflinks:
// FIEMAP_EXTENT_SHARED), or 0 where the filesystem cannot say. A report, never a decision.
uint64_t shared_extent_bytes(int fd, uint64_t size);

// Replaces `path` by a file holding `body`, atomically: a temp file beside it, written, then
// (when durable) fsync'ed, renamed over `path`, and the folder fsync'ed. A reader sees the old
// file or the new one, never a part.
void replace_file(const std::string& path, const std::string& body, mode_t mode = 0600, bool durable = true);

// Waits for a child process (waitpid, EINTR retried): its exit status, or -1 when it did not exit
// normally.
int wait_child(pid_t pid);

// "dir" part and "name" part of a path.
std::string dir_of(const std::string& path);
std::string base_of(const std::string& path);

}  // namespace io

// What a file is: which inode, and the size and times it had. Taken once when a file is indexed
// and compared later, to tell whether the bytes may have changed (a rewrite in place changes
// mtime and ctime; a replacement by rename changes the inode). `sample_hash`, when taken, is a
// hash of the first and last 64 KiB: it tells two archives apart that a coarse mtime could not.
struct FileIdentity {
  uint64_t dev = 0, ino = 0, size = 0;
  int64_t mtime_ns = 0;
  int64_t ctime_ns = 0;
  uint64_t sample_hash = 0;

  static FileIdentity of_stat(const struct stat& st);
  // With `sample`, also reads the two 64 KiB samples. Throws SysError.
  static FileIdentity of_fd(int fd, bool sample = false);

  bool operator==(const FileIdentity&) const = default;
  // The same archive for a journal: equal apart from the device number (which may change across
  // reboots) and ctime (a rename into place changes it).
  bool same_archive(const FileIdentity& o) const {
    return ino == o.ino && size == o.size && mtime_ns == o.mtime_ns && sample_hash == o.sample_hash;
  }
  // The bytes a reader indexed are still the file's: the same inode, size, mtime and ctime.
  bool same_content(const FileIdentity& o) const {
    return dev == o.dev && ino == o.ino && size == o.size && mtime_ns == o.mtime_ns && ctime_ns == o.ctime_ns;
  }
  std::string describe() const;
};

}  // namespace nemofs
