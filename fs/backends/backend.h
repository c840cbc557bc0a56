// The interface between the FUSE edge (fuse_server.cpp, the only code that includes
// <fuse_lowlevel.h>) and what a mount serves. TreeBackend serves the frozen, read-only tree of any
// checkpoint; the writable .nemo backend layers an overlay on top. Backends speak inode numbers
// (FUSE_ROOT_ID = 1) and report failures by throwing SysError(errno); the FUSE edge turns every
// exception into exactly one error reply.
#pragma once

#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "formats/core/errors.h"
#include "formats/core/source_guard.h"
#include "fs/edit/ino.h"

namespace nemofs {


struct Entry {
  struct stat attr {};
  double entry_timeout = 0;  // seconds the kernel may cache the name -> inode binding
  double attr_timeout = 0;   // seconds the kernel may cache attr
};

struct OpenResult {
  uint64_t fh = 0;
  bool keep_cache = false;  // immutable content: keep the page cache across opens
  bool direct_io = false;
};

// The answer to a read: a list of segments, each either a span of a real file (spliced by the
// kernel, never copied through user space) or bytes in memory. Every file segment must be sent
// whole: whoever sends it takes its bytes (a splice into a pipe, a pread), then checks its guard
// (verify_guards), and answers EIO for a segment that came back short; never a short reply.
struct ReadSegment {
  int fd = -1;        // >= 0: file segment
  uint64_t pos = 0;   // offset in fd
  size_t len = 0;
  size_t mem_off = 0; // < 0 fd: offset into ReadResult::memory
  const SourceGuard* guard = nullptr;  // file segments of a source file: its identity check
  // Keeps fd open until the reply is sent (FileRange::hold: a remote object's cache block); such a
  // descriptor may be closed and its number reused once the reply is done.
  std::shared_ptr<const void> hold = nullptr;
  // fd < 0 and set: the bytes are here (kept by `hold`), not in ReadResult::memory.
  const char* data = nullptr;
  const char* bytes(const std::unique_ptr<char[]>& memory) const { return data ? data : memory.get() + mem_off; }
};
struct ReadResult {
  std::vector<ReadSegment> segments;
  std::unique_ptr<char[]> memory;
  size_t total() const {
    size_t t = 0;
    for (const auto& s : segments) t += s.len;
    return t;
  }
  // SourceGuard::check() of each file segment's guard, once per guard (a handful of segments: a
  // linear scan). Call after the segments' bytes were taken. Throws SysError(EIO).
  void verify_guards() const {
    for (size_t i = 0; i < segments.size(); ++i) {
      const SourceGuard* g = segments[i].guard;
      if (!g) continue;
      bool seen = false;
      for (size_t j = 0; j < i && !seen; ++j) seen = segments[j].guard == g;
      if (!seen) g->check();
    }
  }
};

struct DirEntryOut {
  std::string name;
  struct stat attr {};
  // readdirplus: how long the kernel may cache this entry (seconds); negative: the edge's default
  // (a day, or a second on a writable mount).
  double entry_timeout = -1;
  double attr_timeout = -1;
};

struct SetAttrRequest {
  bool set_mode = false, set_size = false, set_mtime = false, set_atime = false, set_uid = false, set_gid = false;
  mode_t mode = 0;
  uint64_t size = 0;
  struct timespec mtime {}, atime {};
  uid_t uid = 0;
  gid_t gid = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;

  virtual Entry lookup(Ino parent, std::string_view name) = 0;
  virtual void forget(Ino ino, uint64_t nlookup) {}
  // readdirplus hands the kernel an entry (and a lookup reference) for `ino`, as lookup would.
  virtual void lookup_ref(Ino ino) {}
  virtual Entry getattr(Ino ino) = 0;
  // Emits entries from `offset` (0 = start; "." and ".." included); `emit` returns false when the
  // reply buffer is full. `next_offset` is what the kernel passes back to continue after this entry.
  virtual void readdir(Ino ino, uint64_t offset,
                       const std::function<bool(const DirEntryOut&, uint64_t next_offset)>& emit) = 0;
  virtual OpenResult open(Ino ino, int flags) = 0;
  virtual void read(Ino ino, uint64_t fh, uint64_t off, size_t size, ReadResult& out) = 0;
  virtual void release(Ino ino, uint64_t fh) {}
  virtual struct statvfs statfs() = 0;

  // Mutations: read-only backends refuse with EROFS.
  virtual Entry setattr(Ino ino, const SetAttrRequest& req, const uint64_t* fh) { throw SysError(EROFS); }
  virtual size_t write(Ino ino, uint64_t fh, uint64_t off, const char* data, size_t size) { throw SysError(EROFS); }
  virtual Entry create(Ino parent, std::string_view name, mode_t mode, int flags, OpenResult& out) {
    throw SysError(EROFS);
  }
  virtual Entry mknod(Ino parent, std::string_view name, mode_t mode, dev_t rdev) { throw SysError(EROFS); }
  virtual Entry mkdir(Ino parent, std::string_view name, mode_t mode) { throw SysError(EROFS); }
  virtual void unlink(Ino parent, std::string_view name) { throw SysError(EROFS); }
  virtual void rmdir(Ino parent, std::string_view name) { throw SysError(EROFS); }
  virtual void rename(Ino parent, std::string_view name, Ino newparent, std::string_view newname, unsigned flags) {
    throw SysError(EROFS);
  }
  virtual Entry symlink(std::string_view target, Ino parent, std::string_view name) { throw SysError(EROFS); }
  virtual std::string readlink(Ino ino) { throw SysError(EINVAL); }
  virtual Entry link(Ino ino, Ino newparent, std::string_view newname) { throw SysError(EROFS); }
  virtual void flush(Ino ino, uint64_t fh) {}
  virtual void fsync(Ino ino, uint64_t fh, bool datasync) {}
  // Extended attributes: only setxattr, as a control call (e.g. `nemofs commit`), and only when
  // has_control_setxattr(). getxattr/listxattr/removexattr are never registered, so the kernel
  // learns (ENOSYS) never to ask: `ls -l` otherwise pays two round trips per file for
  // security.selinux / posix ACL lookups that the kernel cannot cache.
  virtual bool has_control_setxattr() const { return false; }
  virtual void setxattr(Ino ino, std::string_view name, std::string_view value, int flags) { throw SysError(ENOTSUP); }

  // Called once when the kernel connection ends (unmount), from the FUSE loop's thread, after the
  // last request. The writable backend commits here.
  virtual void destroy() {}
  // What happened at the end (after destroy): success and a one-line message for `nemofs umount`.
  virtual bool outcome_ok() const { return true; }
  virtual std::string outcome_message() const { return "unmounted"; }
  // Whether this backend accepts writes (for FUSE init decisions such as writeback caching).
  virtual bool writable() const { return false; }
  // Whether what the mount shows never changes while mounted (a frozen checkpoint tree). Only then
  // may the kernel skip OPEN and keep file pages across opens; a folder mount, whose files follow
  // the real folder, says false.
  virtual bool immutable() const { return !writable(); }
};

}  // namespace nemofs
