// Tree: the frozen, validated view a mount shows.
//
// Node ids are dense indices (the FUSE edge maps inode = id + 1). Every directory keeps its
// children in a name-sorted map so lookup is O(log n) and readdir order is stable (offset = child
// index). File contents are ByteSources; nothing is read until a read asks for it.
#pragma once

#include <cstdint>
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

struct Node {
  std::string name;
  NodeType type = NodeType::Dir;
  NodeId parent = 0;
  std::map<std::string, NodeId, std::less<>> children;  // directories only
  SourcePtr data;                                       // files only
  uint32_t mode = 0;                                    // permission bits; 0 = default (0444 / 0555)
  int64_t mtime = 0;                                    // seconds since the epoch; 0 = the source's
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
  std::vector<Node> nodes_;
};

}  // namespace nemofs
