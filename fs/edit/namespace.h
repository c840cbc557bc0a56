// The member namespace of a writable .nemo: what the mount shows, as a mutable inode table.
//
// Inode numbers are allocated once and stay valid while the kernel holds a lookup reference
// (lookup/forget counts) or an open handle, even after unlink or a commit. A node is one of three
// kinds (a sum type, MemberNode::body):
//   Folder   children by name, and by cookie (the readdir offset, stable under mutation)
//   File     bytes that are either `base` (a range of the archive, unchanged member) or an
//            overlay data file (after the first write or truncate: copied up, then edited in place)
//   View     a node of a `<member>.tensors/` view tree of some archive: read-only, shown only while
//            its member is unchanged in the archive being served (`gen` null: a view of an archive
//            that is no longer served: stale)
// The namespace knows nothing of FUSE: operations throw SysError with the errno a file system
// answers with.
//
// Identity with the archive: a node is `identical` when it carries the bytes and header of the
// member at its own path (origin == path, same kind, mode and mtime, no data file); the journal
// (fs/edit/overlay.h) records exactly the nodes that are not, and the archive paths that are gone.
#pragma once

#include <sys/stat.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <variant>
#include <vector>

#include "formats/core/io.h"
#include "formats/core/tree.h"
#include "fs/edit/archive.h"
#include "fs/edit/ino.h"
#include "fs/edit/overlay.h"

namespace nemofs {

// A std::map made on its first insert: every MemberNode holds a body variant as large as its
// largest kind, so two empty maps in a folder's body cost every file 96 bytes (issue 19); behind
// a pointer they cost 16. The operations the namespace uses, with std::map's meaning.
template <typename K, typename V, typename Cmp = std::less<>>
class LazyMap {
 public:
  using Map = std::map<K, V, Cmp>;
  using iterator = typename Map::iterator;
  using const_iterator = typename Map::const_iterator;

  iterator begin() { return m_ ? m_->begin() : empty_map().begin(); }
  iterator end() { return m_ ? m_->end() : empty_map().end(); }
  const_iterator begin() const { return m_ ? m_->cbegin() : empty_map().cbegin(); }
  const_iterator end() const { return m_ ? m_->cend() : empty_map().cend(); }
  template <typename Q>
  iterator find(const Q& k) { return m_ ? m_->find(k) : end(); }
  template <typename Q>
  const_iterator find(const Q& k) const { return m_ ? m_->find(k) : end(); }
  template <typename Q>
  iterator lower_bound(const Q& k) { return m_ ? m_->lower_bound(k) : end(); }
  template <typename Q>
  const_iterator lower_bound(const Q& k) const { return m_ ? m_->lower_bound(k) : end(); }
  template <typename Q>
  size_t count(const Q& k) const { return m_ ? m_->count(k) : 0; }
  template <typename Q>
  const V& at(const Q& k) const {
    auto it = find(k);
    if (it == end()) throw std::out_of_range("LazyMap::at");
    return it->second;
  }
  size_t size() const { return m_ ? m_->size() : 0; }
  bool empty() const { return size() == 0; }
  V& operator[](const K& k) { return mut()[k]; }
  template <typename M>
  std::pair<iterator, bool> insert_or_assign(const K& k, M&& v) { return mut().insert_or_assign(k, std::forward<M>(v)); }
  iterator erase(iterator it) { return m_->erase(it); }
  template <typename Q>
  size_t erase(const Q& k) { return m_ ? m_->erase(k) : 0; }

 private:
  Map& mut() {
    if (!m_) m_ = std::make_unique<Map>();
    return *m_;
  }
  // What an unmade map's iterators point into: always empty (nothing is ever inserted in it).
  static Map& empty_map() {
    static Map empty;
    return empty;
  }
  std::unique_ptr<Map> m_;
};

struct FolderBody {
  struct Child {
    Ino ino;
    uint64_t cookie;
  };
  LazyMap<std::string, Child> children;
  // cookie -> name: a key of `children` (a map's keys stay put until erased; a copy of every name
  // cost 24 bytes a member more)
  LazyMap<uint64_t, const std::string*, std::less<uint64_t>> order;
  uint64_t next_cookie = 2;               // 0 and 1 are "." and ".."

  // Moved, never copied: `order` points into this very `children`.
  FolderBody() = default;
  FolderBody(FolderBody&&) = default;
  FolderBody& operator=(FolderBody&&) = default;
  FolderBody(const FolderBody&) = delete;
  FolderBody& operator=(const FolderBody&) = delete;
};

struct FileBody {
  SourcePtr base;     // unchanged bytes: a member of the archive
  int64_t data = -1;  // overlay data file number, when the bytes live there
  UniqueFd fd;        // that data file, open read-write
  uint64_t size = 0;
  bool dirty = false;  // written since the last fdatasync
  bool copied_up() const { return static_cast<bool>(fd); }
};

struct ViewBody {
  ArchivePtr gen;       // the archive whose tree this is; null once that archive is retired
  NodeId id = 0;        // node of gen->cp.tree
  std::string view_of;  // view roots only: the archive path of the member the view shows
  const Node& tree_node() const { return gen->cp.tree.node(id); }
};

struct MemberNode {
  Ino ino = 0;
  Ino parent = 0;
  std::string name;
  std::optional<std::string> origin;  // the archive path whose header (and bytes) it carries
  int64_t mtime_ns = 0;  // files with a data file: the data file's own mtime is used instead
  uint64_t nlookup = 0;  // kernel references
  uint32_t mode = 0644;
  uint32_t opens = 0;
  bool linked = true;    // (fields ordered so that padding costs nothing: one per member)
  std::variant<FolderBody, FileBody, ViewBody> body;

  FolderBody* folder() { return std::get_if<FolderBody>(&body); }
  const FolderBody* folder() const { return std::get_if<FolderBody>(&body); }
  FileBody* file() { return std::get_if<FileBody>(&body); }
  const FileBody* file() const { return std::get_if<FileBody>(&body); }
  ViewBody* view() { return std::get_if<ViewBody>(&body); }
  const ViewBody* view() const { return std::get_if<ViewBody>(&body); }
  bool is_folder() const { return folder() != nullptr; }
  bool is_file() const { return file() != nullptr; }
  bool is_view() const { return view() != nullptr; }
  // A folder of the namespace, or a folder of a view tree.
  bool lists() const { return is_folder() || (is_view() && view()->gen && view()->tree_node().type == NodeType::Dir); }
};

class MemberTree {
 public:
  // The namespace of `archive` as it is, with its views.
  explicit MemberTree(const ArchivePtr& archive);
  MemberTree(const MemberTree&) = delete;
  MemberTree& operator=(const MemberTree&) = delete;

  const ArchivePtr& archive() const { return base_; }

  // ESTALE for unknown inodes and views of a retired archive.
  MemberNode& node(Ino ino);
  const MemberNode& node(Ino ino) const;
  MemberNode* find(Ino ino);
  // ENOTDIR unless it lists children.
  MemberNode& folder_node(Ino ino);
  // The namespace child `name` of a folder (views included), or null.
  MemberNode* child(MemberNode& dir, std::string_view name);
  // A namespace node by normalised path (never a view), or null.
  MemberNode* resolve(const std::string& path);
  std::string path_of(const MemberNode& n) const;

  // Creates a node (not linked anywhere).
  MemberNode& create(decltype(MemberNode::body) body);
  void attach(MemberNode& dir, const std::string& name, MemberNode& n);
  void detach(MemberNode& n);
  // After detach: its data file is removed from the overlay (its fd stays open for handles still
  // using it); the node itself goes when nothing references it. Folders take their children along.
  void drop(MemberNode& n, Overlay& overlay);
  // Erases an unlinked node that no kernel reference or handle holds.
  void maybe_erase(MemberNode& n);
  // A view child of a view folder (made on first lookup; one inode per tree node).
  MemberNode& view_child(MemberNode& dir, NodeId id);
  // Adds `<member>.tensors/` roots of the current archive's tree folder `tree_dir` to `dir`.
  void add_view_roots(MemberNode& dir, NodeId tree_dir);

  bool identical(const MemberNode& n) const;
  bool subtree_identical(const MemberNode& n) const;
  // Views are shown only while their member is unchanged in the archive being served.
  bool visible(const MemberNode& n);
  // Editor/OS junk (by any component of its path), unless junk is committed.
  bool junk(const MemberNode& n, bool commit_junk) const;
  int64_t mtime_of(const MemberNode& n) const;
  // Attributes of a namespace node (not a view: those are the adapter's).
  struct stat stat_of(const MemberNode& n, uid_t uid, gid_t gid) const;

  // The journal of the namespace as it differs from the archive.
  Journal diff(int64_t next_data) const;
  // Re-applies a journal recorded against this archive (at mount). Opens the data files it names
  // and removes those it does not. Returns the journal's next data file number.
  int64_t apply(const Journal& j, Overlay& overlay);

  // After a commit: every live node now lies in `next` (junk stays in the overlay, copied up).
  // Overlay fds of committed files move to `retired_fds` (replies in flight may still splice
  // from them); views of the old archive go stale; views of `next` are added.
  void rebase(const ArchivePtr& next, Overlay& overlay, std::vector<UniqueFd>& retired_fds, bool commit_junk,
              const std::function<void(MemberNode&)>& copy_up);

  template <typename F>
  void for_each(F&& f) {
    for (auto& [ino, n] : nodes_) f(*n);
  }

 private:
  void erase_subtree(MemberNode& n);

  ArchivePtr base_;
  std::unordered_map<Ino, std::unique_ptr<MemberNode>> nodes_;
  std::map<std::pair<const void*, NodeId>, Ino> view_inos_;
  Ino next_ino_ = 2;
};

// "a/b" from "a" and "b"; "b" from "" and "b".
inline std::string join_path(const std::string& dir, const std::string& name) {
  return dir.empty() ? name : dir + "/" + name;
}

}  // namespace nemofs
