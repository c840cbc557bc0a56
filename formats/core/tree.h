// Tree: the frozen, validated view a mount shows.
//
// Node ids are dense indices (the FUSE edge maps inode = id + 1). Every directory keeps its
// children in a name-sorted map so lookup is O(log n) and readdir order is stable (offset = child
// index). File contents are ByteSources; nothing is read until a read asks for it.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "formats/core/byte_source.h"

namespace nemofs {

using NodeId = uint32_t;

enum class NodeType : uint8_t { Dir, File };

// A folder's entries by name (a std::map's interface, read-only outside Tree). The map is made
// on the first entry: a file's node pays 8 bytes for it where an empty std::map took 48, and a
// checkpoint of 300,000 members is mostly files (issue 19).
class Children {
 public:
  using Map = std::map<std::string, NodeId, std::less<>>;
  using const_iterator = Map::const_iterator;
  using value_type = Map::value_type;

  Children() = default;
  Children(const Children& o) : m_(o.m_ ? std::make_unique<Map>(*o.m_) : nullptr) {}
  Children& operator=(const Children& o) {
    m_ = o.m_ ? std::make_unique<Map>(*o.m_) : nullptr;
    return *this;
  }
  Children(Children&&) noexcept = default;
  Children& operator=(Children&&) noexcept = default;

  const_iterator begin() const { return map().begin(); }
  const_iterator end() const { return map().end(); }
  const_iterator find(std::string_view name) const { return map().find(name); }
  size_t count(std::string_view name) const { return find(name) != end() ? 1 : 0; }
  size_t size() const { return m_ ? m_->size() : 0; }
  bool empty() const { return size() == 0; }

 private:
  friend class Tree;
  const Map& map() const { return m_ ? *m_ : kEmpty; }
  Map& mut() {
    if (!m_) m_ = std::make_unique<Map>();
    return *m_;
  }
  static inline const Map kEmpty{};
  std::unique_ptr<Map> m_;
};

struct Node {
  std::string name;
  Children children;     // directories only
  SourcePtr data;        // files only
  int64_t mtime = 0;     // seconds since the epoch; 0 = the source's
  NodeId parent = 0;
  uint32_t mode = 0;     // permission bits; 0 = default (0444 / 0555)
  NodeType type = NodeType::Dir;
};

class Tree {
 public:
  Tree();
  static constexpr NodeId kRoot = 0;

  size_t size() const { return nodes_.size(); }
  const Node& node(NodeId id) const { return nodes_.at(id); }
  Node& mutable_node(NodeId id) { return nodes_.at(id); }

  // Returns the existing directory of that name, or creates it. A file of that name is an error.
  NodeId add_dir(NodeId parent, std::string name);
  // Adds a file; a duplicate name is an error unless `replace` (then the old entry's content is
  // replaced, e.g. tar's "last occurrence wins").
  NodeId add_file(NodeId parent, std::string name, SourcePtr data, bool replace = false);
  // Creates every directory of a '/'-separated relative path (empty components ignored).
  NodeId mkdirs(std::string_view path);

  std::optional<NodeId> lookup(NodeId parent, std::string_view name) const;
  std::optional<NodeId> resolve(std::string_view path) const;  // '/'-separated, relative to root
  std::string path_of(NodeId id) const;                         // "" for the root

  // Copies `sub` (all of it) into a new or existing directory `name` under `parent`.
  NodeId graft(NodeId parent, const std::string& name, const Tree& sub);

  // Visits every node depth-first in name order (parents before children).
  template <typename F>
  void walk(F&& f, NodeId from = kRoot) const {
    f(from, nodes_[from]);
    if (nodes_[from].type == NodeType::Dir)
      for (const auto& [name, child] : nodes_[from].children) walk(f, child);
  }

 private:
  std::optional<NodeId> existing_child(NodeId parent, const std::string& name, const char* kind) const;
  NodeId append(NodeId parent, std::string name, NodeType type, SourcePtr data);
  // A deque, not a vector: growing it never copies every node (a vector's doubling held two
  // copies at once, the peak of mounting 300,000 members), and a node's address stays put.
  std::deque<Node> nodes_;
};

}  // namespace nemofs
