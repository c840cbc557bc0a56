#define FUSE_USE_VERSION 314
#include "fs/fuse/fuse_server.h"

#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <malloc.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <system_error>
#include <vector>

#include "formats/core/errors.h"
#include "formats/core/io.h"
#include "fs/fuse/readahead.h"

namespace nemofs {
namespace {

// Set at init for read-only backends when the kernel can skip OPEN/RELEASE entirely (it then
// opens every file as if with keep_cache): two fewer round trips per open of an immutable file.
bool g_no_open = false;

// Read-ahead of the source files behind sequential reads (readahead.h); running from FUSE_INIT to
// destroy, in the serving process. NEMOFS_PREFETCH=0 in the server's environment turns it off
// (for A/B measurements: bench/cold_ab.sh).
Prefetcher g_prefetch;

// The mount point, absolute (set by serve() before the session starts), to find the connection's
// backing device in /proc/self/mountinfo.
std::string g_mountpoint;

// Read-ahead of the kernel's page cache for files of this mount. Linux gives a FUSE connection's
// backing device the default 128 KiB (VM_READAHEAD_PAGES) and takes the smaller of that and
// max_readahead from INIT, so a sequential reader waits for one 128 KiB-1 MiB request at a time;
// with a few MiB the kernel keeps several requests in flight, the worker threads serve them in
// parallel with the reader's copies. Measured (cold 1 GiB safetensors tensor, median of 5,
// bench/RESULTS.md): 128 KiB 0.95 s, 1 MiB 0.65 s, 2 MiB 0.62 s, 4 MiB 0.59 s, 8 MiB 0.68 s,
// 16 MiB 0.93 s (direct 0.55 s).
constexpr unsigned kReadaheadKiB = 4096;

// The largest read request, in pages (op_init says why 252).
constexpr unsigned kMaxReplyPages = 252;

// Raises the read-ahead of this mount's backing device (sysfs, root only: anyone else keeps the
// kernel's 128 KiB, quietly). Runs while INIT is answered: the mount is in mountinfo by then.
void raise_mount_readahead() {
  if (g_mountpoint.empty()) return;
  std::string dev;
  for (const auto& m : io::mounts())
    if (m.fstype == "fuse.nemofs" && m.mountpoint == g_mountpoint) dev = m.dev;  // the last: the stack's top
  if (dev.empty() || dev.find('/') != std::string::npos) return;
  std::string path = "/sys/class/bdi/" + dev + "/read_ahead_kb";
  FILE* ra = std::fopen(path.c_str(), "we");
  if (!ra) return;
  std::fprintf(ra, "%u\n", kReadaheadKiB);
  std::fclose(ra);
}

Backend& B(fuse_req_t req) { return *static_cast<Backend*>(fuse_req_userdata(req)); }

template <typename F>
void guarded(fuse_req_t req, F&& f) {
  try {
    f();
  } catch (const SysError& e) {
    fuse_reply_err(req, e.err());
  } catch (const std::bad_alloc&) {
    fuse_reply_err(req, ENOMEM);
  } catch (...) {
    fuse_reply_err(req, EIO);
  }
}

fuse_entry_param to_param(const Entry& e) {
  fuse_entry_param p{};
  p.ino = e.attr.st_ino;
  p.generation = 1;
  p.attr = e.attr;
  p.attr_timeout = e.attr_timeout;
  p.entry_timeout = e.entry_timeout;
  return p;
}

void apply_open(fuse_file_info* fi, const OpenResult& r) {
  fi->fh = r.fh;
  fi->keep_cache = r.keep_cache;
  fi->direct_io = r.direct_io;
}

void op_init(void* userdata, fuse_conn_info* conn) {
  auto* b = static_cast<Backend*>(userdata);
  if (conn->capable & FUSE_CAP_SPLICE_WRITE) conn->want |= FUSE_CAP_SPLICE_WRITE;
  if (conn->capable & FUSE_CAP_SPLICE_MOVE) conn->want |= FUSE_CAP_SPLICE_MOVE;
  if (conn->capable & FUSE_CAP_ASYNC_READ) conn->want |= FUSE_CAP_ASYNC_READ;
  if (conn->capable & FUSE_CAP_PARALLEL_DIROPS) conn->want |= FUSE_CAP_PARALLEL_DIROPS;
  if (conn->capable & FUSE_CAP_READDIRPLUS) conn->want |= FUSE_CAP_READDIRPLUS;
  if (conn->capable & FUSE_CAP_READDIRPLUS_AUTO) conn->want |= FUSE_CAP_READDIRPLUS_AUTO;
  if (b->writable()) {
    if (conn->capable & FUSE_CAP_ATOMIC_O_TRUNC) conn->want |= FUSE_CAP_ATOMIC_O_TRUNC;
  } else if (b->immutable() && (conn->capable & FUSE_CAP_NO_OPEN_SUPPORT)) {
    g_no_open = true;
  }
  // Requests of 252 pages (1008 KiB): libfuse asks the kernel for max_pages from max_write, and
  // the kernel cuts read-ahead into requests of max_pages. Why not 256: a spliced reply must fit
  // in a pipe, and a pipe grows past /proc/sys/fs/pipe-max-size (1 MiB) only with
  // CAP_SYS_RESOURCE, which a user, and root in many containers (this VM's root included), lacks.
  // libfuse wants 3 pages + 16 bytes of pipe beside the data (fuse_send_data_iov) and copies
  // through memory when that does not fit; our own pipe needs a page more for a span that does
  // not start on a page (reply_spliced). 256 pages fit neither, so every 1 MiB read was copied
  // twice (the cold-read loss of issue 22); 252 fit both.
  conn->max_write = kMaxReplyPages * 4096u;
  conn->max_read = 0;
  conn->max_readahead = kReadaheadKiB * 1024;
  raise_mount_readahead();
  const char* pf = std::getenv("NEMOFS_PREFETCH");
  if (!pf || std::strcmp(pf, "0") != 0) {
    try {
      g_prefetch.start();
    } catch (const std::system_error&) {
      // No thread: the kernel's own read-ahead only.
    }
  }
}

void op_destroy(void* userdata) {
  g_prefetch.stop();  // before the backend closes the descriptors hints name
  try {
    static_cast<Backend*>(userdata)->destroy();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "nemofs: %s\n", e.what());
  }
}

void op_lookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  guarded(req, [&] {
    auto p = to_param(B(req).lookup(parent, name));
    fuse_reply_entry(req, &p);
  });
}

void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t n) {
  try {
    B(req).forget(ino, n);
  } catch (...) {
  }
  fuse_reply_none(req);
}

void op_forget_multi(fuse_req_t req, size_t count, fuse_forget_data* forgets) {
  for (size_t i = 0; i < count; ++i) {
    try {
      B(req).forget(forgets[i].ino, forgets[i].nlookup);
    } catch (...) {
    }
  }
  fuse_reply_none(req);
}

void op_getattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info*) {
  guarded(req, [&] {
    Entry e = B(req).getattr(ino);
    fuse_reply_attr(req, &e.attr, e.attr_timeout);
  });
}

void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set, fuse_file_info* fi) {
  guarded(req, [&] {
    SetAttrRequest r;
    r.set_mode = to_set & FUSE_SET_ATTR_MODE;
    r.mode = attr->st_mode;
    r.set_size = to_set & FUSE_SET_ATTR_SIZE;
    r.size = static_cast<uint64_t>(attr->st_size);
    r.set_uid = to_set & FUSE_SET_ATTR_UID;
    r.uid = attr->st_uid;
    r.set_gid = to_set & FUSE_SET_ATTR_GID;
    r.gid = attr->st_gid;
    // A time is set to the given value, or to now (utimensat's UTIME_NOW).
    auto time = [&](int now_bit, int set_bit, const timespec& given, bool& set, timespec& out) {
      set = to_set & (now_bit | set_bit);
      if (to_set & now_bit) clock_gettime(CLOCK_REALTIME, &out);
      else if (set) out = given;
    };
    time(FUSE_SET_ATTR_MTIME_NOW, FUSE_SET_ATTR_MTIME, attr->st_mtim, r.set_mtime, r.mtime);
    time(FUSE_SET_ATTR_ATIME_NOW, FUSE_SET_ATTR_ATIME, attr->st_atim, r.set_atime, r.atime);
    uint64_t fh = fi ? fi->fh : 0;
    Entry e = B(req).setattr(ino, r, fi ? &fh : nullptr);
    fuse_reply_attr(req, &e.attr, e.attr_timeout);
  });
}

void op_readlink(fuse_req_t req, fuse_ino_t ino) {
  guarded(req, [&] {
    std::string t = B(req).readlink(ino);
    fuse_reply_readlink(req, t.c_str());
  });
}

void op_mknod(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, dev_t rdev) {
  guarded(req, [&] {
    auto p = to_param(B(req).mknod(parent, name, mode, rdev));
    fuse_reply_entry(req, &p);
  });
}

void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode) {
  guarded(req, [&] {
    auto p = to_param(B(req).mkdir(parent, name, mode));
    fuse_reply_entry(req, &p);
  });
}

void op_unlink(fuse_req_t req, fuse_ino_t parent, const char* name) {
  guarded(req, [&] {
    B(req).unlink(parent, name);
    fuse_reply_err(req, 0);
  });
}

void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char* name) {
  guarded(req, [&] {
    B(req).rmdir(parent, name);
    fuse_reply_err(req, 0);
  });
}

void op_symlink(fuse_req_t req, const char* link, fuse_ino_t parent, const char* name) {
  guarded(req, [&] {
    auto p = to_param(B(req).symlink(link, parent, name));
    fuse_reply_entry(req, &p);
  });
}

void op_rename(fuse_req_t req, fuse_ino_t parent, const char* name, fuse_ino_t newparent, const char* newname,
               unsigned flags) {
  guarded(req, [&] {
    B(req).rename(parent, name, newparent, newname, flags);
    fuse_reply_err(req, 0);
  });
}

void op_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char* newname) {
  guarded(req, [&] {
    auto p = to_param(B(req).link(ino, newparent, newname));
    fuse_reply_entry(req, &p);
  });
}

void op_open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  if (g_no_open) {
    fuse_reply_err(req, ENOSYS);
    return;
  }
  guarded(req, [&] {
    OpenResult r = B(req).open(ino, fi->flags);
    apply_open(fi, r);
    // Nothing written through a read-only descriptor: spare close() a FLUSH round trip.
    if ((fi->flags & O_ACCMODE) == O_RDONLY) fi->noflush = 1;
    if (fuse_reply_open(req, fi) == -ENOENT) B(req).release(ino, r.fh);  // interrupted open
  });
}

// ---- Read replies.
//
// libfuse's fuse_reply_data() splices fd buffers straight from the source file, and a splice that
// comes back short (the file was truncated after the backend checked it) becomes a short reply:
// the reader gets fewer bytes and success, and the kernel takes the short read for the end of the
// file. So file segments are first spliced into a pipe of this worker thread (page references, no
// copy), each checked to have arrived whole; then every source file's guard is checked (fstat) now
// that its bytes are taken; only then is the pipe handed to fuse_reply_data as the reply's one
// buffer (libfuse moves it pipe to pipe to /dev/fuse). A short segment or a changed source is
// EIO, never a short or foreign reply.

class ReplyPipe {
 public:
  ~ReplyPipe() { reset(); }
  // Ready to take `slots` pipe buffers (pages) without blocking; false when the pipe cannot be made
  // that large (pipe-max-size for a user without CAP_SYS_RESOURCE): copy instead.
  bool ready(size_t slots) {
    if (r_ < 0) {
      int fds[2];
      if (::pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0) return false;
      r_ = fds[0];
      w_ = fds[1];
      cap_ = static_cast<size_t>(::fcntl(r_, F_GETPIPE_SZ)) / kPage;
    }
    if (slots <= cap_) return true;
    if (slots > too_big_) return false;
    int got = ::fcntl(r_, F_SETPIPE_SZ, static_cast<int>(slots * kPage));
    if (got < 0) {
      too_big_ = slots - 1;  // do not ask again for this much
      return false;
    }
    cap_ = static_cast<size_t>(got) / kPage;
    return slots <= cap_;
  }
  int read_end() const { return r_; }
  int write_end() const { return w_; }
  // Drops whatever the pipe still holds (an aborted reply): a fresh pipe next time.
  void reset() {
    if (r_ >= 0) ::close(r_);
    if (w_ >= 0) ::close(w_);
    r_ = w_ = -1;
    cap_ = 0;
  }

  static constexpr size_t kPage = 4096;

 private:
  int r_ = -1, w_ = -1;
  size_t cap_ = 0;
  size_t too_big_ = SIZE_MAX;
};

thread_local ReplyPipe t_pipe;

[[noreturn]] void short_segment(const ReadSegment& s, size_t got) {
  if (s.guard) s.guard->fail_short();
  throw SysError(EIO, "read of " + std::to_string(s.len) + " bytes at " + std::to_string(s.pos) + " came back with " +
                          std::to_string(got));
}

// Splices `s` whole into the pipe, or throws. False: the pipe filled up (its size was guessed
// wrong): the caller copies instead.
bool splice_segment(const ReadSegment& s, int pipe_w) {
  loff_t pos = static_cast<loff_t>(s.pos);
  size_t done = 0;
  while (done < s.len) {
    ssize_t n = ::splice(s.fd, &pos, pipe_w, nullptr, s.len - done, SPLICE_F_NONBLOCK);
    if (n > 0) {
      done += static_cast<size_t>(n);
    } else if (n == 0) {
      short_segment(s, done);
    } else if (errno == EINTR) {
      continue;
    } else if (errno == EAGAIN) {
      return false;
    } else {
      throw_sys(errno, "splice");
    }
  }
  return true;
}

bool write_memory(const char* p, size_t len, int pipe_w) {
  while (len) {
    ssize_t n = ::write(pipe_w, p, len);
    if (n > 0) {
      p += n;
      len -= static_cast<size_t>(n);
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && errno == EAGAIN) {
      return false;
    } else {
      throw_sys(n < 0 ? errno : EIO, "write to pipe");
    }
  }
  return true;
}

// The reply through the thread's pipe; false when it cannot be used (nothing was sent).
bool reply_spliced(fuse_req_t req, const ReadResult& r, size_t total) {
  // Pipe buffers needed: a file span takes one per page it touches, memory one per page (+1 for
  // the partial page where it starts).
  size_t slots = 0;
  for (const auto& s : r.segments)
    slots += s.fd >= 0 ? (s.pos % ReplyPipe::kPage + s.len + ReplyPipe::kPage - 1) / ReplyPipe::kPage
                       : s.len / ReplyPipe::kPage + 2;
  if (!t_pipe.ready(slots)) return false;
  struct Aborted {
    bool armed = true;
    ~Aborted() {
      if (armed) t_pipe.reset();
    }
  } on_throw;
  int w = t_pipe.write_end();
  for (const auto& s : r.segments) {
    bool ok = s.fd >= 0 ? splice_segment(s, w) : write_memory(s.bytes(r.memory), s.len, w);
    if (!ok) {
      t_pipe.reset();
      on_throw.armed = false;
      return false;
    }
  }
  r.verify_guards();
  on_throw.armed = false;
  fuse_bufvec bv = FUSE_BUFVEC_INIT(total);
  bv.buf[0].flags = FUSE_BUF_IS_FD;
  bv.buf[0].fd = t_pipe.read_end();
  // fuse_reply_data takes the whole pipe (splicing it on, or reading it when it falls back to a
  // copy) whenever it returns 0; an error may leave bytes in it, which must not lead the next reply.
  if (fuse_reply_data(req, &bv, FUSE_BUF_SPLICE_MOVE) != 0) t_pipe.reset();
  return true;
}

// The reply copied through memory: every file segment pread whole, then the guards checked.
void reply_copied(fuse_req_t req, const ReadResult& r, size_t total) {
  std::unique_ptr<char[]> buf(new char[total]);
  size_t at = 0;
  for (const auto& s : r.segments) {
    if (s.fd >= 0) {
      size_t got = io::pread_full(s.fd, buf.get() + at, s.len, s.pos);
      if (got != s.len) short_segment(s, got);
    } else {
      std::memcpy(buf.get() + at, s.bytes(r.memory), s.len);
    }
    at += s.len;
  }
  r.verify_guards();
  fuse_reply_buf(req, buf.get(), total);
}

void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) {
  guarded(req, [&] {
    ReadResult r;
    B(req).read(ino, fi->fh, static_cast<uint64_t>(off), size, r);
    if (r.segments.empty()) {
      fuse_reply_buf(req, nullptr, 0);
      return;
    }
    if (r.segments.size() == 1 && r.segments[0].fd < 0) {
      fuse_reply_buf(req, r.segments[0].bytes(r.memory), r.segments[0].len);
      return;
    }
    // Bytes in memory only (a remote object's read-ahead parts, a span across two of them): one
    // writev from where they are, not a copy into a pipe first.
    if (std::none_of(r.segments.begin(), r.segments.end(), [](const ReadSegment& s) { return s.fd >= 0; })) {
      std::vector<iovec> iov;
      iov.reserve(r.segments.size());
      for (const auto& s : r.segments) iov.push_back(iovec{const_cast<char*>(s.bytes(r.memory)), s.len});
      fuse_reply_iov(req, iov.data(), static_cast<int>(iov.size()));
      return;
    }
    // Before taking the bytes: the read-ahead hint then runs while this reply waits for its own.
    // Not for a held segment (a remote object's cache block): the remote source reads ahead by
    // itself, its blocks were just written (in the page cache), and the descriptor closes soon.
    if (g_prefetch.running())
      for (const auto& s : r.segments)
        if (s.fd >= 0 && !s.hold) g_prefetch.note(s.fd, s.pos, s.len);
    size_t total = r.total();
    // Under two pages libfuse copies instead of splicing anyway (fuse_send_data_iov): one pread
    // here costs fewer system calls than a splice into the pipe and a read back out of it.
    if (total < 2 * ReplyPipe::kPage || !reply_spliced(req, r, total)) reply_copied(req, r, total);
  });
}

void op_write(fuse_req_t req, fuse_ino_t ino, const char* buf, size_t size, off_t off, fuse_file_info* fi) {
  guarded(req, [&] {
    size_t n = B(req).write(ino, fi->fh, static_cast<uint64_t>(off), buf, size);
    fuse_reply_write(req, n);
  });
}

void op_flush(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  guarded(req, [&] {
    B(req).flush(ino, fi->fh);
    fuse_reply_err(req, 0);
  });
}

void op_release(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  guarded(req, [&] {
    B(req).release(ino, fi->fh);
    fuse_reply_err(req, 0);
  });
}

void op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, fuse_file_info* fi) {
  guarded(req, [&] {
    B(req).fsync(ino, fi->fh, datasync != 0);
    fuse_reply_err(req, 0);
  });
}

void do_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, bool plus) {
  guarded(req, [&] {
    std::unique_ptr<char[]> buf(new char[size]);
    size_t used = 0;
    Backend& b = B(req);
    b.readdir(ino, static_cast<uint64_t>(off), [&](const DirEntryOut& e, uint64_t next) {
      size_t need;
      if (plus) {
        fuse_entry_param p{};
        bool dots = e.name == "." || e.name == "..";
        if (!dots) {
          p.ino = e.attr.st_ino;
          p.generation = 1;
          p.attr = e.attr;
          p.attr_timeout = 86400.0;
          p.entry_timeout = 86400.0;
          if (b.writable()) p.attr_timeout = p.entry_timeout = 1.0;  // as WritableBackend::entry_of
          if (e.attr_timeout >= 0) p.attr_timeout = e.attr_timeout;
          if (e.entry_timeout >= 0) p.entry_timeout = e.entry_timeout;
        } else {
          p.attr = e.attr;  // ino 0 entry: the kernel does not instantiate it
        }
        need = fuse_add_direntry_plus(req, buf.get() + used, size - used, e.name.c_str(), &p,
                                      static_cast<off_t>(next));
        if (need > size - used) return false;
        if (!dots) b.lookup_ref(e.attr.st_ino);
      } else {
        need = fuse_add_direntry(req, buf.get() + used, size - used, e.name.c_str(), &e.attr, static_cast<off_t>(next));
        if (need > size - used) return false;
      }
      used += need;
      return true;
    });
    fuse_reply_buf(req, buf.get(), used);
  });
}

void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info*) {
  do_readdir(req, ino, size, off, false);
}
void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info*) {
  do_readdir(req, ino, size, off, true);
}

void op_statfs(fuse_req_t req, fuse_ino_t) {
  guarded(req, [&] {
    struct statvfs s = B(req).statfs();
    fuse_reply_statfs(req, &s);
  });
}

void op_setxattr(fuse_req_t req, fuse_ino_t ino, const char* name, const char* value, size_t size, int flags) {
  guarded(req, [&] {
    B(req).setxattr(ino, name, std::string_view(value, size), flags);
    fuse_reply_err(req, 0);
  });
}

void op_create(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, fuse_file_info* fi) {
  guarded(req, [&] {
    OpenResult r;
    Entry e = B(req).create(parent, name, mode, fi->flags, r);
    apply_open(fi, r);
    auto p = to_param(e);
    if (fuse_reply_create(req, &p, fi) == -ENOENT) B(req).release(p.ino, r.fh);
  });
}

fuse_lowlevel_ops make_ops(const Backend& backend) {
  fuse_lowlevel_ops ops{};
  ops.init = op_init;
  ops.destroy = op_destroy;
  ops.lookup = op_lookup;
  ops.forget = op_forget;
  ops.forget_multi = op_forget_multi;
  ops.getattr = op_getattr;
  ops.setattr = op_setattr;
  ops.readlink = op_readlink;
  ops.mknod = op_mknod;
  ops.mkdir = op_mkdir;
  ops.unlink = op_unlink;
  ops.rmdir = op_rmdir;
  ops.symlink = op_symlink;
  ops.rename = op_rename;
  ops.link = op_link;
  ops.open = op_open;
  ops.read = op_read;
  ops.write = op_write;
  ops.flush = op_flush;
  ops.release = op_release;
  ops.fsync = op_fsync;
  ops.readdir = op_readdir;
  ops.readdirplus = op_readdirplus;
  ops.statfs = op_statfs;
  // Only setxattr (a control call) is ever registered: an unregistered getxattr answers ENOSYS
  // once and the kernel never asks again, while a registered one costs `ls -l` two uncacheable
  // round trips per file (security.selinux, posix ACLs).
  if (backend.has_control_setxattr()) ops.setxattr = op_setxattr;
  ops.create = op_create;
  return ops;
}

int run_loop(fuse_session* se, const ServerOptions& opts) {
  // Opening the checkpoint (a gzip first pass, a large parse) frees what it built into the heap,
  // where glibc keeps it; the server would carry it for its whole life (forked, it starts with the
  // opener's resident pages).
  ::malloc_trim(0);
  if (fuse_set_signal_handlers(se) != 0) return kExitMountFailed;
  int rc;
  if (opts.debug || opts.max_threads <= 1) {
    rc = fuse_session_loop(se);
  } else {
    fuse_loop_config* cfg = fuse_loop_cfg_create();
    fuse_loop_cfg_set_clone_fd(cfg, 1);
    fuse_loop_cfg_set_max_threads(cfg, opts.max_threads);
    // Keep every worker once started: with 2 idle threads allowed, the async readahead of one
    // sequential reader kept spawning and retiring workers (1,475 thread starts, each opening and
    // cloning /dev/fuse, during one 2 GiB read); now 3 starts.
    fuse_loop_cfg_set_idle_threads(cfg, opts.max_threads);
    rc = fuse_session_loop_mt(se, cfg);
    fuse_loop_cfg_destroy(cfg);
  }
  fuse_remove_signal_handlers(se);
  return rc == 0 ? kExitOk : kExitMountFailed;
}

// Waits until the mountpoint answers: stat() blocks until the server has handled FUSE_INIT and
// the root's getattr; if the server died, the connection is gone and stat fails.
bool wait_until_answering(const std::string& mountpoint, pid_t child, std::string& why) {
  struct stat st {};
  if (::stat(mountpoint.c_str(), &st) != 0) {
    why = std::strerror(errno);
    return false;
  }
  int status = 0;
  if (child > 0 && ::waitpid(child, &status, WNOHANG) == child) {
    why = "the server process exited";
    return false;
  }
  return true;
}

}  // namespace

int serve(Backend& backend, const ServerOptions& opts) {
  {
    char* abs = ::realpath(opts.mountpoint.c_str(), nullptr);
    g_mountpoint = abs ? abs : opts.mountpoint;
    std::free(abs);
  }
  std::vector<std::string> argv_s{"nemofs"};
  std::string o = "fsname=" + opts.fsname + ",subtype=nemofs";
  if (opts.read_only) o += ",ro";
  for (const auto& x : opts.fuse_options) o += "," + x;
  argv_s.push_back("-o");
  argv_s.push_back(o);
  if (opts.debug) argv_s.push_back("-d");
  std::vector<char*> argv;
  for (auto& s : argv_s) argv.push_back(s.data());
  fuse_args args = FUSE_ARGS_INIT(static_cast<int>(argv.size()), argv.data());
  fuse_lowlevel_ops ops = make_ops(backend);
  if (!backend.writable()) {
    // Nothing to flush on an immutable tree: ENOSYS turns FLUSH off for the connection (noflush
    // in the open reply cannot do it when no-open support leaves no open reply).
    ops.flush = nullptr;
  }
  fuse_session* se = fuse_session_new(&args, &ops, sizeof ops, &backend);
  fuse_opt_free_args(&args);
  if (!se) {
    std::fprintf(stderr, "nemofs: %s: invalid FUSE options '%s'\n", opts.mountpoint.c_str(), o.c_str());
    return kExitUsage;
  }
  if (fuse_session_mount(se, opts.mountpoint.c_str()) != 0) {
    std::fprintf(stderr, "nemofs: %s: cannot mount (is it an existing empty folder, and /dev/fuse available?)\n",
                 opts.mountpoint.c_str());
    fuse_session_destroy(se);
    return kExitMountFailed;
  }

  if (opts.foreground) {
    if (opts.on_serving) opts.on_serving();
    if (opts.on_ready) opts.on_ready(getpid());
    int rc = run_loop(se, opts);
    fuse_session_unmount(se);
    fuse_session_destroy(se);
    if (opts.on_finished) opts.on_finished();
    return rc;
  }

  std::fflush(nullptr);
  pid_t pid = ::fork();
  if (pid < 0) {
    std::fprintf(stderr, "nemofs: cannot fork: %s\n", std::strerror(errno));
    fuse_session_unmount(se);
    fuse_session_destroy(se);
    return kExitMountFailed;
  }
  if (pid == 0) {
    ::setsid();
    if (::chdir("/") != 0) {
    }
    UniqueFd devnull(::open("/dev/null", O_RDWR | O_CLOEXEC));
    if (devnull) {
      for (int std_fd : {0, 1, 2}) ::dup2(devnull.get(), std_fd);
      if (devnull.get() <= 2) devnull.release();  // it is one of the three now
    }
    if (opts.on_serving) opts.on_serving();
    int rc = run_loop(se, opts);
    fuse_session_unmount(se);
    fuse_session_destroy(se);
    if (opts.on_finished) opts.on_finished();
    std::_Exit(rc);
  }
  // Parent: drop our copy of the connection (so a dead server makes stat fail instead of hang)
  // and free the session; this does not unmount (only fuse_session_unmount does).
  fuse_session_destroy(se);
  std::string why;
  if (!wait_until_answering(opts.mountpoint, pid, why)) {
    std::fprintf(stderr, "nemofs: %s: the mount did not answer: %s\n", opts.mountpoint.c_str(), why.c_str());
    ::kill(pid, SIGTERM);
    ::umount2(opts.mountpoint.c_str(), MNT_DETACH);  // root; otherwise fusermount3 below
    pid_t u = ::fork();
    if (u == 0) {
      int devnull = ::open("/dev/null", O_RDWR);
      if (devnull >= 0) { ::dup2(devnull, 1); ::dup2(devnull, 2); }
      ::execlp("fusermount3", "fusermount3", "-u", "-z", opts.mountpoint.c_str(), (char*)nullptr);
      std::_Exit(127);
    }
    if (u > 0) io::wait_child(u);
    return kExitMountFailed;
  }
  if (opts.on_ready) opts.on_ready(pid);
  // The parent's half of the session (libfuse keeps the mountpoint string until unmount) belongs
  // to the server now: leave without running exit-time leak checks over it.
  std::fflush(nullptr);
  std::_Exit(kExitOk);
}

}  // namespace nemofs
