// The writable backend of a .nemo (plain or gzip tar): a thin adapter from Backend calls to an
// edit session (fs/edit/editor.h), which owns the member namespace, the durable overlay and the
// commits. What is left here is presentation: inode attributes and cache timeouts, readdir
// cookies, the read-only `<member>.tensors/` views, and reading bytes (archive ranges are answered
// with fd segments the kernel splices; in a gzip .nemo through the seek index, as memory).
//
// Entry and attribute timeouts are short (1 s) for namespace nodes: every change passes through
// this mount, and the kernel updates or invalidates what it cached on each of its own replies.
// Page caches are kept for the same reason. A view's top folder appears and disappears with its
// member's edits, so it is never cached; inside a view everything is immutable (a day).
//
// Locking: one mutex serialises every operation (commit included).
//
// Control: setxattr("user.nemofs.commit") on the mount's root commits synchronously (the answer
// is 0 or the errno; the one-line outcome goes to the observer). The number of pending edits goes
// to the observer too (`nemofs status`), not to an xattr: see Backend::has_control_setxattr.
#pragma once

#include <sys/types.h>

#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "formats/detect/checkpoint.h"
#include "fs/backends/backend.h"
#include "fs/backends/tree_backend.h"
#include "fs/edit/editor.h"

namespace nemofs {

// The edit session's options, and who owns what the mount shows.
struct WritableOptions : EditOptions {
  uid_t uid = 0;
  gid_t gid = 0;
};

class WritableBackend final : public Backend {
 public:
  // Takes the checkpoint over. Throws SysError with a one-line message when the mount must be
  // refused (archive locked by another writable mount, overlay for a different archive).
  WritableBackend(Checkpoint&& cp, WritableOptions opts);
  ~WritableBackend() override;

  Entry lookup(Ino parent, std::string_view name) override;
  void forget(Ino ino, uint64_t nlookup) override;
  void lookup_ref(Ino ino) override;
  Entry getattr(Ino ino) override;
  void readdir(Ino ino, uint64_t offset,
               const std::function<bool(const DirEntryOut&, uint64_t)>& emit) override;
  OpenResult open(Ino ino, int flags) override;
  void read(Ino ino, uint64_t fh, uint64_t off, size_t size, ReadResult& out) override;
  void release(Ino ino, uint64_t fh) override;
  struct statvfs statfs() override;

  Entry setattr(Ino ino, const SetAttrRequest& req, const uint64_t* fh) override;
  size_t write(Ino ino, uint64_t fh, uint64_t off, const char* data, size_t size) override;
  Entry create(Ino parent, std::string_view name, mode_t mode, int flags, OpenResult& out) override;
  Entry mknod(Ino parent, std::string_view name, mode_t mode, dev_t rdev) override;
  Entry mkdir(Ino parent, std::string_view name, mode_t mode) override;
  void unlink(Ino parent, std::string_view name) override;
  void rmdir(Ino parent, std::string_view name) override;
  void rename(Ino parent, std::string_view name, Ino newparent, std::string_view newname, unsigned flags) override;
  Entry symlink(std::string_view target, Ino parent, std::string_view name) override;
  Entry link(Ino ino, Ino newparent, std::string_view newname) override;
  void flush(Ino ino, uint64_t fh) override;
  void fsync(Ino ino, uint64_t fh, bool datasync) override;
  bool has_control_setxattr() const override { return true; }  // user.nemofs.commit on the root
  void setxattr(Ino ino, std::string_view name, std::string_view value, int flags) override;

  void destroy() override;
  bool outcome_ok() const override { return outcome_.ok; }
  std::string outcome_message() const override { return outcome_.message; }
  bool writable() const override { return true; }

  // Edits that a commit would write (junk excluded unless commit_junk).
  size_t pending_edits();
  // Commits now and stays mounted.
  CommitOutcome commit();

 private:
  struct stat stat_of(const MemberNode& n);
  Entry entry_of(MemberNode& n);

  WritableOptions opts_;
  std::mutex mu_;
  Editor editor_;
  // Attributes of view nodes, one table per archive whose tree is shown.
  std::map<const Archive*, std::unique_ptr<TreeBackend>> view_attrs_;
  CommitOutcome outcome_{true, 0, "unmounted"};
};

}  // namespace nemofs
