#include "fs/edit/namespace.h"

#include <algorithm>
#include <cerrno>
#include <functional>
#include <unordered_set>

#include "formats/core/errors.h"
#include "fs/edit/yaml_check.h"

namespace nemofs {
namespace {


bool is_view_name(const std::string& name) {
  return name.size() > 8 && name.compare(name.size() - 8, 8, ".tensors") == 0;
}

}  // namespace

MemberTree::MemberTree(const ArchivePtr& archive) : base_(archive) {
  auto root = std::make_unique<MemberNode>();
  root->ino = kRootIno;
  root->parent = kRootIno;
  root->origin = std::string();
  const BaseMember& rm = base_->members.at("");
  root->mode = rm.mode;
  root->mtime_ns = rm.mtime_ns;
  root->body = FolderBody{};
  nodes_[kRootIno] = std::move(root);
  const Tree& t = base_->cp.tree;
  std::function<void(MemberNode&, NodeId)> fill = [&](MemberNode& dir, NodeId tid) {
    std::string base = path_of(dir);
    for (const auto& [name, cid] : t.node(tid).children) {
      std::string p = join_path(base, name);
      auto it = base_->members.find(p);
      if (it == base_->members.end()) continue;
      const BaseMember& m = it->second;
      MemberNode& n = m.dir ? create(FolderBody{}) : create(FileBody{});
      n.origin = p;
      n.mode = m.mode;
      n.mtime_ns = m.mtime_ns;
      if (!m.dir) {
        n.file()->base = m.data;
        n.file()->size = m.data->size();
      }
      attach(dir, name, n);
      if (m.dir) fill(n, cid);
    }
    add_view_roots(dir, tid);
  };
  fill(*nodes_[kRootIno], Tree::kRoot);
}

MemberNode* MemberTree::find(Ino ino) {
  auto it = nodes_.find(ino);
  return it == nodes_.end() ? nullptr : it->second.get();
}

MemberNode& MemberTree::node(Ino ino) {
  MemberNode* n = find(ino);
  if (!n) throw SysError(ESTALE);
  if (n->is_view() && !n->view()->gen) throw SysError(ESTALE);  // a view of a retired archive
  return *n;
}

const MemberNode& MemberTree::node(Ino ino) const { return const_cast<MemberTree*>(this)->node(ino); }

MemberNode& MemberTree::folder_node(Ino ino) {
  MemberNode& n = node(ino);
  if (!n.lists()) throw SysError(ENOTDIR);
  return n;
}

MemberNode* MemberTree::child(MemberNode& dir, std::string_view name) {
  FolderBody* f = dir.folder();
  if (!f) return nullptr;
  auto it = f->children.find(name);
  if (it == f->children.end()) return nullptr;
  return &node(it->second.ino);
}

MemberNode* MemberTree::resolve(const std::string& path) {
  MemberNode* n = &node(kRootIno);
  size_t i = 0;
  while (i < path.size()) {
    size_t j = path.find('/', i);
    if (j == std::string::npos) j = path.size();
    if (!n->is_folder()) return nullptr;
    n = child(*n, std::string_view(path).substr(i, j - i));
    if (!n || n->is_view()) return nullptr;
    i = j + 1;
  }
  return n;
}

std::string MemberTree::path_of(const MemberNode& n) const {
  std::vector<const std::string*> parts;
  const MemberNode* x = &n;
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

MemberNode& MemberTree::create(decltype(MemberNode::body) body) {
  Ino ino = next_ino_++;
  auto n = std::make_unique<MemberNode>();
  n->ino = ino;
  n->body = std::move(body);
  MemberNode& ref = *n;
  nodes_[ino] = std::move(n);
  return ref;
}

void MemberTree::attach(MemberNode& dir, const std::string& name, MemberNode& n) {
  FolderBody& f = *dir.folder();
  uint64_t cookie = f.next_cookie++;
  auto it = f.children.insert_or_assign(name, FolderBody::Child{n.ino, cookie}).first;
  f.order[cookie] = &it->first;
  n.parent = dir.ino;
  n.name = name;
  n.linked = true;
}

void MemberTree::detach(MemberNode& n) {
  if (!n.linked) return;
  MemberNode* d = find(n.parent);
  FolderBody* f = d ? d->folder() : nullptr;
  if (f) {
    auto it = f->children.find(n.name);
    if (it != f->children.end() && it->second.ino == n.ino) {
      f->order.erase(it->second.cookie);
      f->children.erase(it);
    }
  }
  n.linked = false;
}

void MemberTree::drop(MemberNode& n, Overlay& overlay) {
  if (FileBody* f = n.file(); f && f->data >= 0) {
    overlay.remove_data(f->data);
    f->data = -1;  // the fd stays open for handles that still use it
  }
  if (FolderBody* f = n.folder()) {
    // Only empty folders are dropped at run time; at load time whole subtrees go.
    std::vector<Ino> kids;
    for (auto& [name, c] : f->children) kids.push_back(c.ino);
    for (Ino k : kids) {
      MemberNode& c = *find(k);
      detach(c);
      drop(c, overlay);
    }
  }
  maybe_erase(n);
}

void MemberTree::maybe_erase(MemberNode& n) {
  if (n.linked || n.nlookup || n.opens || n.ino == kRootIno) return;
  if (n.is_view()) return;  // view nodes are cheap and may be looked up again
  nodes_.erase(n.ino);  // closes its data file
}

void MemberTree::erase_subtree(MemberNode& n) {
  detach(n);
  std::function<void(MemberNode&)> rec = [&](MemberNode& x) {
    if (FolderBody* f = x.folder()) {
      std::vector<Ino> kids;
      for (auto& [nm, c] : f->children) kids.push_back(c.ino);
      for (Ino k : kids) rec(*find(k));
    }
    nodes_.erase(x.ino);
  };
  rec(n);
}

MemberNode& MemberTree::view_child(MemberNode& dir, NodeId id) {
  const ViewBody& dv = *dir.view();
  auto key = std::make_pair(static_cast<const void*>(&dv.gen->cp.tree), id);
  if (auto it = view_inos_.find(key); it != view_inos_.end())
    if (MemberNode* n = find(it->second)) return *n;
  MemberNode& v = create(ViewBody{dv.gen, id, {}});
  v.parent = dir.ino;
  v.name = dv.gen->cp.tree.node(id).name;
  view_inos_[key] = v.ino;
  return v;
}

void MemberTree::add_view_roots(MemberNode& dir, NodeId tree_dir) {
  const Tree& t = base_->cp.tree;
  std::string base = path_of(dir);
  for (const auto& [name, cid] : t.node(tree_dir).children) {
    std::string p = join_path(base, name);
    if (base_->members.count(p) || !is_view_name(name)) continue;
    if (dir.folder()->children.count(name)) continue;  // a namespace entry of that name wins
    MemberNode& v = create(ViewBody{base_, cid, p.substr(0, p.size() - 8)});
    view_inos_[{&t, cid}] = v.ino;
    attach(dir, name, v);
  }
}

bool MemberTree::identical(const MemberNode& n) const {
  if (n.is_view()) return true;
  if (!n.origin || (n.is_file() && n.file()->copied_up())) return false;
  auto it = base_->members.find(*n.origin);
  if (it == base_->members.end()) return false;
  const BaseMember& m = it->second;
  if (m.dir != n.is_folder()) return false;
  if (!n.linked || path_of(n) != *n.origin) return false;
  return n.mode == m.mode && n.mtime_ns == m.mtime_ns;
}

bool MemberTree::subtree_identical(const MemberNode& n) const {
  if (!identical(n)) return false;
  const FolderBody* f = n.folder();
  if (!f) return true;
  size_t members = 0;
  for (const auto& [name, c] : f->children) {
    const MemberNode& k = *nodes_.at(c.ino);
    if (k.is_view()) continue;
    ++members;
    if (!subtree_identical(k)) return false;
  }
  // Nothing deleted from it either.
  std::string p = path_of(n) + "/";
  size_t base_kids = 0;
  for (const auto& [path, m] : base_->members)
    if (path.size() > p.size() && path.compare(0, p.size(), p) == 0 && path.find('/', p.size()) == std::string::npos)
      ++base_kids;
  return base_kids == members;
}

bool MemberTree::visible(const MemberNode& n) {
  const ViewBody* v = n.view();
  if (!v || v->view_of.empty()) return true;
  if (v->gen != base_) return false;
  MemberNode* m = resolve(v->view_of);
  return m && subtree_identical(*m);
}

bool MemberTree::junk(const MemberNode& n, bool commit_junk) const {
  if (commit_junk) return false;
  const MemberNode* x = &n;
  while (x->ino != kRootIno) {
    if (is_junk_name(x->name)) return true;
    auto it = nodes_.find(x->parent);
    if (it == nodes_.end()) break;
    x = it->second.get();
  }
  return false;
}

int64_t MemberTree::mtime_of(const MemberNode& n) const {
  if (const FileBody* f = n.file(); f && f->copied_up()) {
    struct stat st {};
    if (::fstat(f->fd.get(), &st) == 0) return timespec_to_ns(st.st_mtim);
  }
  return n.mtime_ns;
}

struct stat MemberTree::stat_of(const MemberNode& n, uid_t uid, gid_t gid) const {
  struct stat st {};
  st.st_ino = n.ino;
  st.st_uid = uid;
  st.st_gid = gid;
  st.st_blksize = 4096;
  timespec mt = ns_to_timespec(mtime_of(n));
  st.st_mtim = st.st_atim = st.st_ctim = mt;
  if (const FolderBody* f = n.folder()) {
    st.st_mode = S_IFDIR | (n.mode & 07777);
    nlink_t links = 2;
    for (const auto& [name, c] : f->children) {
      const MemberNode& k = *nodes_.at(c.ino);
      if (k.is_folder() || k.is_view()) ++links;
    }
    st.st_nlink = links;
    st.st_size = 4096;
    st.st_blocks = 8;
  } else {
    uint64_t size = n.file()->size;
    st.st_mode = S_IFREG | (n.mode & 07777);
    st.st_nlink = n.linked ? 1 : 0;
    st.st_size = static_cast<off_t>(size);
    st.st_blocks = static_cast<blkcnt_t>((size + 511) / 512);
  }
  return st;
}

Journal MemberTree::diff(int64_t next_data) const {
  Journal j;
  j.base = base_->identity;
  j.next_data = next_data;
  std::unordered_set<std::string> present;
  std::function<void(const MemberNode&, const std::string&)> walk = [&](const MemberNode& n, const std::string& p) {
    present.insert(p);
    if (!identical(n)) {
      JournalNode jn;
      jn.path = p;
      jn.dir = n.is_folder();
      jn.origin = n.origin;
      const FileBody* f = n.file();
      jn.data = f && f->copied_up() ? f->data : -1;
      jn.mode = n.mode;
      jn.mtime_ns = n.mtime_ns;
      j.nodes.push_back(std::move(jn));
    }
    if (const FolderBody* f = n.folder())
      for (const auto& [name, c] : f->children) {
        const MemberNode& k = *nodes_.at(c.ino);
        if (!k.is_view()) walk(k, join_path(p, name));
      }
  };
  walk(*nodes_.at(kRootIno), "");
  for (const auto& [p, m] : base_->members)
    if (!p.empty() && !present.count(p)) j.deleted.push_back(p);
  std::sort(j.deleted.begin(), j.deleted.end());
  return j;
}

int64_t MemberTree::apply(const Journal& j, Overlay& overlay) {
  for (const auto& p : j.deleted) {
    MemberNode* n = resolve(p);
    if (n && n->ino != kRootIno) erase_subtree(*n);
  }
  std::vector<int64_t> keep;
  for (const auto& jn : j.nodes) {
    if (jn.path.empty()) {
      MemberNode& r = node(kRootIno);
      r.mode = jn.mode;
      r.mtime_ns = jn.mtime_ns;
      r.origin = jn.origin;
      continue;
    }
    auto slash = jn.path.rfind('/');
    std::string parent_path = slash == std::string::npos ? "" : jn.path.substr(0, slash);
    std::string name = jn.path.substr(slash == std::string::npos ? 0 : slash + 1);
    MemberNode* parent = resolve(parent_path);
    if (!parent || !parent->is_folder())
      throw SysError(EINVAL, "pending edits are inconsistent: no folder for '" + jn.path + "' (move " + overlay.dir() + " away)");
    MemberNode* existing = child(*parent, name);
    if (existing && existing->is_folder() && jn.dir) {
      existing->origin = jn.origin;
      existing->mode = jn.mode;
      existing->mtime_ns = jn.mtime_ns;
      continue;
    }
    if (existing) erase_subtree(*existing);
    MemberNode& n = jn.dir ? create(FolderBody{}) : create(FileBody{});
    n.origin = jn.origin;
    n.mode = jn.mode;
    n.mtime_ns = jn.mtime_ns;
    if (FileBody* f = n.file()) {
      if (jn.data >= 0) {
        auto fd = overlay.open_data(jn.data);
        if (!fd) {
          nodes_.erase(n.ino);
          throw SysError(ENOENT, "pending edits are incomplete: " + overlay.data_path(jn.data) + " is missing");
        }
        f->size = FileIdentity::of_fd(fd->get()).size;
        f->fd = std::move(*fd);
        f->data = jn.data;
        keep.push_back(jn.data);
      } else {
        auto it = jn.origin ? base_->members.find(*jn.origin) : base_->members.end();
        if (it == base_->members.end() || it->second.dir) {
          nodes_.erase(n.ino);
          throw SysError(EINVAL, "pending edits refer to a member the archive does not have: '" + jn.path + "'");
        }
        f->base = it->second.data;
        f->size = f->base->size();
      }
    }
    attach(*parent, name, n);
  }
  overlay.remove_unreferenced(keep);
  return j.next_data;
}

void MemberTree::rebase(const ArchivePtr& next, Overlay& overlay, std::vector<UniqueFd>& retired_fds, bool commit_junk,
                        const std::function<void(MemberNode&)>& copy_up) {
  ArchivePtr old = base_;
  // Views of the old archive go stale (ESTALE), so nothing but the caller's retired list keeps it.
  for (auto& [ino, x] : nodes_)
    if (ViewBody* v = x->view(); v && v->gen == old) v->gen.reset();
  for (auto it = view_inos_.begin(); it != view_inos_.end();) {
    if (it->first.first == static_cast<const void*>(&old->cp.tree)) it = view_inos_.erase(it);
    else ++it;
  }
  std::vector<Ino> old_views;
  std::function<void(MemberNode&, const std::string&)> walk = [&](MemberNode& n, const std::string& p) {
    if (FolderBody* f = n.folder()) {
      std::vector<Ino> kids;
      for (auto& [name, c] : f->children) kids.push_back(c.ino);
      for (Ino k : kids) {
        MemberNode& c = *nodes_.at(k);
        if (c.is_view()) old_views.push_back(k);
        else walk(c, join_path(p, c.name));
      }
    }
    if (junk(n, commit_junk)) {
      if (FileBody* f = n.file(); f && !f->copied_up()) copy_up(n);  // off the old archive
      n.origin.reset();
      return;
    }
    auto it = next->members.find(p);
    if (it == next->members.end() || it->second.dir != n.is_folder()) {
      n.origin.reset();
      return;
    }
    n.origin = p;
    n.mode = it->second.mode;
    n.mtime_ns = it->second.mtime_ns;
    if (FileBody* f = n.file()) {
      if (f->copied_up()) {
        retired_fds.push_back(std::move(f->fd));  // replies in flight may still splice from it
        if (f->data >= 0) overlay.remove_data(f->data);
        f->data = -1;
        f->dirty = false;
      }
      f->base = it->second.data;
      f->size = f->base->size();
    }
  };
  walk(*nodes_.at(kRootIno), "");
  for (Ino v : old_views) detach(*nodes_.at(v));
  base_ = next;
  // New views from the new archive's tree.
  const Tree& t = next->cp.tree;
  std::function<void(MemberNode&, NodeId)> views = [&](MemberNode& d, NodeId tid) {
    add_view_roots(d, tid);
    for (const auto& [name, cid] : t.node(tid).children) {
      if (t.node(cid).type != NodeType::Dir) continue;
      MemberNode* c = child(d, name);
      if (c && c->is_folder()) views(*c, cid);
    }
  };
  views(*nodes_.at(kRootIno), Tree::kRoot);
}

}  // namespace nemofs
