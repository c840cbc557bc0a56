#include "fs/writable_backend.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <set>
#include <system_error>
#include <unordered_set>

#include "formats/core/errors.h"
#include "formats/gzip/gzip_index.h"
#include "fs/commit.h"
#include "fs/state.h"

namespace nemofs {
namespace {

int64_t now_ns() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

timespec to_ts(int64_t ns) {
  timespec ts{};
  ts.tv_sec = static_cast<time_t>(ns / 1000000000);
  ts.tv_nsec = static_cast<long>(ns % 1000000000);
  if (ts.tv_nsec < 0) {
    ts.tv_nsec += 1000000000;
    ts.tv_sec -= 1;
  }
  return ts;
}

int64_t ts_ns(const timespec& ts) { return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec; }

// A member's mtime in ns: the pax record keeps the fraction ("1795667985.5759032").
int64_t entry_mtime_ns(const TarEntry& e) {
  int64_t ns = e.mtime * 1000000000;
  auto dot = e.mtime_text.find('.');
  if (dot != std::string::npos && e.mtime_text[0] != '-') {
    std::string frac = e.mtime_text.substr(dot + 1, 9);
    bool digits = !frac.empty() && std::all_of(frac.begin(), frac.end(), [](char c) { return c >= '0' && c <= '9'; });
    if (digits) {
      frac.append(9 - frac.size(), '0');
      ns += std::stoll(frac);
    }
  }
  return ns;
}

std::string join(const std::string& dir, const std::string& name) { return dir.empty() ? name : dir + "/" + name; }

std::string human(uint64_t bytes) {
  char buf[32];
  if (bytes >= (1ull << 30)) std::snprintf(buf, sizeof buf, "%.2f GB", bytes / 1e9);
  else if (bytes >= (1ull << 20)) std::snprintf(buf, sizeof buf, "%.1f MB", bytes / 1e6);
  else std::snprintf(buf, sizeof buf, "%llu bytes", static_cast<unsigned long long>(bytes));
  return buf;
}

[[noreturn]] void throw_errno(int err) { throw FsError(err ? err : EIO); }

}  // namespace

// ---------------------------------------------------------------------------------------------
// Construction: the archive, its lock, the namespace, the overlay.

std::shared_ptr<WritableBackend::Generation> WritableBackend::make_generation(Checkpoint&& cp, const std::string& path) {
  auto g = std::make_shared<Generation>();
  g->path = path;
  g->cp = std::move(cp);
  g->nemo = std::static_pointer_cast<NemoArchive>(g->cp.keepalive);
  if (!g->nemo) throw std::runtime_error("internal: the .nemo index is missing");
  // A plain tar is its own stream; a gzip .nemo's members lie in the GzipSource over the file.
  g->stream = g->nemo->archive;
  const ByteSource* file = g->stream.get();
  if (const auto* gz = dynamic_cast<const GzipSource*>(file)) {
    g->gzip = true;
    file = gz->compressed().get();
  }
  auto* fs = dynamic_cast<const FileSource*>(file);
  if (!fs) throw std::runtime_error("internal: the archive is not a plain file");
  g->fd = fs->fd();
  g->identity = ArchiveIdentity::of_fd(g->fd);
  g->style = TarStyle::of_archive(*g->nemo->archive, g->nemo->index);
  struct stat st {};
  ::fstat(g->fd, &st);
  g->stat = std::make_unique<TreeBackend>(g->cp.tree, st.st_mtim.tv_sec, opts_.uid, opts_.gid);
  const auto& entries = g->nemo->index.entries;
  const int64_t archive_mtime = ts_ns(st.st_mtim);
  g->members[""] = BaseMember{-1, true, 0755, archive_mtime, nullptr};
  for (size_t i = 0; i < entries.size(); ++i) {
    const TarEntry& e = entries[i];
    if (e.type != TarType::Dir) continue;
    std::string p;
    try {
      p = normalize_member_name(e.name, e.header_offset);
    } catch (...) {
      continue;
    }
    if (p.empty()) g->members[""] = BaseMember{static_cast<int>(i), true, e.mode & 07777, entry_mtime_ns(e), nullptr};
  }
  for (const auto& [p, i] : g->nemo->member_of_path) {
    const TarEntry& e = entries[i];
    BaseMember m{static_cast<int>(i), e.type == TarType::Dir, e.mode & 07777, entry_mtime_ns(e), nullptr};
    if (!m.dir) {
      auto id = g->cp.tree.resolve(p);
      if (id && g->cp.tree.node(*id).type == NodeType::File) m.data = g->cp.tree.node(*id).data;
      else continue;
    }
    g->members[p] = m;
    // Folders the archive implies without a header of their own.
    for (auto s = p.rfind('/'); s != std::string::npos; s = p.rfind('/', s - 1)) {
      std::string anc = p.substr(0, s);
      if (!g->members.count(anc)) g->members[anc] = BaseMember{-1, true, 0755, archive_mtime, nullptr};
      if (s == 0) break;
    }
  }
  return g;
}

WritableBackend::WritableBackend(Checkpoint&& cp, WritableOptions opts)
    : opts_(std::move(opts)), overlay_(opts_.archive_path) {
  gen_ = make_generation(std::move(cp), opts_.archive_path);
  lock_fd_ = ::open(opts_.archive_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (lock_fd_ < 0) throw std::runtime_error(std::string("cannot open the archive: ") + std::strerror(errno));
  if (::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    int e = errno;
    ::close(lock_fd_);
    lock_fd_ = -1;
    if (e == EWOULDBLOCK)
      throw std::runtime_error("already mounted writable by another nemofs mount (unmount it first, or mount with -o ro)");
    throw std::runtime_error(std::string("cannot lock the archive: ") + std::strerror(e));
  }
  if (!ArchiveIdentity::of_fd(lock_fd_).same_archive(gen_->identity))
    throw std::runtime_error("the archive changed while it was being mounted; try again");
  remove_stale_temporaries(opts_.archive_path);
  if (!opts_.output.empty()) remove_stale_temporaries(opts_.output);
  build_namespace();
  if (overlay_.exists()) {
    std::optional<Journal> j;
    try {
      j = overlay_.load();
    } catch (const std::exception& e) {
      throw std::runtime_error(std::string("the pending edits cannot be read: ") + e.what() +
                               " (mount with -o ro, or move " + overlay_.dir() + " away)");
    }
    if (!j) {
      overlay_.remove_all();  // a crash before the first journal: nothing was recorded
    } else if (j->committing && j->committing->same_archive(gen_->identity)) {
      overlay_.remove_all();  // a commit renamed its result into place, then was interrupted
    } else if (j->base.same_archive(gen_->identity)) {
      apply_journal(*j);
    } else {
      throw std::runtime_error("the archive changed since the pending edits in " + overlay_.dir() +
                               " were made (mount with -o ro to look at it, or move that folder away to drop the edits)");
    }
  }
}

WritableBackend::~WritableBackend() {
  for (auto& [ino, n] : nodes_)
    if (n->fd >= 0) ::close(n->fd);
  for (int fd : retired_fds_) ::close(fd);
  if (lock_fd_ >= 0) ::close(lock_fd_);
}

Ino WritableBackend::new_node(Kind k) {
  Ino ino = next_ino_++;
  auto n = std::make_unique<WNode>();
  n->ino = ino;
  n->kind = k;
  nodes_[ino] = std::move(n);
  return ino;
}

void WritableBackend::attach(WNode& dir, const std::string& name, WNode& n) {
  uint64_t cookie = dir.next_cookie++;
  dir.children[name] = Child{n.ino, cookie};
  dir.order[cookie] = name;
  n.parent = dir.ino;
  n.name = name;
  n.linked = true;
}

void WritableBackend::detach(WNode& n) {
  if (!n.linked) return;
  WNode& d = node(n.parent);
  auto it = d.children.find(n.name);
  if (it != d.children.end() && it->second.ino == n.ino) {
    d.order.erase(it->second.cookie);
    d.children.erase(it);
  }
  n.linked = false;
}

void WritableBackend::drop(WNode& n) {
  if (n.data >= 0) {
    overlay_.remove_data(n.data);
    n.data = -1;  // the fd stays open for handles that still use it
  }
  if (n.kind == Kind::Dir) {
    // Only empty folders are dropped at run time; at load time whole subtrees go.
    std::vector<Ino> kids;
    for (auto& [name, c] : n.children) kids.push_back(c.ino);
    for (Ino k : kids) {
      WNode& c = node(k);
      detach(c);
      drop(c);
    }
  }
  maybe_erase(n);
}

void WritableBackend::maybe_erase(WNode& n) {
  if (n.linked || n.nlookup || n.opens || n.ino == kRootIno) return;
  if (n.kind == Kind::View) return;  // view nodes are cheap and may be looked up again
  if (n.fd >= 0) ::close(n.fd);
  nodes_.erase(n.ino);
}

void WritableBackend::add_view_roots(WNode& dir, NodeId tree_dir) {
  const Tree& t = gen_->cp.tree;
  std::string base = path_of(dir);
  for (const auto& [name, cid] : t.node(tree_dir).children) {
    std::string p = join(base, name);
    if (gen_->members.count(p)) continue;
    if (name.size() <= 8 || name.compare(name.size() - 8, 8, ".tensors") != 0) continue;
    if (dir.children.count(name)) continue;  // a namespace entry of that name wins
    Ino ino = new_node(Kind::View);
    WNode& v = *nodes_[ino];
    v.vgen = gen_;
    v.vtree = &t;
    v.vstat = gen_->stat.get();
    v.vid = cid;
    v.view_of = p.substr(0, p.size() - 8);
    view_inos_[{&t, cid}] = ino;
    attach(dir, name, v);
  }
}

void WritableBackend::build_namespace() {
  auto root = std::make_unique<WNode>();
  root->ino = kRootIno;
  root->kind = Kind::Dir;
  root->parent = kRootIno;
  root->origin = std::string();
  const BaseMember& rm = gen_->members.at("");
  root->mode = rm.mode;
  root->mtime_ns = rm.mtime_ns;
  nodes_[kRootIno] = std::move(root);
  const Tree& t = gen_->cp.tree;
  std::function<void(WNode&, NodeId)> fill = [&](WNode& dir, NodeId tid) {
    std::string base = path_of(dir);
    for (const auto& [name, cid] : t.node(tid).children) {
      std::string p = join(base, name);
      auto it = gen_->members.find(p);
      if (it == gen_->members.end()) continue;
      const BaseMember& m = it->second;
      Ino ino = new_node(m.dir ? Kind::Dir : Kind::File);
      WNode& n = *nodes_[ino];
      n.origin = p;
      n.mode = m.mode;
      n.mtime_ns = m.mtime_ns;
      if (!m.dir) {
        n.base = m.data;
        n.size = m.data->size();
      }
      attach(dir, name, n);
      if (m.dir) fill(n, cid);
    }
    add_view_roots(dir, tid);
  };
  fill(*nodes_[kRootIno], Tree::kRoot);
}

void WritableBackend::apply_journal(const Journal& j) {
  auto erase_subtree = [&](WNode& n) {
    detach(n);
    std::function<void(WNode&)> rec = [&](WNode& x) {
      std::vector<Ino> kids;
      for (auto& [nm, c] : x.children) kids.push_back(c.ino);
      for (Ino k : kids) rec(node(k));
      if (x.fd >= 0) ::close(x.fd);
      nodes_.erase(x.ino);
    };
    rec(n);
  };
  for (const auto& p : j.deleted) {
    WNode* n = resolve(p);
    if (n && n->ino != kRootIno) erase_subtree(*n);
  }
  std::vector<int64_t> keep;
  for (const auto& jn : j.nodes) {
    if (jn.path.empty()) {
      WNode& r = node(kRootIno);
      r.mode = jn.mode;
      r.mtime_ns = jn.mtime_ns;
      r.origin = jn.origin;
      continue;
    }
    std::string parent_path = jn.path.find('/') == std::string::npos ? "" : jn.path.substr(0, jn.path.rfind('/'));
    std::string name = jn.path.substr(jn.path.rfind('/') == std::string::npos ? 0 : jn.path.rfind('/') + 1);
    WNode* parent = resolve(parent_path);
    if (!parent || parent->kind != Kind::Dir)
      throw std::runtime_error("pending edits are inconsistent: no folder for '" + jn.path + "' (move " + overlay_.dir() + " away)");
    WNode* existing = child(*parent, name);
    if (existing && existing->kind == Kind::Dir && jn.dir) {
      existing->origin = jn.origin;
      existing->mode = jn.mode;
      existing->mtime_ns = jn.mtime_ns;
      continue;
    }
    if (existing) erase_subtree(*existing);
    Ino ino = new_node(jn.dir ? Kind::Dir : Kind::File);
    WNode& n = *nodes_[ino];
    n.origin = jn.origin;
    n.mode = jn.mode;
    n.mtime_ns = jn.mtime_ns;
    if (!jn.dir) {
      if (jn.data >= 0) {
        n.fd = overlay_.open_data(jn.data);
        if (n.fd < 0)
          throw std::runtime_error("pending edits are incomplete: " + overlay_.data_path(jn.data) + " is missing");
        struct stat st {};
        ::fstat(n.fd, &st);
        n.data = jn.data;
        n.size = static_cast<uint64_t>(st.st_size);
        keep.push_back(jn.data);
      } else {
        auto it = jn.origin ? gen_->members.find(*jn.origin) : gen_->members.end();
        if (it == gen_->members.end() || it->second.dir)
          throw std::runtime_error("pending edits refer to a member the archive does not have: '" + jn.path + "'");
        n.base = it->second.data;
        n.size = n.base->size();
      }
    }
    attach(*parent, name, n);
  }
  next_data_ = std::max(next_data_, j.next_data);
  overlay_.remove_unreferenced(keep);
  last_pending_ = count_pending(diff());
}

// ---------------------------------------------------------------------------------------------
// Namespace helpers.

WritableBackend::WNode& WritableBackend::node(Ino ino) {
  auto it = nodes_.find(ino);
  if (it == nodes_.end()) throw FsError(ESTALE);
  if (it->second->kind == Kind::View && !it->second->vtree) throw FsError(ESTALE);  // a view of an old archive
  return *it->second;
}

WritableBackend::WNode& WritableBackend::dir_node(Ino ino) {
  WNode& n = node(ino);
  if (n.kind == Kind::File) throw FsError(ENOTDIR);
  if (n.kind == Kind::View && n.vtree->node(n.vid).type != NodeType::Dir) throw FsError(ENOTDIR);
  return n;
}

WritableBackend::WNode* WritableBackend::child(WNode& dir, std::string_view name) {
  auto it = dir.children.find(name);
  if (it == dir.children.end()) return nullptr;
  return &node(it->second.ino);
}

WritableBackend::WNode* WritableBackend::resolve(const std::string& path) {
  WNode* n = &node(kRootIno);
  size_t i = 0;
  while (i < path.size()) {
    size_t j = path.find('/', i);
    if (j == std::string::npos) j = path.size();
    if (n->kind != Kind::Dir) return nullptr;
    n = child(*n, std::string_view(path).substr(i, j - i));
    if (!n || n->kind == Kind::View) return nullptr;
    i = j + 1;
  }
  return n;
}

std::string WritableBackend::path_of(const WNode& n) const {
  std::vector<const std::string*> parts;
  const WNode* x = &n;
  while (x->ino != kRootIno) {
    parts.push_back(&x->name);
    auto it = nodes_.find(x->parent);
    if (it == nodes_.end()) break;
    x = it->second.get();
  }
  std::string out;
  for (auto it = parts.rbegin(); it != parts.rend(); ++it) {
    if (!out.empty()) out += '/';
    out += **it;
  }
  return out;
}

bool WritableBackend::identical(const WNode& n) const {
  if (n.kind == Kind::View) return true;
  if (!n.origin || n.fd >= 0) return false;
  auto it = gen_->members.find(*n.origin);
  if (it == gen_->members.end()) return false;
  const BaseMember& m = it->second;
  if (m.dir != (n.kind == Kind::Dir)) return false;
  if (!n.linked || path_of(n) != *n.origin) return false;
  return n.mode == m.mode && n.mtime_ns == m.mtime_ns;
}

bool WritableBackend::subtree_identical(const WNode& n) const {
  if (!identical(n)) return false;
  if (n.kind != Kind::Dir) return true;
  size_t members = 0;
  for (const auto& [name, c] : n.children) {
    const WNode& k = *nodes_.at(c.ino);
    if (k.kind == Kind::View) continue;
    ++members;
    if (!subtree_identical(k)) return false;
  }
  // Nothing deleted from it either.
  std::string p = path_of(n) + "/";
  size_t base_kids = 0;
  for (const auto& [path, m] : gen_->members)
    if (path.size() > p.size() && path.compare(0, p.size(), p) == 0 && path.find('/', p.size()) == std::string::npos)
      ++base_kids;
  return base_kids == members;
}

bool WritableBackend::visible(const WNode& n) {
  if (n.kind != Kind::View || n.view_of.empty()) return true;
  if (n.vgen.get() != static_cast<void*>(gen_.get())) return false;
  WNode* m = resolve(n.view_of);
  return m && subtree_identical(*m);
}

bool WritableBackend::junk(const WNode& n) const {
  if (opts_.commit_junk) return false;
  const WNode* x = &n;
  while (x->ino != kRootIno) {
    if (is_junk_name(x->name)) return true;
    auto it = nodes_.find(x->parent);
    if (it == nodes_.end()) break;
    x = it->second.get();
  }
  return false;
}

int64_t WritableBackend::mtime_of(const WNode& n) {
  if (n.fd >= 0) {
    struct stat st {};
    if (::fstat(n.fd, &st) == 0) return ts_ns(st.st_mtim);
  }
  return n.mtime_ns;
}

struct stat WritableBackend::stat_of(const WNode& n) {
  if (n.kind == Kind::View) {
    struct stat st = n.vstat->stat_of(n.vid);
    st.st_ino = n.ino;
    return st;
  }
  struct stat st {};
  st.st_ino = n.ino;
  st.st_uid = opts_.uid;
  st.st_gid = opts_.gid;
  st.st_blksize = 4096;
  timespec mt = to_ts(mtime_of(n));
  st.st_mtim = st.st_atim = st.st_ctim = mt;
  if (n.kind == Kind::Dir) {
    st.st_mode = S_IFDIR | (n.mode & 07777);
    nlink_t links = 2;
    for (const auto& [name, c] : n.children) {
      const WNode& k = *nodes_.at(c.ino);
      if (k.kind == Kind::Dir || k.kind == Kind::View) ++links;
    }
    st.st_nlink = links;
    st.st_size = 4096;
    st.st_blocks = 8;
  } else {
    st.st_mode = S_IFREG | (n.mode & 07777);
    st.st_nlink = n.linked ? 1 : 0;
    st.st_size = static_cast<off_t>(n.size);
    st.st_blocks = static_cast<blkcnt_t>((n.size + 511) / 512);
  }
  return st;
}

namespace {
constexpr double kMutableTimeout = 1.0;
}

Entry WritableBackend::entry_of(WNode& n) {
  bool inner_view = n.kind == Kind::View && n.view_of.empty();
  // Every change passes through this mount, and the kernel updates or invalidates what it cached
  // on each of its own write/setattr/rename/unlink replies, so a short cache is safe and saves a
  // round trip per stat and per warm read (ls -l, random reads).
  // A view's top folder appears and disappears with its member's edits: never cached.
  bool view_top = n.kind == Kind::View && !n.view_of.empty();
  double t = inner_view ? TreeBackend::kTimeout : view_top ? 0.0 : kMutableTimeout;
  return Entry{stat_of(n), t, t};
}

WritableBackend::WNode& WritableBackend::materialise_view_child(WNode& dir, NodeId id) {
  auto key = std::make_pair(static_cast<const void*>(dir.vtree), id);
  auto it = view_inos_.find(key);
  if (it != view_inos_.end()) {
    auto nt = nodes_.find(it->second);
    if (nt != nodes_.end()) return *nt->second;
  }
  Ino ino = new_node(Kind::View);
  WNode& v = *nodes_[ino];
  v.vgen = dir.vgen;
  v.vtree = dir.vtree;
  v.vstat = dir.vstat;
  v.vid = id;
  v.parent = dir.ino;
  v.name = dir.vtree->node(id).name;
  view_inos_[key] = ino;
  return v;
}

void WritableBackend::check_mutable_dir(WNode& dir) {
  if (dir.kind == Kind::View) throw FsError(EROFS);
  if (dir.kind != Kind::Dir) throw FsError(ENOTDIR);
  if (!dir.linked) throw FsError(ENOENT);
}

void WritableBackend::check_name(std::string_view name) {
  if (name.empty() || name == "." || name == ".." || name.find('/') != std::string_view::npos) throw FsError(EINVAL);
  if (name.size() > 255) throw FsError(ENAMETOOLONG);
}

// ---------------------------------------------------------------------------------------------
// Journal.

Journal WritableBackend::diff() {
  Journal j;
  j.base = gen_->identity;
  j.next_data = next_data_;
  std::unordered_set<std::string> present;
  std::function<void(const WNode&, const std::string&)> walk = [&](const WNode& n, const std::string& p) {
    present.insert(p);
    if (!identical(n)) {
      JournalNode jn;
      jn.path = p;
      jn.dir = n.kind == Kind::Dir;
      jn.origin = n.origin;
      jn.data = n.fd >= 0 ? n.data : -1;
      jn.mode = n.mode;
      jn.mtime_ns = n.mtime_ns;
      j.nodes.push_back(std::move(jn));
    }
    for (const auto& [name, c] : n.children) {
      const WNode& k = *nodes_.at(c.ino);
      if (k.kind == Kind::View) continue;
      walk(k, join(p, name));
    }
  };
  walk(node(kRootIno), "");
  for (const auto& [p, m] : gen_->members)
    if (!p.empty() && !present.count(p)) j.deleted.push_back(p);
  std::sort(j.deleted.begin(), j.deleted.end());
  return j;
}

size_t WritableBackend::count_pending(const Journal& j) {
  size_t n = j.deleted.size();
  for (const auto& jn : j.nodes) {
    bool is_junk = false;
    if (!opts_.commit_junk) {
      size_t i = 0;
      while (i <= jn.path.size() && !is_junk) {
        size_t k = jn.path.find('/', i);
        if (k == std::string::npos) k = jn.path.size();
        is_junk = is_junk_name(jn.path.substr(i, k - i));
        i = k + 1;
      }
    }
    if (!is_junk) ++n;
  }
  return n;
}

void WritableBackend::note_pending(size_t n) {
  if (last_pending_ && *last_pending_ == n) return;
  last_pending_ = n;
  try {
    if (auto st = read_state(opts_.mountpoint)) {
      (*st)["pending_edits"] = n;
      write_state(opts_.mountpoint, *st);
    }
  } catch (...) {
  }
}

void WritableBackend::save_journal() {
  Journal j = diff();
  try {
    overlay_.save(j);
  } catch (const std::system_error& e) {
    throw FsError(e.code().value(), e.what());
  } catch (const std::exception& e) {
    throw FsError(EIO, e.what());
  }
  note_pending(count_pending(j));
}

// ---------------------------------------------------------------------------------------------
// File contents.

void WritableBackend::copy_up(WNode& n, bool keep_bytes) {
  int64_t id = next_data_++;
  int fd;
  try {
    fd = overlay_.create_data(id);
  } catch (const std::system_error& e) {
    throw FsError(e.code().value());
  }
  auto fail = [&](int err) {
    ::close(fd);
    overlay_.remove_data(id);
    throw_errno(err);
  };
  uint64_t size = keep_bytes ? n.size : 0;
  if (size) {
    auto fr = n.base->file_range(0, size);
    uint64_t done = 0;
    if (fr) {
      while (done < size) {
        loff_t in = static_cast<loff_t>(fr->offset + done), out = static_cast<loff_t>(done);
        ssize_t c = ::copy_file_range(fr->fd, &in, fd, &out, static_cast<size_t>(std::min<uint64_t>(size - done, 1ull << 30)), 0);
        if (c < 0 && errno == EINTR) continue;
        if (c <= 0) break;  // fall back to read/write below
        done += static_cast<uint64_t>(c);
      }
    }
    std::vector<char> buf(1 << 20);
    while (done < size) {
      size_t want = static_cast<size_t>(std::min<uint64_t>(size - done, buf.size()));
      size_t got;
      try {
        got = n.base->read_at(done, buf.data(), want);
      } catch (const IoError& e) {
        fail(e.error_number());
      }
      if (got != want) fail(EIO);
      size_t w = 0;
      while (w < got) {
        ssize_t k = ::pwrite(fd, buf.data() + w, got - w, static_cast<off_t>(done + w));
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) fail(errno);
        w += static_cast<size_t>(k);
      }
      done += got;
    }
  }
  if (::fdatasync(fd) != 0) fail(errno);
  timespec times[2] = {to_ts(n.mtime_ns), to_ts(n.mtime_ns)};
  ::futimens(fd, times);
  n.fd = fd;
  n.data = id;
  n.base.reset();
  n.size = size;
  if (n.linked) {
    save_journal();
  } else {
    overlay_.remove_data(id);
    n.data = -1;
  }
}

void WritableBackend::set_size(WNode& n, uint64_t size) {
  if (::ftruncate(n.fd, static_cast<off_t>(size)) != 0) throw_errno(errno);
  n.size = size;
  n.dirty = true;
}

// ---------------------------------------------------------------------------------------------
// Operations.

void WritableBackend::reap_retired(bool force) {
  if (retired_.empty() && retired_fds_.empty()) return;
  if (!force && std::chrono::steady_clock::now() - retired_at_ < std::chrono::seconds(2)) return;
  retired_.clear();
  for (int fd : retired_fds_) ::close(fd);
  retired_fds_.clear();
}

Entry WritableBackend::lookup(Ino parent, std::string_view name) {
  std::lock_guard lk(mu_);
  reap_retired();
  WNode& d = dir_node(parent);
  if (d.kind == Kind::View) {
    auto id = d.vtree->lookup(d.vid, name);
    if (!id) throw FsError(ENOENT);
    WNode& c = materialise_view_child(d, *id);
    ++c.nlookup;
    return entry_of(c);
  }
  WNode* c = child(d, name);
  if (!c || !visible(*c)) throw FsError(ENOENT);
  ++c->nlookup;
  return entry_of(*c);
}

void WritableBackend::forget(Ino ino, uint64_t n) {
  std::lock_guard lk(mu_);
  auto it = nodes_.find(ino);
  if (it == nodes_.end()) return;
  WNode& x = *it->second;
  x.nlookup = n >= x.nlookup ? 0 : x.nlookup - n;
  maybe_erase(x);
}

void WritableBackend::lookup_ref(Ino ino) {
  std::lock_guard lk(mu_);
  auto it = nodes_.find(ino);
  if (it != nodes_.end()) ++it->second->nlookup;
}

Entry WritableBackend::getattr(Ino ino) {
  std::lock_guard lk(mu_);
  reap_retired();
  return entry_of(node(ino));
}

void WritableBackend::readdir(Ino ino, uint64_t offset, const std::function<bool(const DirEntryOut&, uint64_t)>& emit) {
  // Entries are collected under the lock, emitted without it (emit calls lookup_ref).
  std::vector<std::pair<DirEntryOut, uint64_t>> out;
  {
    std::lock_guard lk(mu_);
    WNode& d = dir_node(ino);
    auto dot = [&](uint64_t off) {
      DirEntryOut e;
      e.name = off == 0 ? "." : "..";
      WNode& target = off == 0 ? d : node(d.parent);
      e.attr = stat_of(target);
      out.emplace_back(std::move(e), off + 1);
    };
    if (offset == 0) dot(0);
    if (offset <= 1) dot(1);
    if (d.kind == Kind::View) {
      const Node& tn = d.vtree->node(d.vid);
      uint64_t i = 0;
      for (const auto& [name, cid] : tn.children) {
        uint64_t off = 2 + i++;
        if (off < offset) continue;
        WNode& c = materialise_view_child(d, cid);
        out.emplace_back(DirEntryOut{name, stat_of(c)}, off + 1);
      }
    } else {
      for (auto it = d.order.lower_bound(std::max<uint64_t>(offset, 2)); it != d.order.end(); ++it) {
        WNode& c = node(d.children.at(it->second).ino);
        if (!visible(c)) continue;
        out.emplace_back(DirEntryOut{it->second, stat_of(c)}, it->first + 1);
      }
    }
  }
  for (const auto& [e, next] : out)
    if (!emit(e, next)) return;
}

OpenResult WritableBackend::open(Ino ino, int flags) {
  std::lock_guard lk(mu_);
  reap_retired();
  WNode& n = node(ino);
  bool writing = (flags & O_ACCMODE) != O_RDONLY;
  if (n.kind == Kind::Dir) throw FsError(EISDIR);
  if (n.kind == Kind::View) {
    if (n.vtree->node(n.vid).type == NodeType::Dir) throw FsError(EISDIR);
    if (writing || (flags & O_TRUNC)) throw FsError(EROFS);
  } else if (writing && (flags & O_TRUNC) && n.size) {
    if (n.fd < 0) copy_up(n, false);
    else set_size(n, 0);
  }
  ++n.opens;
  OpenResult r;
  r.keep_cache = true;  // every change passes through this mount, so the kernel's cache stays right
  return r;
}

void WritableBackend::read(Ino ino, uint64_t fh, uint64_t off, size_t size, ReadResult& out) {
  std::lock_guard lk(mu_);
  WNode& n = node(ino);
  if (n.kind == Kind::Dir) throw FsError(EISDIR);
  if (n.kind == Kind::View) {
    const Node& tn = n.vtree->node(n.vid);
    if (tn.type == NodeType::Dir) throw FsError(EISDIR);
    read_source(*tn.data, off, size, out);
    return;
  }
  if (n.fd >= 0) {
    if (off >= n.size || size == 0) return;
    size_t len = static_cast<size_t>(std::min<uint64_t>(size, n.size - off));
    out.segments.push_back(ReadSegment{n.fd, off, len, 0});
    return;
  }
  read_source(*n.base, off, size, out);
}

void WritableBackend::release(Ino ino, uint64_t fh) {
  std::lock_guard lk(mu_);
  auto it = nodes_.find(ino);
  if (it == nodes_.end()) return;
  WNode& n = *it->second;
  if (n.opens) --n.opens;
  maybe_erase(n);
}

struct statvfs WritableBackend::statfs() {
  struct statvfs s {};
  if (::statvfs(dir_of(opts_.archive_path).c_str(), &s) != 0) throw_errno(errno);
  s.f_flag &= ~static_cast<unsigned long>(ST_RDONLY);
  s.f_namemax = 255;
  return s;
}

Entry WritableBackend::setattr(Ino ino, const SetAttrRequest& req, const uint64_t* fh) {
  std::lock_guard lk(mu_);
  WNode& n = node(ino);
  if (n.kind == Kind::View) throw FsError(EROFS);
  if ((req.set_uid && req.uid != opts_.uid) || (req.set_gid && req.gid != opts_.gid)) throw FsError(EPERM);
  bool journal = false;
  if (req.set_size) {
    if (n.kind == Kind::Dir) throw FsError(EISDIR);
    if (n.fd < 0 && req.size != n.size) copy_up(n, req.size != 0);
    if (n.fd >= 0) set_size(n, req.size);
  }
  if (req.set_mode && (req.mode & 07777) != n.mode) {
    n.mode = req.mode & 07777;
    journal = true;
  }
  if (req.set_mtime || req.set_atime) {
    if (n.fd >= 0) {
      timespec times[2];
      times[0] = req.set_atime ? req.atime : timespec{0, UTIME_OMIT};
      times[1] = req.set_mtime ? req.mtime : timespec{0, UTIME_OMIT};
      if (::futimens(n.fd, times) != 0) throw_errno(errno);
    } else if (req.set_mtime && ts_ns(req.mtime) != n.mtime_ns) {
      n.mtime_ns = ts_ns(req.mtime);
      journal = true;
    }
  }
  if (journal) save_journal();
  return entry_of(n);
}

size_t WritableBackend::write(Ino ino, uint64_t fh, uint64_t off, const char* data, size_t size) {
  std::lock_guard lk(mu_);
  WNode& n = node(ino);
  if (n.kind == Kind::View) throw FsError(EROFS);
  if (n.kind == Kind::Dir) throw FsError(EISDIR);
  if (n.fd < 0) copy_up(n, true);
  size_t done = 0;
  while (done < size) {
    ssize_t w = ::pwrite(n.fd, data + done, size - done, static_cast<off_t>(off + done));
    if (w < 0) {
      if (errno == EINTR) continue;
      if (done) break;
      throw_errno(errno);
    }
    done += static_cast<size_t>(w);
  }
  n.size = std::max<uint64_t>(n.size, off + done);
  n.dirty = true;
  return done;
}

WritableBackend::WNode& WritableBackend::new_file(WNode& d, const std::string& name, mode_t mode) {
  int64_t id = next_data_++;
  int fd;
  try {
    fd = overlay_.create_data(id);
  } catch (const std::system_error& e) {
    throw FsError(e.code().value());
  }
  Ino ino = new_node(Kind::File);
  WNode& n = *nodes_[ino];
  n.fd = fd;
  n.data = id;
  n.mode = mode & 07777;
  n.mtime_ns = now_ns();
  attach(d, name, n);
  try {
    save_journal();
  } catch (...) {
    detach(n);
    drop(n);
    throw;
  }
  return n;
}

Entry WritableBackend::create(Ino parent, std::string_view name, mode_t mode, int flags, OpenResult& out) {
  std::lock_guard lk(mu_);
  WNode& d = node(parent);
  check_mutable_dir(d);
  check_name(name);
  if (WNode* c = child(d, name)) {
    if (visible(*c)) {
      if (flags & O_EXCL) throw FsError(EEXIST);
      if (c->kind == Kind::Dir) throw FsError(EISDIR);
      if (c->kind == Kind::View) throw FsError(EROFS);
      if ((flags & O_TRUNC) && (flags & O_ACCMODE) != O_RDONLY && c->size) {
        if (c->fd < 0) copy_up(*c, false);
        else set_size(*c, 0);
      }
      ++c->opens;
      ++c->nlookup;
      out.keep_cache = true;
      return entry_of(*c);
    }
    detach(*c);  // a hidden view
    drop(*c);
  }
  WNode& n = new_file(d, std::string(name), mode);
  ++n.opens;
  ++n.nlookup;
  out.keep_cache = true;
  return entry_of(n);
}

WritableBackend::WNode& WritableBackend::dir_for_new_entry(Ino parent, std::string_view name) {
  WNode& d = node(parent);
  check_mutable_dir(d);
  check_name(name);
  if (WNode* c = child(d, name)) {
    if (visible(*c)) throw FsError(EEXIST);
    detach(*c);  // a hidden view: the new entry replaces it
    drop(*c);
  }
  return d;
}

Entry WritableBackend::mknod(Ino parent, std::string_view name, mode_t mode, dev_t rdev) {
  if (!S_ISREG(mode)) throw FsError(EPERM);
  std::lock_guard lk(mu_);
  WNode& d = dir_for_new_entry(parent, name);
  WNode& n = new_file(d, std::string(name), mode);
  ++n.nlookup;
  return entry_of(n);
}

Entry WritableBackend::mkdir(Ino parent, std::string_view name, mode_t mode) {
  std::lock_guard lk(mu_);
  WNode& d = dir_for_new_entry(parent, name);
  Ino ino = new_node(Kind::Dir);
  WNode& n = *nodes_[ino];
  n.mode = mode & 07777;
  n.mtime_ns = now_ns();
  attach(d, std::string(name), n);
  try {
    save_journal();
  } catch (...) {
    detach(n);
    drop(n);
    throw;
  }
  ++n.nlookup;
  return entry_of(n);
}

void WritableBackend::unlink(Ino parent, std::string_view name) {
  std::lock_guard lk(mu_);
  WNode& d = node(parent);
  check_mutable_dir(d);
  WNode* c = child(d, name);
  if (!c || !visible(*c)) throw FsError(ENOENT);
  if (c->kind == Kind::View) throw FsError(EROFS);
  if (c->kind == Kind::Dir) throw FsError(EISDIR);
  detach(*c);
  save_journal();
  drop(*c);
}

void WritableBackend::rmdir(Ino parent, std::string_view name) {
  std::lock_guard lk(mu_);
  WNode& d = node(parent);
  check_mutable_dir(d);
  WNode* c = child(d, name);
  if (!c || !visible(*c)) throw FsError(ENOENT);
  if (c->kind == Kind::View) throw FsError(EROFS);
  if (c->kind != Kind::Dir) throw FsError(ENOTDIR);
  std::vector<Ino> hidden;
  for (const auto& [nm, k] : c->children) {
    WNode& x = node(k.ino);
    if (visible(x)) throw FsError(ENOTEMPTY);
    hidden.push_back(k.ino);
  }
  for (Ino h : hidden) {
    detach(node(h));
    drop(node(h));
  }
  detach(*c);
  save_journal();
  drop(*c);
}

void WritableBackend::rename(Ino parent, std::string_view name, Ino newparent, std::string_view newname, unsigned flags) {
  constexpr unsigned kNoReplace = 1, kExchange = 2;  // RENAME_NOREPLACE, RENAME_EXCHANGE
  if (flags & ~kNoReplace) throw FsError(EINVAL);  // RENAME_EXCHANGE, RENAME_WHITEOUT
  (void)kExchange;
  std::lock_guard lk(mu_);
  WNode& sd = node(parent);
  WNode& td = node(newparent);
  check_mutable_dir(sd);
  check_mutable_dir(td);
  check_name(newname);
  WNode* s = child(sd, name);
  if (!s || !visible(*s)) throw FsError(ENOENT);
  if (s->kind == Kind::View) throw FsError(EROFS);
  WNode* t = child(td, newname);
  if (t && !visible(*t)) {
    detach(*t);
    drop(*t);
    t = nullptr;
  }
  if (t == s) return;
  if (t) {
    if (flags & kNoReplace) throw FsError(EEXIST);
    if (t->kind == Kind::View) throw FsError(EROFS);
    if (s->kind == Kind::Dir) {
      if (t->kind != Kind::Dir) throw FsError(ENOTDIR);
      for (const auto& [nm, k] : t->children)
        if (visible(node(k.ino))) throw FsError(ENOTEMPTY);
    } else if (t->kind == Kind::Dir) {
      throw FsError(EISDIR);
    }
  }
  if (s->kind == Kind::Dir) {
    for (WNode* x = &td;; x = &node(x->parent)) {
      if (x == s) throw FsError(EINVAL);
      if (x->ino == kRootIno) break;
    }
  }
  if (t) detach(*t);
  detach(*s);
  attach(td, std::string(newname), *s);
  save_journal();
  if (t) drop(*t);
}

Entry WritableBackend::symlink(std::string_view, Ino, std::string_view) { throw FsError(EPERM); }
Entry WritableBackend::link(Ino, Ino, std::string_view) { throw FsError(EPERM); }

void WritableBackend::flush(Ino ino, uint64_t fh) {
  std::lock_guard lk(mu_);
  auto it = nodes_.find(ino);
  if (it == nodes_.end()) return;
  WNode& n = *it->second;
  if (n.dirty && n.fd >= 0) {
    if (::fdatasync(n.fd) != 0) throw_errno(errno);
    n.dirty = false;
  }
}

void WritableBackend::fsync(Ino ino, uint64_t fh, bool datasync) {
  std::lock_guard lk(mu_);
  WNode& n = node(ino);
  if (n.fd >= 0) {
    if ((datasync ? ::fdatasync(n.fd) : ::fsync(n.fd)) != 0) throw_errno(errno);
    n.dirty = false;
  }
}

void WritableBackend::setxattr(Ino ino, std::string_view name, std::string_view value, int flags) {
  if (ino == kRootIno && name == "user.nemofs.commit") {
    std::lock_guard lk(mu_);
    std::string msg;
    int err = 0;
    bool ok = commit_locked(msg, false, &err);
    try {
      write_result(opts_.mountpoint, ok, msg);
    } catch (...) {
    }
    if (!ok) throw FsError(err ? err : EIO);
    return;
  }
  throw FsError(ENOTSUP);
}

size_t WritableBackend::pending_edits() {
  std::lock_guard lk(mu_);
  return count_pending(diff());
}

bool WritableBackend::commit(std::string& message) {
  std::lock_guard lk(mu_);
  int err = 0;
  return commit_locked(message, false, &err);
}

void WritableBackend::destroy() {
  std::lock_guard lk(mu_);
  std::string msg;
  int err = 0;
  outcome_ok_ = commit_locked(msg, true, &err);
  outcome_ = msg;
  // The mount is over: a new writable mount may start as soon as the outcome is known.
  if (lock_fd_ >= 0) ::close(lock_fd_);
  lock_fd_ = -1;
  if (outcome_ok_) {
    // Left: at most junk, which is not kept past the mount.
    try {
      overlay_.remove_all();
    } catch (...) {
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Commit.

void WritableBackend::report_progress(uint64_t done, uint64_t total) {
  static auto last = std::chrono::steady_clock::time_point{};
  auto now = std::chrono::steady_clock::now();
  if (done != total && now - last < std::chrono::milliseconds(100)) return;
  last = now;
  try {
    nlohmann::json j{{"done", done}, {"total", total}, {"target", opts_.output.empty() ? gen_->path : opts_.output}};
    write_file_atomic(progress_file_for(opts_.mountpoint), j.dump() + "\n");
  } catch (...) {
  }
}

bool WritableBackend::commit_locked(std::string& message, bool final, int* err_out) {
  auto t0 = std::chrono::steady_clock::now();
  reap_retired();
  const std::string target = opts_.output.empty() ? gen_->path : opts_.output;
  const std::string kept = "; " + gen_->path + " is unchanged and the edits are kept (" + overlay_.dir() + ")";
  Journal j = diff();
  size_t pending = count_pending(j);
  if (pending == 0) {
    if (committed_output_) message = "committed to " + target + "; no changes since";
    else message = "no changes to commit; " + gen_->path + " is unchanged";
    return true;
  }
  auto refuse = [&](const std::string& why, int err) {
    message = why + kept;
    if (err_out) *err_out = err;
    return false;
  };
  // The archive must still be the one the edits apply to.
  {
    int fd = ::open(gen_->path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return refuse("commit refused: " + gen_->path + ": " + std::strerror(errno), errno);
    ArchiveIdentity now_id;
    try {
      now_id = ArchiveIdentity::of_fd(fd);
    } catch (const std::exception& e) {
      ::close(fd);
      return refuse(std::string("commit refused: ") + e.what(), EIO);
    }
    ::close(fd);
    if (!now_id.same_archive(gen_->identity))
      return refuse("commit refused: " + gen_->path + " changed on disk since it was mounted", ESTALE);
  }

  // The plan: original members in their order, then what is new.
  std::vector<CommitItem> items;
  std::unordered_set<Ino> emitted;
  const auto& entries = gen_->nemo->index.entries;
  auto verbatim = [&](const TarEntry& e, const std::string& label) {
    CommitItem it;
    it.kind = CommitItem::Kind::Verbatim;
    it.label = label;
    it.from = e.header_offset;
    it.to = e.end_offset;
    it.entry = e;
    items.push_back(std::move(it));
  };
  auto member = [&](WNode& n, const std::string& p) {
    CommitItem it;
    it.kind = CommitItem::Kind::Member;
    it.label = p.empty() ? "." : p;
    int64_t mt = mtime_of(n);
    timespec ts = to_ts(mt);
    it.member = TarMember{p, n.kind == Kind::Dir, n.mode, static_cast<int64_t>(ts.tv_sec),
                          static_cast<uint32_t>(ts.tv_nsec), n.kind == Kind::Dir ? 0 : n.size};
    if (n.kind == Kind::File && n.size) {
      if (n.fd >= 0) {
        it.data_fd = n.fd;
        it.data_off = 0;
      } else {
        auto fr = n.base->file_range(0, n.size);
        if (fr) {
          it.data_fd = fr->fd;
          it.data_off = fr->offset;
        } else {
          it.data_src = n.base;  // inside a gzip stream
        }
      }
    }
    it.header = tar_header(it.member, gen_->style);
    items.push_back(std::move(it));
    emitted.insert(n.ino);
  };
  try {
    for (size_t i = 0; i < entries.size(); ++i) {
      const TarEntry& e = entries[i];
      if (e.type == TarType::Symlink || e.type == TarType::Hardlink || e.type == TarType::Other) {
        verbatim(e, e.name);  // not shown, so never edited: kept as they were
        continue;
      }
      std::string p = normalize_member_name(e.name, e.header_offset);
      WNode* n = resolve(p);
      auto mit = gen_->members.find(p);
      bool winner = mit != gen_->members.end() && mit->second.entry == static_cast<int>(i);
      if (!winner) {  // an earlier duplicate (tar "last wins"): kept while its path is untouched
        if (n && identical(*n)) verbatim(e, p);
        continue;
      }
      if (!n || emitted.count(n->ino)) continue;
      if ((n->kind == Kind::Dir) != (e.type == TarType::Dir)) continue;
      if (identical(*n)) {
        verbatim(e, p);
        emitted.insert(n->ino);
      } else if (!junk(*n)) {
        member(*n, p);
      }
    }
    std::function<void(WNode&, const std::string&)> walk = [&](WNode& d, const std::string& dp) {
      for (auto& [name, c] : d.children) {
        WNode& k = node(c.ino);
        if (k.kind == Kind::View || junk(k)) continue;
        std::string p = join(dp, name);
        if (!emitted.count(k.ino)) {
          bool implicit_unchanged = false;
          if (k.kind == Kind::Dir && k.origin) {
            auto it = gen_->members.find(*k.origin);
            implicit_unchanged = it != gen_->members.end() && it->second.entry < 0 && it->second.dir &&
                                 k.mode == it->second.mode && k.mtime_ns == it->second.mtime_ns && !k.children.empty();
          }
          if (!implicit_unchanged) member(k, p);
        }
        if (k.kind == Kind::Dir) walk(k, p);
      }
    };
    WNode& root = node(kRootIno);
    if (!emitted.count(kRootIno) && !identical(root)) member(root, "");
    walk(root, "");
  } catch (const CommitError& e) {
    return refuse(std::string("commit failed: ") + e.what(), e.err());
  } catch (const std::exception& e) {
    return refuse(std::string("commit failed: ") + e.what(), EIO);
  }

  // Edited YAML must parse.
  for (const auto& it : items) {
    if (it.kind != CommitItem::Kind::Member || it.member.dir) continue;
    const std::string& p = it.member.path;
    bool yaml = (p.size() > 5 && p.compare(p.size() - 5, 5, ".yaml") == 0) ||
                (p.size() > 4 && p.compare(p.size() - 4, 4, ".yml") == 0);
    if (!yaml) continue;
    if (it.member.size > (256u << 20)) continue;  // not a config file
    std::string bytes(it.member.size, '\0');
    size_t got = 0;
    if (it.data_fd < 0 && !bytes.empty()) {
      try {
        got = it.data_src->read_at(0, bytes.data(), bytes.size());
      } catch (const std::exception& e) {
        return refuse("commit failed: cannot read " + p + ": " + e.what(), EIO);
      }
      if (got != bytes.size()) return refuse("commit failed: cannot read " + p, EIO);
    }
    while (got < bytes.size()) {
      ssize_t r = ::pread(it.data_fd, bytes.data() + got, bytes.size() - got, static_cast<off_t>(it.data_off + got));
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) return refuse("commit failed: cannot read " + p, EIO);
      got += static_cast<size_t>(r);
    }
    if (auto bad = check_yaml(p, bytes)) return refuse("commit refused: invalid YAML: " + *bad, EINVAL);
  }

  CommitRequest req;
  req.archive_fd = gen_->fd;
  req.archive_path = gen_->path;
  req.archive = gen_->stream;
  req.compression = gen_->gzip ? Compression::Gzip : Compression::None;  // gzip in, gzip out
  req.target_path = target;
  req.items = std::move(items);
  req.progress = [this](uint64_t d, uint64_t t) { report_progress(d, t); };
  const bool in_place = opts_.output.empty();
  if (in_place) {
    req.before_rename = [&](const ArchiveIdentity& result) {
      Journal jj = j;
      jj.committing = result;
      overlay_.save(jj);
    };
  }
  CommitResult res;
  try {
    res = write_archive(req);
  } catch (const CommitError& e) {
    ::unlink(progress_file_for(opts_.mountpoint).c_str());
    return refuse(std::string("commit failed: ") + e.what(), e.err());
  }
  ::unlink(progress_file_for(opts_.mountpoint).c_str());
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  char tail[96];
  std::snprintf(tail, sizeof tail, " (%s in %.1f s)", human(res.bytes).c_str(), secs);
  message = "committed " + std::to_string(pending) + (pending == 1 ? " change" : " changes") + " to " + target + tail;
  if (!in_place) {
    ::close(res.fd);
    committed_output_ = true;
    return true;
  }
  if (final) {
    // The mount is going away: the archive is final; the overlay is obsolete.
    ::close(res.fd);
    try {
      overlay_.remove_all();
    } catch (...) {
    }
    return true;
  }
  try {
    rebase_after_commit(res.fd, target);
  } catch (const std::exception& e) {
    message += "; but the mount could not switch to the new archive (" + std::string(e.what()) + "): remount it";
  }
  return true;
}

void WritableBackend::rebase_after_commit(int result_fd, const std::string& path) {
  Checkpoint cp = open_checkpoint(path);
  auto g = make_generation(std::move(cp), path);
  auto old = gen_;
  retired_.push_back(old);
  retired_at_ = std::chrono::steady_clock::now();
  gen_ = g;
  // Views of the old archive go stale (ESTALE), so nothing but retired_ keeps it open.
  for (auto& [ino, x] : nodes_) {
    if (x->kind == Kind::View && x->vgen.get() == static_cast<void*>(old.get())) {
      x->vgen.reset();
      x->vtree = nullptr;
      x->vstat = nullptr;
    }
  }
  for (auto it = view_inos_.begin(); it != view_inos_.end();) {
    if (it->first.first == static_cast<const void*>(&old->cp.tree)) it = view_inos_.erase(it);
    else ++it;
  }
  if (lock_fd_ >= 0) ::close(lock_fd_);
  lock_fd_ = result_fd;
  // Every live node now lies in the new archive (junk stays in the overlay).
  std::vector<Ino> old_views;
  std::function<void(WNode&, const std::string&)> walk = [&](WNode& n, const std::string& p) {
    std::vector<Ino> kids;
    for (auto& [name, c] : n.children) kids.push_back(c.ino);
    for (Ino k : kids) {
      WNode& c = *nodes_.at(k);
      if (c.kind == Kind::View) {
        old_views.push_back(k);
        continue;
      }
      walk(c, join(p, c.name));
    }
    if (n.kind == Kind::View) return;
    if (junk(n)) {
      if (n.kind == Kind::File && n.fd < 0) copy_up(n, true);  // off the old archive
      n.origin.reset();
      return;
    }
    auto it = g->members.find(p);
    if (it == g->members.end() || it->second.dir != (n.kind == Kind::Dir)) {
      n.origin.reset();
      return;
    }
    n.origin = p;
    n.mode = it->second.mode;
    n.mtime_ns = it->second.mtime_ns;
    if (n.kind == Kind::File) {
      if (n.fd >= 0) {
        retired_fds_.push_back(n.fd);  // replies in flight may still splice from it
        if (n.data >= 0) overlay_.remove_data(n.data);
        n.fd = -1;
        n.data = -1;
        n.dirty = false;
      }
      n.base = it->second.data;
      n.size = n.base->size();
    }
  };
  walk(node(kRootIno), "");
  for (Ino v : old_views) {
    detach(*nodes_.at(v));
  }
  // New views from the new archive's tree.
  const Tree& t = gen_->cp.tree;
  std::function<void(WNode&, NodeId)> views = [&](WNode& d, NodeId tid) {
    add_view_roots(d, tid);
    for (const auto& [name, cid] : t.node(tid).children) {
      if (t.node(cid).type != NodeType::Dir) continue;
      WNode* c = child(d, name);
      if (c && c->kind == Kind::Dir) views(*c, cid);
    }
  };
  views(node(kRootIno), Tree::kRoot);
  Journal j = diff();
  if (j.nodes.empty() && j.deleted.empty()) overlay_.remove_all();
  else overlay_.save(j);
  last_pending_.reset();
  note_pending(count_pending(j));
}

}  // namespace nemofs
