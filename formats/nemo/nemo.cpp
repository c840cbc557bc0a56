#include "formats/nemo/nemo.h"

#include "formats/core/errors.h"
#include "formats/detect/checkpoint.h"
#include "formats/detect/folder.h"

namespace nemofs {

std::string normalize_member_name(const std::string& raw, uint64_t at) {
  if (!raw.empty() && raw[0] == '/') throw FormatError("nemo", at, "absolute member name '" + raw + "' refused");
  std::string out;
  size_t i = 0;
  while (i <= raw.size()) {
    size_t j = raw.find('/', i);
    if (j == std::string::npos) j = raw.size();
    std::string comp = raw.substr(i, j - i);
    if (comp == "..") throw FormatError("nemo", at, "member name '" + raw + "' climbs out of the archive ('..')");
    if (!comp.empty() && comp != ".") out = out.empty() ? comp : out + "/" + comp;
    i = j + 1;
  }
  return out;
}

std::vector<std::string> TreeFileSet::list() const {
  std::vector<std::string> out;
  std::string base = tree_.path_of(dir_);
  tree_.walk(
      [&](NodeId id, const Node& n) {
        if (n.type == NodeType::File) {
          std::string p = tree_.path_of(id);
          out.push_back(base.empty() ? p : p.substr(base.size() + 1));
        }
      },
      dir_);
  return out;
}

SourcePtr TreeFileSet::open(const std::string& rel) const {
  std::string base = tree_.path_of(dir_);
  auto id = tree_.resolve(base.empty() ? rel : base + "/" + rel);
  if (!id || tree_.node(*id).type != NodeType::File) return nullptr;
  return tree_.node(*id).data;
}

std::string TreeFileSet::describe() const { return tree_.path_of(dir_) + "/"; }

bool names_checkpoint_folder(const Tree& tree, NodeId dir) {
  std::vector<std::string> names;
  for (const auto& [cname, cid] : tree.node(dir).children)
    if (tree.node(cid).type == NodeType::File) names.push_back(cname);
  return sniff_dir_names(names) != Format::Unknown;
}

bool graft_view(Tree& tree, NodeId of, const Tree& view, std::vector<std::string>& warnings, const char* entry) {
  const Node& n = tree.node(of);
  const NodeId parent = n.parent;
  const std::string view_name = n.name + kViewSuffix;
  if (tree.lookup(parent, view_name)) {
    warnings.push_back(tree.path_of(of) + ": no .tensors view: " + entry + " named '" + view_name + "' already exists");
    return false;
  }
  tree.graft(parent, view_name, view);
  return true;
}

void add_checkpoint_views(Tree& tree, std::vector<std::string>& warnings) {
  // Collect first: grafting adds nodes while we iterate.
  std::vector<NodeId> candidates;
  tree.walk([&](NodeId id, const Node&) {
    if (id != Tree::kRoot) candidates.push_back(id);
  });
  for (NodeId id : candidates) {
    const Node& n = tree.node(id);
    std::optional<Tree> view;
    try {
      if (n.type == NodeType::File) {
        if (n.data->size() == 0) continue;
        view = nested_file_view(n.data);
      } else {
        // Only folders whose own entries mark a checkpoint are candidates; testing the names first
        // keeps indexing linear for archives with thousands of folders.
        if (!names_checkpoint_folder(tree, id)) continue;
        view = nested_dir_view(TreeFileSet(tree, id));
      }
    } catch (const std::exception& e) {
      warnings.push_back(tree.path_of(id) + ": no .tensors view: " + e.what());
      continue;
    }
    if (view) graft_view(tree, id, *view, warnings, "a member");
  }
}

std::optional<size_t> NemoArchive::entry_of(const Tree& tree, std::string_view path) const {
  auto id = tree.resolve(path);
  if (!id || *id == Tree::kRoot || *id >= entry_of_node.size() || entry_of_node[*id] == kNoEntry) return std::nullopt;
  return entry_of_node[*id];
}

namespace {

// One entry of the index into the tree (links and special members become warnings).
void add_member(Tree& tree, const SourcePtr& archive, const TarEntry& e, size_t i, NemoArchive& nemo, bool keep_index) {
  std::string path = normalize_member_name(e.name, e.header_offset);
  if (e.type == TarType::Symlink || e.type == TarType::Hardlink) {
    nemo.warnings.push_back(e.name + ": link member not shown");
    return;
  }
  if (e.type == TarType::Other) {
    nemo.warnings.push_back(e.name + ": special member (type '" + std::string(1, e.typeflag) + "') not shown");
    return;
  }
  if (e.mtime_clamped)
    nemo.warnings.push_back(e.name + ": mtime out of range (negative or past year 2262), shown as " + std::to_string(e.mtime));
  if (path.empty()) {
    if (e.type != TarType::Dir) throw FormatError("nemo", e.header_offset, "a non-directory member named '" + e.name + "'");
    tree.mutable_node(Tree::kRoot).mode = e.mode;
    tree.mutable_node(Tree::kRoot).mtime = e.mtime;
    return;
  }
  size_t slash = path.rfind('/');
  NodeId parent = slash == std::string::npos ? Tree::kRoot : tree.mkdirs(std::string_view(path).substr(0, slash));
  std::string leaf = slash == std::string::npos ? path : path.substr(slash + 1);
  NodeId id;
  if (e.type == TarType::Dir) {
    auto existing = tree.lookup(parent, leaf);
    if (existing && tree.node(*existing).type == NodeType::File)
      throw FormatError("nemo", e.header_offset, "'" + path + "' is both a file and a folder in the archive");
    id = tree.add_dir(parent, std::move(leaf));
  } else {
    auto existing = tree.lookup(parent, leaf);
    if (existing && tree.node(*existing).type == NodeType::Dir)
      throw FormatError("nemo", e.header_offset, "'" + path + "' is both a folder and a file in the archive");
    SourcePtr data = make_sub(archive, e.data_offset, e.stored_size, path);
    if (e.sparse) {
      std::vector<SparseSource::Extent> ext;
      ext.reserve(e.regions().size());
      for (const auto& r : e.regions()) ext.push_back({r.offset, r.length});
      data = std::make_shared<SparseSource>(std::move(data), ext, e.size, path);
    }
    id = tree.add_file(parent, std::move(leaf), std::move(data), /*replace=*/true);
  }
  tree.mutable_node(id).mode = e.mode;
  tree.mutable_node(id).mtime = e.mtime;
  if (keep_index) {
    if (nemo.entry_of_node.size() <= id) nemo.entry_of_node.resize(id + 1, NemoArchive::kNoEntry);
    nemo.entry_of_node[id] = static_cast<uint32_t>(i);
  }
}

}  // namespace

NemoArchive build_nemo(Tree& tree, const SourcePtr& archive, bool keep_index) {
  NemoArchive nemo;
  nemo.archive = archive;
  // Each entry goes into the tree as it is read: with !keep_index the index is never held whole
  // (a 300,000-member archive's index is ~36 MB that a read-only mount does not need).
  size_t i = 0;
  index_tar(*archive, nemo.index, [&](TarEntry&& e) {
    if (i >= NemoArchive::kNoEntry)
      throw FormatError("nemo", e.header_offset, "more than " + std::to_string(NemoArchive::kNoEntry - 1) + " members");
    add_member(tree, archive, e, i, nemo, keep_index);
    if (keep_index) nemo.index.entries.push_back(std::move(e));
    ++i;
  });
  if (keep_index) {
    nemo.entry_of_node.resize(tree.size(), NemoArchive::kNoEntry);
    nemo.entry_of_node.shrink_to_fit();
  }
  add_checkpoint_views(tree, nemo.warnings);
  return nemo;
}

}  // namespace nemofs
