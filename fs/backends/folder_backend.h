// The folder backend (SEMANTICS section 9): a real folder that is not itself one checkpoint,
// served read-only as it is, with a `<name>.tensors/` view beside every checkpoint inside.
//
// Real entries are passed through: each request looks at the real folder (lstat, readdir), files
// are read from a descriptor opened at open() and answered as file segments (spliced by the
// kernel, never copied through user space). Their names and attributes may be cached by the kernel
// for a second only and their pages are dropped at each open, so listings and contents follow the
// folder.
//
// Views are lazy: listing a folder only sniffs its entries (formats/detect/folder.h); a view is
// indexed (open_checkpoint, the same code that mounts the checkpoint alone) on the first lookup
// inside it or of its name, once even under concurrent first accesses, and then served by a
// TreeBackend over that tree. A view records the identity of its checkpoint's files
// (FileIdentity); a lookup of the view's name, a look inside it, or an open of one of its files
// that finds them changed retires that index: the nodes inside get new inode numbers when it is
// indexed again, the old ones answer ESTALE (the kernel then looks the path up again and finds
// the new node) and reads of files opened from it EIO, so bytes of an old index are never served
// for a new file. Names inside views are cached by the kernel for a second, like real entries.
//
// Inode numbers: 1 is the folder; real entries get one number per relative path, and a view's
// root one per checkpoint path, for the life of the mount; the rest of a view's tree gets a
// contiguous range each time it is indexed (tree node k >= 1 is base + k - 1). Numbers are never
// reused.
#pragma once

#include <sys/types.h>

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "formats/detect/folder.h"
#include "fs/backends/backend.h"

namespace nemofs {

class FolderBackend final : public Backend {
 public:
  using WarnFn = std::function<void(const std::string&)>;
  // `root`: the real path of the folder. `warn` receives each warning once (views that could not be
  // built, names taken, what a checkpoint's own parse warns about), from any serving thread.
  // `safetensors_views` (-o safetensors): each view, when indexed, gets the `model.safetensors`
  // file(s) a read-only mount of that checkpoint alone shows (safetensors_writer.h
  // add_safetensors_views), built with the rest of its index.
  FolderBackend(std::string root, uid_t uid, gid_t gid, WarnFn warn, bool safetensors_views = false);
  ~FolderBackend() override;

  Entry lookup(Ino parent, std::string_view name) override;
  Entry getattr(Ino ino) override;
  void readdir(Ino ino, uint64_t offset,
               const std::function<bool(const DirEntryOut&, uint64_t)>& emit) override;
  OpenResult open(Ino ino, int flags) override;
  void read(Ino ino, uint64_t fh, uint64_t off, size_t size, ReadResult& out) override;
  void release(Ino ino, uint64_t fh) override;
  std::string readlink(Ino ino) override;
  struct statvfs statfs() override;
  bool immutable() const override { return false; }

  // Real entries and view roots: the kernel re-asks after this many seconds, which bounds how long
  // a change in the folder can go unseen by a path lookup.
  static constexpr double kFolderTimeout = 1.0;

  // How many views have been indexed so far (tests, bench).
  size_t views_built() const;

 private:
  struct View;
  struct Slot;
  using Identity = std::vector<std::pair<std::string, FileIdentity>>;

  std::string abs(const std::string& rel) const { return rel.empty() ? root_ : root_ + "/" + rel; }
  static std::string join(const std::string& dir, std::string_view name) {
    return dir.empty() ? std::string(name) : dir + "/" + std::string(name);
  }
  Ino real_ino(const std::string& rel);                    // under mu_
  struct stat real_stat(Ino ino, const struct stat& st) const;
  Format sniff_cached(const std::string& path, const struct stat& st);
  std::shared_ptr<Slot> slot_for(const std::string& ckpt_rel, Format f, Ino parent);  // under mu_
  struct stat view_root_stat(const Slot& slot, const std::shared_ptr<View>& v) const;
  Identity identity_of(const std::string& ckpt_rel, Format f) const;
  // The current view of a slot, indexing it if needed (or again, when its checkpoint changed).
  // Throws SysError(ENOENT) when the checkpoint is gone or cannot be parsed.
  std::shared_ptr<View> ensure_built(const std::shared_ptr<Slot>& slot);
  // Retires `v` when its checkpoint no longer has the identity it was built from (under mu_ for
  // the bookkeeping). Returns whether it was retired.
  bool retire_if_changed(const std::shared_ptr<View>& v);
  void retire(const std::shared_ptr<View>& v);  // under mu_

  // What an inode is.
  struct Target {
    const std::string* rel = nullptr;  // a real entry
    std::shared_ptr<Slot> root;        // a view's root
    std::shared_ptr<View> view;        // a node inside a built view (with `local`)
    NodeId local = 0;
  };
  Target resolve(Ino ino);
  Entry view_entry(const std::shared_ptr<View>& v, NodeId id) const;
  void warn_once(const std::string& message);

  std::string root_;
  uid_t uid_;
  gid_t gid_;
  WarnFn warn_;
  bool safetensors_views_ = false;

  mutable std::mutex mu_;
  Ino next_ino_ = 2;
  std::unordered_map<Ino, std::string> rel_of_;              // real entries
  std::unordered_map<std::string, Ino> ino_of_;
  std::unordered_map<std::string, std::shared_ptr<Slot>> slots_;  // by the checkpoint's path
  std::unordered_map<Ino, std::shared_ptr<Slot>> slot_of_root_;   // current generations' roots
  std::map<Ino, std::shared_ptr<View>> ranges_;               // base -> built, current view
  struct Sniffed {
    FileIdentity id;
    Format format;
  };
  std::unordered_map<std::string, Sniffed> sniffed_;
  // The listing a readdir at offset 0 took, so later offsets continue the same sequence.
  std::unordered_map<Ino, std::shared_ptr<const std::vector<DirEntryOut>>> listings_;
  std::set<std::string> warned_;
  size_t built_ = 0;
};

}  // namespace nemofs
