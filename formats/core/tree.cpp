#include "formats/core/tree.h"

#include "formats/core/errors.h"

namespace nemofs {

Tree::Tree() {
  Node root;
  root.type = NodeType::Dir;
  root.parent = kRoot;
  nodes_.push_back(std::move(root));
}

// The existing child `name` of `parent`, or nullopt; refuses names a folder cannot hold.
std::optional<NodeId> Tree::existing_child(NodeId parent, const std::string& name, const char* kind) const {
  if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos)
    throw FormatError("tree", std::string("invalid ") + kind + " name '" + name + "'");
  const auto& kids = nodes_.at(parent).children;
  if (auto it = kids.find(name); it != kids.end()) return it->second;
  return std::nullopt;
}

NodeId Tree::append(NodeId parent, std::string name, NodeType type, SourcePtr data) {
  NodeId id = static_cast<NodeId>(nodes_.size());
  Node n;
  n.name = name;
  n.type = type;
  n.parent = parent;
  n.data = std::move(data);
  nodes_.push_back(std::move(n));
  nodes_[parent].children.mut().emplace(std::move(name), id);
  return id;
}

NodeId Tree::add_dir(NodeId parent, std::string name) {
  if (auto old = existing_child(parent, name, "directory")) {
    if (nodes_[*old].type != NodeType::Dir)
      throw FormatError("tree", "'" + path_of(*old) + "' is both a file and a directory");
    return *old;
  }
  return append(parent, std::move(name), NodeType::Dir, nullptr);
}

NodeId Tree::add_file(NodeId parent, std::string name, SourcePtr data, bool replace) {
  if (auto old = existing_child(parent, name, "file")) {
    Node& o = nodes_[*old];
    if (!replace || o.type != NodeType::File) throw FormatError("tree", "duplicate entry '" + path_of(*old) + "'");
    o.data = std::move(data);
    return *old;
  }
  return append(parent, std::move(name), NodeType::File, std::move(data));
}

NodeId Tree::mkdirs(std::string_view path) {
  NodeId cur = kRoot;
  size_t i = 0;
  while (i <= path.size()) {
    size_t j = path.find('/', i);
    if (j == std::string_view::npos) j = path.size();
    if (j > i) cur = add_dir(cur, std::string(path.substr(i, j - i)));
    i = j + 1;
  }
  return cur;
}

std::optional<NodeId> Tree::lookup(NodeId parent, std::string_view name) const {
  const Node& p = nodes_.at(parent);
  if (p.type != NodeType::Dir) return std::nullopt;
  auto it = p.children.find(name);
  if (it == p.children.end()) return std::nullopt;
  return it->second;
}

std::optional<NodeId> Tree::resolve(std::string_view path) const {
  NodeId cur = kRoot;
  size_t i = 0;
  while (i <= path.size()) {
    size_t j = path.find('/', i);
    if (j == std::string_view::npos) j = path.size();
    if (j > i) {
      auto next = lookup(cur, path.substr(i, j - i));
      if (!next) return std::nullopt;
      cur = *next;
    }
    i = j + 1;
  }
  return cur;
}

std::string Tree::path_of(NodeId id) const {
  std::string out;
  while (id != kRoot) {
    const Node& n = nodes_.at(id);
    out = out.empty() ? n.name : n.name + "/" + out;
    id = n.parent;
  }
  return out;
}

NodeId Tree::graft(NodeId parent, const std::string& name, const Tree& sub) {
  NodeId top = add_dir(parent, name);
  // Iterative copy keeping a map from sub's ids to ours.
  std::vector<std::pair<NodeId, NodeId>> stack{{kRoot, top}};
  while (!stack.empty()) {
    auto [from, to] = stack.back();
    stack.pop_back();
    for (const auto& [cname, cid] : sub.nodes_[from].children) {
      const Node& c = sub.nodes_[cid];
      if (c.type == NodeType::Dir) {
        NodeId d = add_dir(to, cname);
        nodes_[d].mode = c.mode;
        nodes_[d].mtime = c.mtime;
        stack.emplace_back(cid, d);
      } else {
        NodeId f = add_file(to, cname, c.data);
        nodes_[f].mode = c.mode;
        nodes_[f].mtime = c.mtime;
      }
    }
  }
  return top;
}

}  // namespace nemofs
