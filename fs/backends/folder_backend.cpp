#include "fs/backends/folder_backend.h"

#include <fcntl.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>

#include "formats/core/errors.h"
#include "formats/core/io.h"
#include "formats/safetensors/safetensors_writer.h"
#include "fs/backends/tree_backend.h"

namespace nemofs {

// One checkpoint's view slot: lives as long as the mount, across rebuilds.
struct FolderBackend::Slot {
  std::string rel;  // the checkpoint's path, relative to the folder
  Format format = Format::Unknown;
  Ino parent = 0;   // the real folder holding it
  std::mutex build_mu;  // one indexing at a time per checkpoint
  // Guarded by FolderBackend::mu_:
  Ino root = 0;  // the view's root inode, the same across rebuilds
  std::shared_ptr<View> view;
  bool failed = false;
  Identity failed_identity;  // the files a failed parse saw: retried only when they change
};

// One generation of a view: a built tree and the identity it was built from.
struct FolderBackend::View {
  Slot* slot = nullptr;
  Ino root = 0, base = 0;
  Checkpoint cp;
  std::unique_ptr<TreeBackend> tb;
  Identity identity;
  std::atomic<bool> retired{false};

  Ino ino_of(NodeId id) const { return id == 0 ? root : base + id - 1; }
};

namespace {

bool shown(mode_t m) { return S_ISREG(m) || S_ISDIR(m) || S_ISLNK(m); }

void check_name(std::string_view name) {
  if (name.empty() || name == "." || name == ".." || name.find('/') != std::string_view::npos) throw SysError(ENOENT);
}

bool ends_with_view(std::string_view name) {
  size_t k = std::strlen(kViewSuffix);
  return name.size() > k && name.compare(name.size() - k, k, kViewSuffix) == 0;
}

}  // namespace

FolderBackend::FolderBackend(std::string root, uid_t uid, gid_t gid, WarnFn warn, bool safetensors_views)
    : root_(std::move(root)), uid_(uid), gid_(gid), warn_(std::move(warn)), safetensors_views_(safetensors_views) {
  rel_of_[kRootIno] = "";
  ino_of_[""] = kRootIno;
}

FolderBackend::~FolderBackend() = default;

size_t FolderBackend::views_built() const {
  std::lock_guard lk(mu_);
  return built_;
}

void FolderBackend::warn_once(const std::string& message) {
  {
    std::lock_guard lk(mu_);
    if (!warned_.insert(message).second) return;
  }
  if (warn_) warn_(message);
}

Ino FolderBackend::real_ino(const std::string& rel) {
  auto it = ino_of_.find(rel);
  if (it != ino_of_.end()) return it->second;
  Ino ino = next_ino_++;
  ino_of_.emplace(rel, ino);
  rel_of_.emplace(ino, rel);
  return ino;
}

// A real entry's attributes: as they are, write bits removed (the mount is read-only); folders
// report nlink 1 ("not counted", as btrfs does), since views come and go with the folder.
struct stat FolderBackend::real_stat(Ino ino, const struct stat& real) const {
  struct stat st = real;
  st.st_ino = ino;
  st.st_mode &= ~static_cast<mode_t>(S_ISLNK(real.st_mode) ? 0 : 0222);
  st.st_nlink = 1;
  return st;
}

Format FolderBackend::sniff_cached(const std::string& path, const struct stat& st) {
  FileIdentity id = FileIdentity::of_stat(st);
  {
    std::lock_guard lk(mu_);
    auto it = sniffed_.find(path);
    if (it != sniffed_.end() && it->second.id.same_content(id)) return it->second.format;
  }
  Format f = sniff_folder_entry(path, st);
  std::lock_guard lk(mu_);
  sniffed_[path] = Sniffed{id, f};
  return f;
}

std::shared_ptr<FolderBackend::Slot> FolderBackend::slot_for(const std::string& ckpt_rel, Format f, Ino parent) {
  auto& s = slots_[ckpt_rel];
  if (!s) {
    s = std::make_shared<Slot>();
    s->rel = ckpt_rel;
    s->parent = parent;
  }
  if (s->format != f && s->view) retire(s->view);  // a file that became another kind of checkpoint
  s->format = f;
  if (s->root == 0) {
    s->root = next_ino_++;
    slot_of_root_[s->root] = s;
  }
  return s;
}

FolderBackend::Identity FolderBackend::identity_of(const std::string& ckpt_rel, Format f) const {
  Identity out;
  std::string path = abs(ckpt_rel);
  auto one = [&](const std::string& rel, const std::string& p) {
    struct stat st {};
    if (::stat(p.c_str(), &st) != 0) throw SysError(errno, p + ": " + std::strerror(errno));
    out.emplace_back(rel, FileIdentity::of_stat(st));
  };
  if (f == Format::Dcp || f == Format::HfDir) {
    DirFileSet files(path);
    for (const auto& rel : files.list()) one(rel, path + "/" + rel);
  } else {
    one("", path);
  }
  return out;
}

void FolderBackend::retire(const std::shared_ptr<View>& v) {
  if (v->retired.exchange(true)) return;
  // A one-node view has no range (and its base is some later view's).
  if (auto it = ranges_.find(v->base); it != ranges_.end() && it->second == v) ranges_.erase(it);
  Slot& s = *v->slot;
  if (s.view == v) s.view.reset();
}

bool FolderBackend::retire_if_changed(const std::shared_ptr<View>& v) {
  if (v->retired) return true;
  bool same;
  try {
    same = identity_of(v->slot->rel, v->slot->format) == v->identity;
  } catch (const SysError&) {
    same = false;
  }
  if (same) return false;
  std::lock_guard lk(mu_);
  retire(v);
  return true;
}

std::shared_ptr<FolderBackend::View> FolderBackend::ensure_built(const std::shared_ptr<Slot>& slot) {
  std::lock_guard build(slot->build_mu);
  Identity id;
  try {
    id = identity_of(slot->rel, slot->format);
  } catch (const SysError&) {
    throw SysError(ENOENT);  // the checkpoint went away
  }
  {
    std::lock_guard lk(mu_);
    if (slot->view) {
      if (slot->view->identity == id) return slot->view;
      retire(slot->view);
    }
    if (slot->failed && slot->failed_identity == id) throw SysError(ENOENT);
  }
  std::string path = abs(slot->rel);
  auto v = std::make_shared<View>();
  v->slot = slot.get();
  v->identity = std::move(id);
  try {
    v->cp = open_checkpoint(path, /*writable=*/false);  // a view: read-only
    // Part of the index: the header is laid out now, once per build, like a single mount's at
    // mount time; a rebuilt view (the checkpoint changed) gets a new one from the new tree.
    if (safetensors_views_)
      add_safetensors_views(v->cp.tree, v->cp.format == Format::Tar || v->cp.format == Format::GzipTar,
                            v->cp.warnings);
  } catch (const std::bad_alloc&) {
    throw;
  } catch (const std::exception& e) {
    {
      std::lock_guard lk(mu_);
      slot->failed = true;
      slot->failed_identity = v->identity;
    }
    // Named as a .nemo names a member whose view could not be built (SEMANTICS section 4).
    warn_once(slot->rel + ": no .tensors view: " + e.what());
    throw SysError(ENOENT);
  }
  struct stat st {};
  int64_t mtime = ::stat(path.c_str(), &st) == 0 ? st.st_mtim.tv_sec : 0;
  v->tb = std::make_unique<TreeBackend>(v->cp.tree, mtime, uid_, gid_);
  for (const auto& w : v->cp.warnings) warn_once(slot->rel + ": " + w);
  std::lock_guard lk(mu_);
  slot->failed = false;
  v->root = slot->root;
  v->base = next_ino_;
  next_ino_ += v->cp.tree.size() - 1;
  if (v->cp.tree.size() > 1) ranges_[v->base] = v;
  slot->view = v;
  ++built_;
  return v;
}

FolderBackend::Target FolderBackend::resolve(Ino ino) {
  std::lock_guard lk(mu_);
  Target t;
  if (auto it = rel_of_.find(ino); it != rel_of_.end()) {
    t.rel = &it->second;  // entries are never erased: the pointer stays valid
    return t;
  }
  if (auto it = slot_of_root_.find(ino); it != slot_of_root_.end()) {
    t.root = it->second;
    t.view = it->second->view;
    t.local = 0;
    return t;
  }
  auto it = ranges_.upper_bound(ino);
  if (it != ranges_.begin()) {
    --it;
    const auto& v = it->second;
    if (ino - v->base < v->cp.tree.size() - 1) {
      t.view = v;
      t.local = static_cast<NodeId>(ino - v->base + 1);
      return t;
    }
  }
  throw SysError(ESTALE);  // a retired view's node, or never handed out
}

Entry FolderBackend::view_entry(const std::shared_ptr<View>& v, NodeId id) const {
  struct stat st = v->tb->stat_of(id);
  st.st_ino = v->ino_of(id);
  // Names are re-asked for every second, so that a path through a rebuilt view reaches the new
  // tree; the attributes of a node inside never change (a rebuilt view has new numbers).
  return Entry{st, kFolderTimeout, id == 0 ? kFolderTimeout : TreeBackend::kTimeout};
}

struct stat FolderBackend::view_root_stat(const Slot& slot, const std::shared_ptr<View>& v) const {
  if (v) {
    struct stat st = v->tb->stat_of(0);
    st.st_ino = v->root;
    return st;
  }
  // Not indexed yet: what is known without parsing (nlink 1: not counted).
  struct stat real {};
  ::stat(abs(slot.rel).c_str(), &real);
  struct stat st {};
  st.st_ino = slot.root;
  st.st_mode = S_IFDIR | 0555;
  st.st_nlink = 1;
  st.st_uid = uid_;
  st.st_gid = gid_;
  st.st_size = 4096;
  st.st_blocks = 8;
  st.st_blksize = 4096;
  st.st_mtim.tv_sec = st.st_atim.tv_sec = st.st_ctim.tv_sec = real.st_mtim.tv_sec;
  return st;
}

Entry FolderBackend::lookup(Ino parent, std::string_view name) {
  Target p = resolve(parent);
  if (p.rel) {
    check_name(name);
    std::string rel = join(*p.rel, name);
    struct stat st {};
    if (::lstat(abs(rel).c_str(), &st) == 0 && shown(st.st_mode)) {
      Ino ino;
      {
        std::lock_guard lk(mu_);
        ino = real_ino(rel);
      }
      return Entry{real_stat(ino, st), kFolderTimeout, kFolderTimeout};
    }
    if (!ends_with_view(name)) throw SysError(ENOENT);
    std::string of_rel = rel.substr(0, rel.size() - std::strlen(kViewSuffix));
    std::string of_path = abs(of_rel);
    if (::lstat(of_path.c_str(), &st) != 0) throw SysError(ENOENT);
    if (S_ISLNK(st.st_mode) && (::stat(of_path.c_str(), &st) != 0 || !S_ISREG(st.st_mode))) throw SysError(ENOENT);
    if (!S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode)) throw SysError(ENOENT);
    Format f = sniff_cached(of_path, st);
    if (f == Format::Unknown) throw SysError(ENOENT);
    std::shared_ptr<Slot> slot;
    {
      std::lock_guard lk(mu_);
      slot = slot_for(of_rel, f, parent);
    }
    auto v = ensure_built(slot);
    return view_entry(v, 0);
  }
  // Inside a view.
  std::shared_ptr<View> v = p.view;
  if (p.root) v = ensure_built(p.root);
  if (v->retired) throw SysError(ESTALE);
  Entry e = v->tb->lookup(p.local + 1, name);
  return view_entry(v, static_cast<NodeId>(e.attr.st_ino - 1));
}

Entry FolderBackend::getattr(Ino ino) {
  Target t = resolve(ino);
  if (t.rel) {
    struct stat st {};
    if (::lstat(abs(*t.rel).c_str(), &st) != 0 || !shown(st.st_mode)) throw SysError(ENOENT);
    return Entry{real_stat(ino, st), kFolderTimeout, kFolderTimeout};
  }
  if (t.root) return Entry{view_root_stat(*t.root, t.view), kFolderTimeout, kFolderTimeout};
  if (t.view->retired) throw SysError(ESTALE);
  return view_entry(t.view, t.local);
}

void FolderBackend::readdir(Ino ino, uint64_t offset, const std::function<bool(const DirEntryOut&, uint64_t)>& emit) {
  Target t = resolve(ino);
  if (t.rel) {
    std::string rel = *t.rel;
    std::shared_ptr<const std::vector<DirEntryOut>> listing;
    if (offset != 0) {
      std::lock_guard lk(mu_);
      if (auto it = listings_.find(ino); it != listings_.end()) listing = it->second;
    }
    if (!listing) {
      struct stat self {};
      std::string dir = abs(rel);
      if (::lstat(dir.c_str(), &self) != 0) throw SysError(ENOENT);
      if (!S_ISDIR(self.st_mode)) throw SysError(ENOTDIR);
      std::vector<std::string> warnings;
      auto entries = list_folder(
          dir, [this](const std::string& p, const struct stat& st) { return sniff_cached(p, st); }, &warnings);
      for (const auto& w : warnings) warn_once(w.substr(std::min(w.size(), root_.size() + 1)));
      auto out = std::make_shared<std::vector<DirEntryOut>>();
      out->reserve(entries.size() + 2);
      std::lock_guard lk(mu_);
      std::string parent_rel = rel.empty() ? "" : io::dir_of(rel);
      if (parent_rel == ".") parent_rel.clear();
      struct stat pst {};
      if (::lstat(abs(parent_rel).c_str(), &pst) != 0 || rel.empty()) pst = self;
      out->push_back(DirEntryOut{".", real_stat(ino, self), kFolderTimeout, kFolderTimeout});
      out->push_back(DirEntryOut{"..", real_stat(real_ino(parent_rel), pst), kFolderTimeout, kFolderTimeout});
      for (const auto& e : entries) {
        DirEntryOut d;
        d.name = e.name;
        d.entry_timeout = d.attr_timeout = kFolderTimeout;
        if (e.kind == FolderEntry::Kind::View) {
          auto slot = slot_for(join(rel, e.of), e.format, ino);
          // A view that failed on these very files stays out of the listing.
          if (slot->failed && !slot->view) {
            bool same = false;
            try {
              same = identity_of(slot->rel, slot->format) == slot->failed_identity;
            } catch (const SysError&) {
            }
            if (same) continue;
          }
          d.attr = view_root_stat(*slot, slot->view);
        } else {
          d.attr = real_stat(real_ino(join(rel, e.name)), e.st);
        }
        out->push_back(std::move(d));
      }
      listings_[ino] = out;
      listing = out;
    }
    for (uint64_t off = offset; off < listing->size(); ++off)
      if (!emit((*listing)[off], off + 1)) return;
    return;
  }
  std::shared_ptr<View> v = t.view;
  if (t.root) v = ensure_built(t.root);  // the first look inside indexes the checkpoint
  if (v->retired) throw SysError(ESTALE);
  NodeId id = t.local;
  v->tb->readdir(id + 1, offset, [&](const DirEntryOut& e, uint64_t next) {
    DirEntryOut o = e;
    if (id == 0 && e.name == "..") {
      struct stat pst {};
      std::string prel;
      {
        std::lock_guard lk(mu_);
        prel = rel_of_.at(v->slot->parent);
      }
      if (::lstat(abs(prel).c_str(), &pst) != 0) throw SysError(ENOENT);
      o.attr = real_stat(v->slot->parent, pst);
      o.entry_timeout = o.attr_timeout = kFolderTimeout;
    } else {
      NodeId nid = static_cast<NodeId>(e.attr.st_ino - 1);
      o.attr.st_ino = v->ino_of(nid);
      o.entry_timeout = kFolderTimeout;
      o.attr_timeout = nid == 0 ? kFolderTimeout : TreeBackend::kTimeout;
    }
    return emit(o, next);
  });
}

OpenResult FolderBackend::open(Ino ino, int flags) {
  if ((flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC)) throw SysError(EROFS);
  Target t = resolve(ino);
  if (t.rel) {
    std::string path = abs(*t.rel);
    UniqueFd fd = io::open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK);
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) throw SysError(errno);
    if (S_ISDIR(st.st_mode)) throw SysError(EISDIR);
    if (!S_ISREG(st.st_mode)) throw SysError(EACCES);
    OpenResult r;
    r.fh = static_cast<uint64_t>(fd.release()) + 1;  // 0 stays "no descriptor"
    r.keep_cache = false;  // the file may have changed since the pages were read
    return r;
  }
  if (t.root) throw SysError(EISDIR);
  // A view's file: its checkpoint must still be the one indexed; if not, ESTALE makes the kernel
  // look the path up again (LOOKUP_REVAL), which finds the file in the rebuilt view.
  if (retire_if_changed(t.view)) throw SysError(ESTALE);
  OpenResult r = t.view->tb->open(t.local + 1, flags);
  r.keep_cache = true;  // immutable: a rebuilt view has new inode numbers, so new page caches
  return r;
}

void FolderBackend::read(Ino ino, uint64_t fh, uint64_t off, size_t size, ReadResult& out) {
  if (fh != 0) {
    int fd = static_cast<int>(fh - 1);
    struct stat st {};
    if (::fstat(fd, &st) != 0) throw SysError(errno);
    uint64_t total = static_cast<uint64_t>(st.st_size);
    if (off >= total || size == 0) return;
    size_t n = static_cast<size_t>(std::min<uint64_t>(size, total - off));
    out.segments.push_back(ReadSegment{fd, off, n, 0});
    return;
  }
  Target t;
  try {
    t = resolve(ino);
  } catch (const SysError&) {
    throw SysError(EIO);  // a file of a retired view: its checkpoint changed
  }
  if (t.rel || t.root || !t.view) throw SysError(EIO);
  if (t.view->retired) throw SysError(EIO);
  t.view->tb->read(t.local + 1, 0, off, size, out);
}

void FolderBackend::release(Ino ino, uint64_t fh) {
  (void)ino;
  if (fh != 0) ::close(static_cast<int>(fh - 1));
}

std::string FolderBackend::readlink(Ino ino) {
  Target t = resolve(ino);
  if (!t.rel) throw SysError(EINVAL);
  char buf[PATH_MAX];
  ssize_t n = ::readlink(abs(*t.rel).c_str(), buf, sizeof buf);
  if (n < 0) throw SysError(errno);
  return std::string(buf, static_cast<size_t>(n));
}

struct statvfs FolderBackend::statfs() {
  struct statvfs s {};
  if (::statvfs(root_.c_str(), &s) != 0) throw SysError(errno);
  s.f_flag |= ST_RDONLY;
  return s;
}

}  // namespace nemofs
