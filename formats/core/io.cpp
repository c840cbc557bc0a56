#include "formats/core/io.h"

#include <fcntl.h>
#include <limits.h>
#include <linux/fiemap.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <sstream>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <memory>
#include <optional>
#include <random>
#include <vector>

#include "formats/core/errors.h"
#include "formats/core/hash.h"

namespace nemofs {

void UniqueFd::reset(int fd) {
  // close(2) is not retried on EINTR: on Linux the descriptor is gone whatever it returns.
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

namespace io {
namespace {

std::atomic<FaultHook> g_hook{nullptr};

// Runs before each step that changes a file: a test hook may make it fail with an errno (or end
// the process). 0: the step runs.
int injected(Step s, const std::string& what) {
  FaultHook h = g_hook.load(std::memory_order_relaxed);
  return h ? h(s, what.c_str()) : 0;
}

void step(Step s, const std::string& what) {
  if (int err = injected(s, what)) throw_sys(err, what);
}

template <typename F>
auto retry(F&& f) {
  for (;;) {
    auto r = f();
    if (r >= 0 || errno != EINTR) return r;
  }
}

}  // namespace

const char* step_name(Step s) {
  switch (s) {
    case Step::Create: return "create";
    case Step::Write: return "write";
    case Step::Copy: return "copy";
    case Step::Truncate: return "truncate";
    case Step::Fsync: return "fsync";
    case Step::Rename: return "rename";
    case Step::Unlink: return "unlink";
    case Step::DirFsync: return "directory fsync";
    case Step::Mkdir: return "mkdir";
  }
  return "?";
}

void set_fault_hook(FaultHook hook) { g_hook.store(hook); }

UniqueFd open(const std::string& path, int flags, mode_t mode) {
  if (flags & O_CREAT) step(Step::Create, path);
  int fd = retry([&] { return ::open(path.c_str(), flags | O_CLOEXEC, mode); });
  if (fd < 0) throw_sys(errno, path + ": open");
  return UniqueFd(fd);
}

std::optional<UniqueFd> open_if_exists(const std::string& path, int flags, mode_t mode) {
  if (flags & O_CREAT) step(Step::Create, path);
  int fd = retry([&] { return ::open(path.c_str(), flags | O_CLOEXEC, mode); });
  if (fd < 0) {
    if (errno == ENOENT) return std::nullopt;
    throw_sys(errno, path + ": open");
  }
  return UniqueFd(fd);
}

UniqueFd create_temp(const std::string& prefix, std::string& path) {
  step(Step::Create, prefix);
  std::vector<char> name(prefix.begin(), prefix.end());
  for (int i = 0; i < 6; ++i) name.push_back('X');
  name.push_back('\0');
  int fd = ::mkostemp(name.data(), O_CLOEXEC);
  if (fd < 0) throw_sys(errno, "cannot create a file in " + dir_of(prefix));
  path = name.data();
  return UniqueFd(fd);
}

size_t pread_full(int fd, void* buf, size_t len, uint64_t off, const std::string& what) {
  auto* p = static_cast<char*>(buf);
  size_t done = 0;
  while (done < len) {
    ssize_t n = retry([&] { return ::pread(fd, p + done, len - done, static_cast<off_t>(off + done)); });
    if (n < 0) throw_sys(errno, what);
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  return done;
}

size_t preadv_full(int fd, iovec* iov, size_t count, uint64_t off, const std::string& what) {
  size_t done = 0, first = 0;
  while (first < count) {
    const int cnt = static_cast<int>(std::min<size_t>(count - first, IOV_MAX));
    ssize_t n = retry([&] { return ::preadv(fd, iov + first, cnt, static_cast<off_t>(off + done)); });
    if (n < 0) throw_sys(errno, what);
    if (n == 0) break;
    done += static_cast<size_t>(n);
    auto left = static_cast<size_t>(n);
    while (first < count && left >= iov[first].iov_len) left -= iov[first++].iov_len;
    if (left > 0) {
      iov[first].iov_base = static_cast<char*>(iov[first].iov_base) + left;
      iov[first].iov_len -= left;
    }
  }
  return done;
}

void pread_exact(int fd, void* buf, size_t len, uint64_t off, const std::string& what) {
  if (pread_full(fd, buf, len, off, what) != len)
    throw SysError(EIO, what + ": the file shrank (read past its end)");
}

std::optional<std::string> read_file(const std::string& path) {
  auto fd = open_if_exists(path, O_RDONLY);
  if (!fd) return std::nullopt;
  std::string body;
  char buf[65536];
  for (;;) {
    ssize_t n = retry([&] { return ::read(fd->get(), buf, sizeof buf); });
    if (n < 0) throw_sys(errno, path + ": read");
    if (n == 0) break;
    body.append(buf, static_cast<size_t>(n));
  }
  return body;
}

namespace {

// /proc/self/mountinfo escapes space, tab, newline and backslash as \ooo.
std::string unescape_mountinfo(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size()) {
      int v = 0;
      bool ok = true;
      for (int k = 1; k <= 3; ++k) {
        char c = s[i + k];
        if (c < '0' || c > '7') ok = false;
        else v = v * 8 + (c - '0');
      }
      if (ok) {
        out += static_cast<char>(v);
        i += 3;
        continue;
      }
    }
    out += s[i];
  }
  return out;
}

}  // namespace

std::vector<MountEntry> mounts() {
  std::vector<MountEntry> out;
  std::ifstream f("/proc/self/mountinfo");
  std::string line;
  while (std::getline(f, line)) {
    // id parent major:minor root mountpoint options [optional...] - fstype source superopts
    std::istringstream ss(line);
    std::string id, parent, dev, root, mp;
    ss >> id >> parent >> dev >> root >> mp;
    std::string tok;
    while (ss >> tok && tok != "-") {
    }
    std::string fstype, source;
    ss >> fstype >> source;
    out.push_back(MountEntry{dev, unescape_mountinfo(mp), fstype, unescape_mountinfo(source)});
  }
  return out;
}

void pwrite_full(int fd, const void* buf, size_t len, uint64_t off, const std::string& what) {
  step(Step::Write, what);
  const auto* p = static_cast<const char*>(buf);
  while (len) {
    ssize_t n = retry([&] { return ::pwrite(fd, p, len, static_cast<off_t>(off)); });
    if (n < 0) throw_sys(errno, what);
    if (n == 0) throw_sys(ENOSPC, what);
    p += n;
    len -= static_cast<size_t>(n);
    off += static_cast<uint64_t>(n);
  }
}

namespace {

bool unsupported(int e) { return e == EINVAL || e == ENOSYS || e == EOPNOTSUPP || e == EXDEV; }

// A pipe for splicing, made as large as the system allows up to 1 MiB (a larger one than the
// system's limit, or the user's pipe budget, is refused: the default is kept). Its capacity, or 0
// when no pipe could be made.
int copy_pipe(UniqueFd& rd, UniqueFd& wr) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return 0;
  rd = UniqueFd(fds[0]);
  wr = UniqueFd(fds[1]);
  constexpr int kPipe = 1 << 20;
  int cap = ::fcntl(wr.get(), F_SETPIPE_SZ, kPipe);
  if (cap <= 0) cap = ::fcntl(wr.get(), F_GETPIPE_SZ);
  return cap > 0 ? cap : 64 << 10;
}

}  // namespace

// Why not pwrite: on this project's VMs (free page reporting) pwrite's copy from a user buffer
// into new page-cache pages ran 1.6-2.0 s per GiB against 0.43-0.49 s for the same bytes handed
// over with vmsplice and spliced into the file (4 MiB buffers at an unaligned offset, alternated,
// 4 rounds each; bench/export_bench.sh's DCP part showed the same gap). vmsplice without
// SPLICE_F_GIFT only references the buffer's pages; each piece is spliced on into `fd` (the
// kernel copies it then) before the next, so the buffer is free again when this returns.
void pwrite_spliced(int fd, const void* buf, size_t len, uint64_t off, const std::string& what) {
  step(Step::Write, what);
  UniqueFd rd, wr;
  const int cap = len >= (64u << 10) ? copy_pipe(rd, wr) : 0;
  const auto* p = static_cast<const char*>(buf);
  loff_t o = static_cast<loff_t>(off);
  while (cap > 0 && len) {
    iovec iov{const_cast<char*>(p), std::min(len, static_cast<size_t>(cap))};
    ssize_t n = retry([&] { return ::vmsplice(wr.get(), &iov, 1, 0); });
    if (n <= 0) break;  // the pipe will not take it: the rest by pwrite
    size_t left = static_cast<size_t>(n);
    while (left) {
      ssize_t m = retry([&] { return ::splice(rd.get(), nullptr, fd, &o, left, 0); });
      if (m > 0) {
        left -= static_cast<size_t>(m);
        continue;
      }
      // The file cannot take spliced pages and none of this piece went in: write it instead.
      if (m < 0 && left == static_cast<size_t>(n) && unsupported(errno)) {
        pwrite_full(fd, p, len, static_cast<uint64_t>(o), what);
        return;
      }
      throw_sys(m == 0 ? ENOSPC : errno, what);
    }
    p += n;
    len -= static_cast<size_t>(n);
  }
  if (len) pwrite_full(fd, p, len, static_cast<uint64_t>(o), what);
}

void write_full(int fd, const void* buf, size_t len, const std::string& what) {
  step(Step::Write, what);
  const auto* p = static_cast<const char*>(buf);
  while (len) {
    ssize_t n = retry([&] { return ::write(fd, p, len); });
    if (n < 0) throw_sys(errno, what);
    if (n == 0) throw_sys(ENOSPC, what);
    p += n;
    len -= static_cast<size_t>(n);
  }
}

void ftruncate(int fd, uint64_t size, const std::string& what) {
  step(Step::Truncate, what);
  if (retry([&] { return ::ftruncate(fd, static_cast<off_t>(size)); }) != 0) throw_sys(errno, what);
}

void fsync(int fd, const std::string& what) {
  step(Step::Fsync, what);
  if (::fsync(fd) != 0) throw_sys(errno, what);
}

void fdatasync(int fd, const std::string& what) {
  step(Step::Fsync, what);
  if (::fdatasync(fd) != 0) throw_sys(errno, what);
}

void fsync_dir(const std::string& dir) {
  step(Step::DirFsync, dir);
  UniqueFd fd = open(dir, O_RDONLY | O_DIRECTORY);
  if (::fsync(fd.get()) != 0) throw_sys(errno, dir + ": fsync");
}

void rename(const std::string& from, const std::string& to) {
  step(Step::Rename, to);
  if (::rename(from.c_str(), to.c_str()) != 0) throw_sys(errno, "rename to " + to);
}

void unlink(const std::string& path, bool strict) {
  // An injected failure is treated as a real one: ignored unless strict.
  int err = injected(Step::Unlink, path);
  if (!err && ::unlink(path.c_str()) != 0 && errno != ENOENT) err = errno;
  if (err && strict) throw_sys(err, path + ": unlink");
}

bool mkdir(const std::string& path, mode_t mode) {
  step(Step::Mkdir, path);
  if (::mkdir(path.c_str(), mode) == 0) return true;
  if (errno != EEXIST) throw_sys(errno, "cannot create the folder " + path);
  return false;
}

uint64_t shared_extent_bytes(int fd, uint64_t size) {
  constexpr unsigned kExtents = 256;
  std::vector<char> buf(sizeof(struct fiemap) + kExtents * sizeof(struct fiemap_extent));
  auto* fm = reinterpret_cast<struct fiemap*>(buf.data());
  uint64_t shared = 0, start = 0;
  while (start < size) {
    std::memset(buf.data(), 0, buf.size());
    fm->fm_start = start;
    fm->fm_length = size - start;
    fm->fm_extent_count = kExtents;
    if (::ioctl(fd, FS_IOC_FIEMAP, fm) != 0 || fm->fm_mapped_extents == 0) break;
    bool last = false;
    for (unsigned i = 0; i < fm->fm_mapped_extents; ++i) {
      const struct fiemap_extent& e = fm->fm_extents[i];
      const uint64_t from = std::max<uint64_t>(e.fe_logical, start);
      const uint64_t to = std::min<uint64_t>(e.fe_logical + e.fe_length, size);
      if ((e.fe_flags & FIEMAP_EXTENT_SHARED) && to > from) shared += to - from;
      start = std::max<uint64_t>(start, e.fe_logical + e.fe_length);
      last = e.fe_flags & FIEMAP_EXTENT_LAST;
    }
    if (last) break;
  }
  return shared;
}

namespace {

// Source and destination offsets that differ modulo the page size (nothing can share such blocks):
// copy_file_range then copies through the kernel's internal 64 KiB pipe, and a mapping of the
// source written out with pwrite pays a page fault and a 4 KiB TLB entry per source page (in a VM,
// nested page walks). Splicing through a pipe of our own, made as large as the system allows
// (1 MiB by default), moves page references into the pipe and copies each byte once into the
// destination, in writes of up to 1 MiB (fewer, larger page-cache folios). Measured on ext4, 1 GiB
// shifted copy, CPU seconds, interleaved, busy 2-core VM: 0.44-0.50 through a 1 MiB pipe, 0.63-0.68
// copy_file_range, 1.01-1.08 a mapping in 2 MiB pwrites; page-congruent copy_file_range (what cp
// does) 0.50-0.52. Nothing is mapped, so the copier's RSS does not grow. Returns the bytes copied
// (fewer than `len` when `in` ends first); nullopt when the files cannot be spliced and nothing was
// written (the caller copies its own way).
std::optional<uint64_t> copy_spliced(int in, uint64_t in_off, int out, uint64_t out_off, uint64_t len,
                                     const std::string& what) {
  UniqueFd rd, wr;
  const int cap = copy_pipe(rd, wr);
  if (cap <= 0) return std::nullopt;
  loff_t i = static_cast<loff_t>(in_off), o = static_cast<loff_t>(out_off);
  uint64_t done = 0;
  while (done < len) {
    const size_t want = static_cast<size_t>(std::min<uint64_t>(len - done, static_cast<uint64_t>(cap)));
    ssize_t n = retry([&] { return ::splice(in, &i, wr.get(), nullptr, want, SPLICE_F_MOVE); });
    if (n == 0) break;  // the source ended
    if (n < 0) {
      if (done == 0 && unsupported(errno)) return std::nullopt;
      throw_sys(errno, what);
    }
    for (size_t left = static_cast<size_t>(n); left;) {
      ssize_t m = retry([&] { return ::splice(rd.get(), nullptr, out, &o, left, SPLICE_F_MOVE); });
      if (m > 0) {
        left -= static_cast<size_t>(m);
        continue;
      }
      // Nothing written yet: the destination cannot take spliced pages; the caller starts over.
      if (m < 0 && done == 0 && left == static_cast<size_t>(n) && unsupported(errno)) return std::nullopt;
      // A page in the pipe was cut from the source (truncated meanwhile): report what was copied;
      // the caller goes on from there and finds the source's new end.
      if (m < 0 && errno == ENODATA) return done;
      throw_sys(m == 0 ? ENOSPC : errno, what);
    }
    done += static_cast<uint64_t>(n);
  }
  return done;
}

}  // namespace

uint64_t copy_range(int in, uint64_t in_off, int out, uint64_t out_off, uint64_t len, const std::string& what) {
  step(Step::Copy, what);
  uint64_t done = 0;
  bool kernel = true;
  static const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  if (((in_off ^ out_off) & (page - 1)) != 0 && len >= (1u << 20)) {
    if (auto n = copy_spliced(in, in_off, out, out_off, len, what)) {
      if (*n == len) return len;
      // Short: the source ended (the loop below finds its end at once).
      done = *n;
    }
  }
  // Allocated once per thread, on the first copy the kernel cannot do: a commit copies piece by
  // piece, and a fresh buffer per piece cost more than the copy on small pieces.
  thread_local std::unique_ptr<char[]> buf;
  constexpr size_t kPiece = 4 << 20;
  while (done < len) {
    if (kernel) {
      loff_t i = static_cast<loff_t>(in_off + done), o = static_cast<loff_t>(out_off + done);
      size_t want = static_cast<size_t>(std::min<uint64_t>(len - done, 1ull << 30));
      ssize_t n = retry([&] { return ::copy_file_range(in, &i, out, &o, want, 0); });
      if (n > 0) {
        done += static_cast<uint64_t>(n);
        continue;
      }
      if (n == 0) break;  // the source ended
      // Filesystems (or pairs of them) without copy_file_range: copy through a buffer instead.
      if (errno != EXDEV && errno != EINVAL && errno != ENOSYS && errno != EOPNOTSUPP) throw_sys(errno, what);
      kernel = false;
    }
    if (!buf) buf.reset(new char[kPiece]);
    size_t want = static_cast<size_t>(std::min<uint64_t>(len - done, kPiece));
    size_t got = pread_full(in, buf.get(), want, in_off + done, what);
    if (got == 0) break;
    const char* p = buf.get();
    uint64_t at = out_off + done;
    for (size_t left = got; left;) {
      ssize_t n = retry([&] { return ::pwrite(out, p, left, static_cast<off_t>(at)); });
      if (n < 0) throw_sys(errno, what);
      if (n == 0) throw_sys(ENOSPC, what);
      p += n;
      at += static_cast<uint64_t>(n);
      left -= static_cast<size_t>(n);
    }
    done += got;
    if (got < want) break;
  }
  return done;
}

void replace_file(const std::string& path, const std::string& body, mode_t mode, bool durable) {
  std::string tmp;
  UniqueFd fd = create_temp(path + ".tmp.", tmp);
  try {
    if (::fchmod(fd.get(), mode) != 0) throw_sys(errno, tmp + ": chmod");
    write_full(fd.get(), body.data(), body.size(), tmp);
    if (durable) fsync(fd.get(), tmp + ": fsync");
    fd.reset();
    rename(tmp, path);
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
  if (durable) fsync_dir(dir_of(path));
}

int wait_child(pid_t pid) {
  int status = 0;
  if (retry([&] { return ::waitpid(pid, &status, 0); }) < 0) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::string dir_of(const std::string& path) {
  auto s = path.rfind('/');
  if (s == std::string::npos) return ".";
  if (s == 0) return "/";
  return path.substr(0, s);
}

std::string base_of(const std::string& path) {
  auto s = path.rfind('/');
  return s == std::string::npos ? path : path.substr(s + 1);
}

}  // namespace io

namespace {
int64_t ns_of(const timespec& ts) { return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec; }
}  // namespace

FileIdentity FileIdentity::of_stat(const struct stat& st) {
  FileIdentity id;
  id.dev = static_cast<uint64_t>(st.st_dev);
  id.ino = static_cast<uint64_t>(st.st_ino);
  id.size = static_cast<uint64_t>(st.st_size);
  id.mtime_ns = ns_of(st.st_mtim);
  id.ctime_ns = ns_of(st.st_ctim);
  return id;
}

FileIdentity FileIdentity::of_fd(int fd, bool sample) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) throw_sys(errno, "fstat");
  FileIdentity id = of_stat(st);
  if (sample) {
    constexpr size_t kSample = 64 * 1024;
    std::vector<unsigned char> buf(kSample);
    uint64_t h = kFnvOffset;
    for (uint64_t at : {uint64_t{0}, id.size > kSample ? id.size - kSample : uint64_t{0}}) {
      size_t n = io::pread_full(fd, buf.data(), kSample, at);
      h = fnv1a(h, buf.data(), n);
    }
    id.sample_hash = h;
  }
  return id;
}

std::string FileIdentity::describe() const {
  return "size " + std::to_string(size) + ", inode " + std::to_string(ino) + ", mtime " +
         std::to_string(mtime_ns / 1000000000);
}

}  // namespace nemofs
