// The writable backend of a .nemo (plain or gzip tar): the archive's members as a mutable
// namespace, with every edit kept durably in the overlay (fs/overlay.h) and committed back into
// the archive (fs/commit.h) by `nemofs commit`, `nemofs umount`, or any unmount.
//
// Namespace: a mutable inode table. Inode numbers are allocated once and stay valid while the
// kernel holds a lookup reference (lookup/forget counts) or an open handle, even after unlink or
// a commit. Every file's bytes are either a range of the archive (unchanged member) or an overlay
// data file (after the first write or truncate the member is copied up with copy_file_range, then
// edited in place). In a gzip .nemo an unchanged member is a range of the uncompressed stream
// (GzipSource): it is read through the seek index (memory replies, no fd segments) and copied up
// by reading it; commits write a gzip archive again (fs/commit.h). Entry and attribute timeouts
// are zero for mutable nodes, so every edit is seen at once by every reader; page caches are kept
// because all writes pass through this mount.
//
// `<member>.tensors/` views are read-only (EROFS) and always show the member as it is in the
// archive being served: a view is hidden while its member is edited, renamed or deleted, and after
// a commit while mounted the views are rebuilt from the new archive.
//
// Locking: one mutex serialises every operation (commit included). The archive is locked with
// flock(LOCK_EX) for the life of the mount, so a second writable mount of it is refused; a commit
// locks its result before renaming it into place, so the lock follows the archive.
//
// Control: setxattr("user.nemofs.commit") on the mount's root commits synchronously (the answer
// is 0 or the errno; the one-line outcome goes to the mount's result file in the state folder).
// The number of pending edits goes to the mount's state file (`nemofs status`), not to an xattr:
// see Backend::has_control_setxattr for why nothing answers getxattr.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "formats/detect/checkpoint.h"
#include "formats/nemo/nemo.h"
#include "formats/tar/tar_writer.h"
#include "fs/backend.h"
#include "fs/overlay.h"
#include "fs/tree_backend.h"

namespace nemofs {

struct WritableOptions {
  std::string archive_path;  // real path of the .nemo
  std::string mountpoint;    // real path (names the state-folder files)
  std::string output;        // -o output=PATH: commit there, leave the archive as it is
  bool commit_junk = false;  // -o commit_junk: commit editor/OS junk files too
  uid_t uid = 0;
  gid_t gid = 0;
};

class WritableBackend final : public Backend {
 public:
  // Takes the checkpoint over. Throws std::runtime_error with a one-line message when the mount
  // must be refused (archive locked by another writable mount, overlay for a different archive).
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
  bool outcome_ok() const override { return outcome_ok_; }
  std::string outcome_message() const override { return outcome_; }
  bool writable() const override { return true; }

  // Edits that a commit would write (junk excluded unless commit_junk).
  size_t pending_edits();
  // Commits now. Returns success and sets `message` to the one-line outcome.
  bool commit(std::string& message);

 private:
  enum class Kind : uint8_t { Dir, File, View };
  struct Child {
    Ino ino;
    uint64_t cookie;
  };
  struct WNode {
    Ino ino = 0;
    Kind kind = Kind::File;
    Ino parent = 0;
    std::string name;
    bool linked = true;
    // Folders: children by name, and by cookie (the readdir offset, stable under mutation).
    std::map<std::string, Child, std::less<>> children;
    std::map<uint64_t, std::string> order;
    uint64_t next_cookie = 2;
    // Files: the bytes are `base` (an archive range) or overlay data file `data` open as `fd`.
    SourcePtr base;
    int64_t data = -1;
    int fd = -1;
    uint64_t size = 0;
    bool dirty = false;  // written since the last fdatasync
    // The archive path this node came from (its header/bytes), if any.
    std::optional<std::string> origin;
    uint32_t mode = 0644;
    int64_t mtime_ns = 0;  // files with data: the data file's mtime is used instead
    // Kernel references.
    uint64_t nlookup = 0;
    uint32_t opens = 0;
    // Views: a node of a checkpoint view tree (read-only).
    std::shared_ptr<void> vgen;  // keeps the Generation that owns the tree alive
    const Tree* vtree = nullptr;
    const TreeBackend* vstat = nullptr;
    NodeId vid = 0;
    std::string view_of;  // view roots: the archive path of the member the view shows
  };
  // One archive being served (the mount's, then each commit's result).
  struct BaseMember {
    int entry = -1;  // tar index position; -1: an implicit folder (no header of its own)
    bool dir = false;
    uint32_t mode = 0;
    int64_t mtime_ns = 0;
    SourcePtr data;
  };
  struct Generation {
    std::string path;
    Checkpoint cp;
    std::shared_ptr<NemoArchive> nemo;
    std::unique_ptr<TreeBackend> stat;  // attributes of view nodes
    int fd = -1;                        // the archive file's fd (owned by the FileSource)
    SourcePtr stream;                   // its tar stream: the file, or the GzipSource over it
    bool gzip = false;                  // a gzip .nemo: commits write gzip again
    ArchiveIdentity identity;
    TarStyle style;
    std::unordered_map<std::string, BaseMember> members;  // normalised path -> member
  };

  std::shared_ptr<Generation> make_generation(Checkpoint&& cp, const std::string& path);
  void build_namespace();
  void add_view_roots(WNode& dir, NodeId tree_dir);
  void apply_journal(const Journal& j);

  WNode& node(Ino ino);
  WNode& dir_node(Ino ino);
  WNode* child(WNode& dir, std::string_view name);
  WNode* resolve(const std::string& path);
  std::string path_of(const WNode& n) const;
  Ino new_node(Kind k);
  void attach(WNode& dir, const std::string& name, WNode& n);
  void detach(WNode& n);
  void drop(WNode& n);  // after detach: forget its data file, erase it when unreferenced
  void maybe_erase(WNode& n);
  bool visible(const WNode& n);
  bool identical(const WNode& n) const;
  bool subtree_identical(const WNode& n) const;
  bool junk(const WNode& n) const;
  struct stat stat_of(const WNode& n);
  Entry entry_of(WNode& n);
  WNode& materialise_view_child(WNode& dir, NodeId id);
  void check_mutable_dir(WNode& dir);
  void check_name(std::string_view name);
  WNode& new_file(WNode& dir, const std::string& name, mode_t mode);
  // The folder `parent` ready to take a new entry `name` (mknod, mkdir): mutable, a valid name, no
  // visible entry of that name (EEXIST); a hidden view of that name is dropped.
  WNode& dir_for_new_entry(Ino parent, std::string_view name);
  void copy_up(WNode& n, bool keep_bytes);
  void set_size(WNode& n, uint64_t size);
  int64_t mtime_of(const WNode& n);

  Journal diff();
  size_t count_pending(const Journal& j);
  void save_journal();
  void note_pending(size_t n);
  bool commit_locked(std::string& message, bool final, int* err_out);
  void report_progress(uint64_t done, uint64_t total);
  void rebase_after_commit(int result_fd, const std::string& path);

  WritableOptions opts_;
  Overlay overlay_;
  std::mutex mu_;
  std::shared_ptr<Generation> gen_;
  // After a commit while mounted: the old archive and the overlay fds of committed files stay open
  // for a grace period, so that replies already handed an fd segment can still splice from it; then
  // they are closed (the old archive's space is freed).
  std::vector<std::shared_ptr<Generation>> retired_;
  std::vector<int> retired_fds_;
  std::chrono::steady_clock::time_point retired_at_{};
  void reap_retired(bool force = false);
  int lock_fd_ = -1;                                  // flock'ed archive
  std::unordered_map<Ino, std::unique_ptr<WNode>> nodes_;
  std::map<std::pair<const void*, NodeId>, Ino> view_inos_;
  Ino next_ino_ = 2;
  int64_t next_data_ = 1;
  std::optional<size_t> last_pending_;
  bool outcome_ok_ = true;
  std::string outcome_ = "unmounted";
  bool committed_output_ = false;
};

}  // namespace nemofs
