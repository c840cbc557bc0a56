#include "fs/backends/writable_backend.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include <algorithm>
#include <cerrno>

#include "formats/core/errors.h"
#include "formats/core/io.h"

namespace nemofs {
namespace {

constexpr double kMutableTimeout = 1.0;


}  // namespace

WritableBackend::WritableBackend(Checkpoint&& cp, WritableOptions opts)
    : opts_(std::move(opts)), editor_(std::move(cp), opts_) {}

WritableBackend::~WritableBackend() = default;

struct stat WritableBackend::stat_of(const MemberNode& n) {
  const ViewBody* v = n.view();
  if (!v) return editor_.ns().stat_of(n, opts_.uid, opts_.gid);
  auto& attrs = view_attrs_[v->gen.get()];
  if (!attrs) attrs = std::make_unique<TreeBackend>(v->gen->cp.tree, v->gen->mtime_sec, opts_.uid, opts_.gid);
  struct stat st = attrs->stat_of(v->id);
  st.st_ino = n.ino;
  return st;
}

Entry WritableBackend::entry_of(MemberNode& n) {
  const ViewBody* v = n.view();
  double t = !v ? kMutableTimeout : v->view_of.empty() ? TreeBackend::kTimeout : 0.0;
  return Entry{stat_of(n), t, t};
}

Entry WritableBackend::lookup(Ino parent, std::string_view name) {
  std::lock_guard lk(mu_);
  editor_.reap_retired();
  MemberTree& ns = editor_.ns();
  MemberNode& d = ns.folder_node(parent);
  if (const ViewBody* v = d.view()) {
    auto id = v->gen->cp.tree.lookup(v->id, name);
    if (!id) throw SysError(ENOENT);
    MemberNode& c = ns.view_child(d, *id);
    ++c.nlookup;
    return entry_of(c);
  }
  MemberNode* c = ns.child(d, name);
  if (!c || !ns.visible(*c)) throw SysError(ENOENT);
  ++c->nlookup;
  return entry_of(*c);
}

void WritableBackend::forget(Ino ino, uint64_t n) {
  std::lock_guard lk(mu_);
  MemberNode* x = editor_.ns().find(ino);
  if (!x) return;
  x->nlookup = n >= x->nlookup ? 0 : x->nlookup - n;
  editor_.ns().maybe_erase(*x);
}

void WritableBackend::lookup_ref(Ino ino) {
  std::lock_guard lk(mu_);
  if (MemberNode* x = editor_.ns().find(ino)) ++x->nlookup;
}

Entry WritableBackend::getattr(Ino ino) {
  std::lock_guard lk(mu_);
  editor_.reap_retired();
  return entry_of(editor_.ns().node(ino));
}

void WritableBackend::readdir(Ino ino, uint64_t offset, const std::function<bool(const DirEntryOut&, uint64_t)>& emit) {
  // Entries are collected under the lock, emitted without it (emit calls lookup_ref), a batch at a
  // time: a reply holds a few dozen, and collecting all the rest of a folder of 300,000 members
  // for each reply took 157 MB and time quadratic in the folder's size (issue 19).
  constexpr size_t kBatch = 128;
  for (bool first = true;; first = false) {
    std::vector<std::pair<DirEntryOut, uint64_t>> out;
    bool more = false;
    {
      std::lock_guard lk(mu_);
      MemberTree& ns = editor_.ns();
      // A later batch ends the reply quietly if the folder went meanwhile: entries already given
      // hold lookup references, so the reply must not turn into an error.
      MemberNode* dp = ns.find(ino);
      if (!first && (!dp || !dp->lists())) return;
      MemberNode& d = first ? ns.folder_node(ino) : *dp;
      if (offset == 0) out.emplace_back(DirEntryOut{".", stat_of(d)}, 1);
      if (offset <= 1) out.emplace_back(DirEntryOut{"..", stat_of(ns.node(d.parent))}, 2);
      if (const ViewBody* v = d.view()) {
        // Offsets of a view folder: 2 + the child's position in the (immutable) tree.
        uint64_t off = 2;
        for (const auto& [name, cid] : v->tree_node().children) {
          if (off >= offset) {
            if (out.size() >= kBatch) {
              more = true;
              break;
            }
            out.emplace_back(DirEntryOut{name, stat_of(ns.view_child(d, cid))}, off + 1);
          }
          ++off;
        }
      } else {
        // Offsets of a namespace folder: each child's cookie, stable while entries come and go.
        const FolderBody& f = *d.folder();
        for (auto it = f.order.lower_bound(std::max<uint64_t>(offset, 2)); it != f.order.end(); ++it) {
          if (out.size() >= kBatch) {
            more = true;
            break;
          }
          MemberNode& c = ns.node(f.children.at(*it->second).ino);
          if (ns.visible(c)) out.emplace_back(DirEntryOut{*it->second, stat_of(c)}, it->first + 1);
        }
      }
    }
    for (const auto& [e, next] : out) {
      if (!emit(e, next)) return;
      offset = next;
    }
    if (!more) return;
  }
}

OpenResult WritableBackend::open(Ino ino, int flags) {
  std::lock_guard lk(mu_);
  editor_.reap_retired();
  MemberNode& n = editor_.ns().node(ino);
  bool writing = (flags & O_ACCMODE) != O_RDONLY;
  if (n.lists()) throw SysError(EISDIR);
  if (n.is_view()) {
    if (writing || (flags & O_TRUNC)) throw SysError(EROFS);
  } else if (writing && (flags & O_TRUNC)) {
    editor_.truncate_on_open(n);
  }
  ++n.opens;
  OpenResult r;
  r.keep_cache = true;  // every change passes through this mount, so the kernel's cache stays right
  return r;
}

void WritableBackend::read(Ino ino, uint64_t fh, uint64_t off, size_t size, ReadResult& out) {
  std::lock_guard lk(mu_);
  MemberNode& n = editor_.ns().node(ino);
  if (n.lists()) throw SysError(EISDIR);
  if (const ViewBody* v = n.view()) {
    read_source(*v->tree_node().data, off, size, out);
    return;
  }
  const FileBody& f = *n.file();
  if (f.copied_up()) {
    if (off >= f.size || size == 0) return;
    size_t len = static_cast<size_t>(std::min<uint64_t>(size, f.size - off));
    out.segments.push_back(ReadSegment{f.fd.get(), off, len, 0});
    return;
  }
  read_source(*f.base, off, size, out);
}

void WritableBackend::release(Ino ino, uint64_t fh) {
  std::lock_guard lk(mu_);
  MemberNode* n = editor_.ns().find(ino);
  if (!n) return;
  if (n->opens) --n->opens;
  editor_.ns().maybe_erase(*n);
}

struct statvfs WritableBackend::statfs() {
  struct statvfs s {};
  if (::statvfs(io::dir_of(opts_.archive_path).c_str(), &s) != 0) throw SysError(errno);
  s.f_flag &= ~static_cast<unsigned long>(ST_RDONLY);
  s.f_namemax = 255;
  return s;
}

Entry WritableBackend::setattr(Ino ino, const SetAttrRequest& req, const uint64_t* fh) {
  std::lock_guard lk(mu_);
  MemberNode& n = editor_.ns().node(ino);
  if (n.is_view()) throw SysError(EROFS);
  if ((req.set_uid && req.uid != opts_.uid) || (req.set_gid && req.gid != opts_.gid)) throw SysError(EPERM);
  if (req.set_size) editor_.truncate(n, req.size);
  if (req.set_mode) editor_.set_mode(n, req.mode);
  if (req.set_mtime || req.set_atime)
    editor_.set_times(n, req.set_atime ? &req.atime : nullptr, req.set_mtime ? &req.mtime : nullptr);
  return entry_of(n);
}

size_t WritableBackend::write(Ino ino, uint64_t fh, uint64_t off, const char* data, size_t size) {
  std::lock_guard lk(mu_);
  return editor_.write(editor_.ns().node(ino), off, data, size);
}

Entry WritableBackend::create(Ino parent, std::string_view name, mode_t mode, int flags, OpenResult& out) {
  std::lock_guard lk(mu_);
  MemberTree& ns = editor_.ns();
  MemberNode& d = ns.node(parent);
  editor_.check_mutable_dir(d);
  Editor::check_name(name);
  out.keep_cache = true;
  if (MemberNode* c = ns.child(d, name); c && ns.visible(*c)) {
    if (flags & O_EXCL) throw SysError(EEXIST);
    if (c->is_folder()) throw SysError(EISDIR);
    if (c->is_view()) throw SysError(EROFS);
    if ((flags & O_TRUNC) && (flags & O_ACCMODE) != O_RDONLY) editor_.truncate_on_open(*c);
    ++c->opens;
    ++c->nlookup;
    return entry_of(*c);
  }
  MemberNode& n = editor_.new_file(editor_.dir_for_new_entry(parent, name), std::string(name), mode);
  ++n.opens;
  ++n.nlookup;
  return entry_of(n);
}

Entry WritableBackend::mknod(Ino parent, std::string_view name, mode_t mode, dev_t rdev) {
  if (!S_ISREG(mode)) throw SysError(EPERM);
  std::lock_guard lk(mu_);
  MemberNode& n = editor_.new_file(editor_.dir_for_new_entry(parent, name), std::string(name), mode);
  ++n.nlookup;
  return entry_of(n);
}

Entry WritableBackend::mkdir(Ino parent, std::string_view name, mode_t mode) {
  std::lock_guard lk(mu_);
  MemberNode& n = editor_.new_folder(editor_.dir_for_new_entry(parent, name), std::string(name), mode);
  ++n.nlookup;
  return entry_of(n);
}

void WritableBackend::unlink(Ino parent, std::string_view name) {
  std::lock_guard lk(mu_);
  editor_.unlink(parent, name);
}

void WritableBackend::rmdir(Ino parent, std::string_view name) {
  std::lock_guard lk(mu_);
  editor_.rmdir(parent, name);
}

void WritableBackend::rename(Ino parent, std::string_view name, Ino newparent, std::string_view newname, unsigned flags) {
  constexpr unsigned kNoReplace = 1;  // RENAME_NOREPLACE; RENAME_EXCHANGE and RENAME_WHITEOUT are refused
  if (flags & ~kNoReplace) throw SysError(EINVAL);
  std::lock_guard lk(mu_);
  editor_.rename(parent, name, newparent, newname, flags & kNoReplace);
}

Entry WritableBackend::symlink(std::string_view, Ino, std::string_view) { throw SysError(EPERM); }
Entry WritableBackend::link(Ino, Ino, std::string_view) { throw SysError(EPERM); }

void WritableBackend::flush(Ino ino, uint64_t fh) {
  std::lock_guard lk(mu_);
  if (MemberNode* n = editor_.ns().find(ino)) editor_.flush(*n);
}

void WritableBackend::fsync(Ino ino, uint64_t fh, bool datasync) {
  std::lock_guard lk(mu_);
  editor_.fsync(editor_.ns().node(ino), datasync);
}

void WritableBackend::setxattr(Ino ino, std::string_view name, std::string_view value, int flags) {
  if (ino != kRootIno || name != "user.nemofs.commit") throw SysError(ENOTSUP);
  std::lock_guard lk(mu_);
  CommitOutcome o = editor_.commit(false);
  if (opts_.observer) opts_.observer->commit_outcome(o.ok, o.message);
  if (!o.ok) throw SysError(o.err);
}

size_t WritableBackend::pending_edits() {
  std::lock_guard lk(mu_);
  return editor_.pending_edits();
}

CommitOutcome WritableBackend::commit() {
  std::lock_guard lk(mu_);
  return editor_.commit(false);
}

void WritableBackend::destroy() {
  std::lock_guard lk(mu_);
  outcome_ = editor_.finish();
}

}  // namespace nemofs
