// SourceGuard: whether an open source file still holds the bytes that were indexed.
//
// A mount indexes a file once and then serves byte ranges of it for as long as it is mounted. If
// the file is truncated or rewritten in place meanwhile (torch.save and Lightning rewrite
// `last.ckpt` by open-truncate-write), those ranges are short or hold foreign bytes. Each source
// file's fd carries one guard with the file's identity taken when it was opened (before indexing);
// every read that serves bytes of the file compares it with a fresh fstat *after* the bytes were
// captured (a pread into memory, a splice into a pipe), so a reply is only sent when the file was
// still the indexed one at a moment after its bytes were taken. Writers change mtime (and a
// truncate the size) before they change bytes, so a capture followed by an unchanged fstat holds
// old bytes only.
//
// Same content = same device, inode, size and mtime, and the same ctime unless the link count
// changed: a replacement by rename (and rm, ln) changes the old inode's ctime through its link
// count but not its bytes, and that file keeps being served. Any other ctime change (chmod, chown,
// a write that put the old mtime back, as `cp -p` over the file does) counts as changed: stat
// cannot tell them apart.
//
// Once a guard saw a change it stays changed (one atomic load answers from then on, no fstat), and
// the process-wide reporter is told once per guard: the mount logs "PATH changed since it was
// mounted; remount to see the new file" and records it for `nemofs status`.
#pragma once

#include <sys/stat.h>
#include <sys/types.h>

#include <atomic>
#include <string>

#include "formats/core/io.h"

namespace nemofs {

class SourceGuard {
 public:
  // `st` is the fstat of `fd` taken when the file was opened; the guard does not own `fd`.
  SourceGuard(int fd, const struct stat& st, std::string path);
  SourceGuard(const SourceGuard&) = delete;
  SourceGuard& operator=(const SourceGuard&) = delete;

  // One fstat: throws SysError(EIO, "PATH changed since it was mounted; ...") when the file is no
  // longer the one indexed (or was found changed before: then no fstat). An fstat failure is
  // passed on as its errno.
  void check() const;
  // Only the flag (no system call): throws when a change was already seen.
  void check_flag() const {
    if (changed_.load(std::memory_order_relaxed)) throw_changed();
  }
  // A read of the file came back short of bytes it had when indexed: the file shrank. Marks the
  // guard changed (reporting it) and throws SysError(EIO).
  [[noreturn]] void fail_short() const;

  bool changed() const { return changed_.load(std::memory_order_relaxed); }
  const FileIdentity& identity() const { return id_; }
  const std::string& path() const { return path_; }
  // "PATH changed since it was mounted; remount to see the new file"
  std::string message() const;

  // Told once per guard, from the thread that saw the change first, with path() and message().
  // Set once before serving (nullptr: nobody is told). Must not throw.
  using Reporter = void (*)(const std::string& path, const std::string& message);
  static void set_reporter(Reporter r);

  // Whether a file now stat'ed as `now` still holds the content of one indexed as `then` with
  // `then_nlink` links (the rule above).
  static bool same_content(const FileIdentity& then, nlink_t then_nlink, const struct stat& now);

 private:
  [[noreturn]] void throw_changed() const;
  void mark_changed() const;

  int fd_;
  FileIdentity id_;
  nlink_t nlink_;
  std::string path_;
  mutable std::atomic<bool> changed_{false};
};

}  // namespace nemofs
