#include "fs/cli/inspect.h"

#include <unistd.h>

#include <climits>
#include <optional>
#include <stdexcept>

#include "formats/core/errors.h"
#include "formats/detect/folder.h"

namespace nemofs {
namespace {

struct TensorInfo {
  std::string dtype;
  nlohmann::json shape;
};

std::optional<TensorInfo> tensor_info(const Tree& tree, NodeId id) {
  const Node& n = tree.node(id);
  if (n.type != NodeType::File) return std::nullopt;
  auto side = tree.lookup(n.parent, n.name + ".json");
  if (!side) return std::nullopt;
  const auto* mem = dynamic_cast<const MemorySource*>(tree.node(*side).data.get());
  if (!mem) return std::nullopt;
  auto j = nlohmann::json::parse(mem->bytes(), nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("dtype") || !j.contains("shape") || !j.contains("nbytes"))
    return std::nullopt;
  if (!j["nbytes"].is_number_unsigned() || j["nbytes"].get<uint64_t>() != n.data->size()) return std::nullopt;
  return TensorInfo{j["dtype"].get<std::string>(), j["shape"]};
}

// The entry of one tree node, its path under `prefix` ("" or "a/b.tensors").
nlohmann::json tree_entry(const Tree& tree, const std::string& prefix, NodeId id, const Node& n) {
  nlohmann::json e;
  std::string path = tree.path_of(id);
  e["path"] = prefix.empty() ? path : prefix + "/" + path;
  if (n.type == NodeType::Dir) {
    e["type"] = "dir";
    e["size"] = 0;
  } else if (auto t = tensor_info(tree, id)) {
    e["type"] = "tensor";
    e["size"] = n.data->size();
    e["dtype"] = t->dtype;
    e["shape"] = t->shape;
  } else {
    e["type"] = "file";
    e["size"] = n.data->size();
  }
  return e;
}

// The entries of a tree (root left out), their paths under `prefix` ("" or "a/b.tensors").
void tree_entries(const Tree& tree, const std::string& prefix, nlohmann::json& entries) {
  tree.walk([&](NodeId id, const Node& n) {
    if (id != Tree::kRoot) entries.push_back(tree_entry(tree, prefix, id, n));
  });
}

// One entry as a text line (the format inspect_text documents).
void entry_text(const nlohmann::json& e, std::ostream& out) {
  const std::string& type = e["type"].get_ref<const std::string&>();
  const std::string& path = e["path"].get_ref<const std::string&>();
  uint64_t size = e["size"].get<uint64_t>();
  if (type == "dir") out << "dir     " << path << "/\n";
  else if (type == "tensor")
    out << "tensor  " << path << "  " << e["dtype"].get<std::string>() << " " << e["shape"].dump() << "  " << size
        << " bytes\n";
  else if (type == "link") out << "link    " << path << " -> " << e["target"].get<std::string>() << "\n";
  else out << "file    " << path << "  " << size << " bytes\n";
}

// A folder of checkpoints, as the folder mount lists it: every view indexed (inspect is the
// mount's oracle, so it does eagerly what the mount does on first access).
void folder_entries(const std::string& root, const std::string& rel, nlohmann::json& entries,
                    std::vector<std::string>& warnings) {
  std::string dir = rel.empty() ? root : root + "/" + rel;
  std::vector<std::string> w;
  auto list = list_folder(dir, sniff_folder_entry, &w);
  for (auto& x : w) warnings.push_back(x.substr(std::min(x.size(), root.size() + 1)));
  for (const auto& fe : list) {
    std::string path = rel.empty() ? fe.name : rel + "/" + fe.name;
    nlohmann::json e;
    e["path"] = path;
    switch (fe.kind) {
      case FolderEntry::Kind::File:
        e["type"] = "file";
        e["size"] = static_cast<uint64_t>(fe.st.st_size);
        entries.push_back(std::move(e));
        break;
      case FolderEntry::Kind::Symlink: {
        char buf[PATH_MAX];
        ssize_t n = ::readlink((dir + "/" + fe.name).c_str(), buf, sizeof buf);
        e["type"] = "link";
        e["size"] = static_cast<uint64_t>(fe.st.st_size);
        e["target"] = n < 0 ? std::string() : std::string(buf, static_cast<size_t>(n));
        entries.push_back(std::move(e));
        break;
      }
      case FolderEntry::Kind::Dir:
        e["type"] = "dir";
        e["size"] = 0;
        entries.push_back(std::move(e));
        folder_entries(root, path, entries, warnings);
        break;
      case FolderEntry::Kind::View: {
        std::string of = rel.empty() ? fe.of : rel + "/" + fe.of;
        Checkpoint cp;
        try {
          cp = open_checkpoint(root + "/" + of, /*writable=*/false);
        } catch (const std::exception& ex) {
          warnings.push_back(of + ": no .tensors view: " + ex.what());
          break;
        }
        for (const auto& x : cp.warnings) warnings.push_back(of + ": " + x);
        e["type"] = "dir";
        e["size"] = 0;
        entries.push_back(std::move(e));
        tree_entries(cp.tree, path, entries);
        break;
      }
    }
  }
}

nlohmann::json document(const std::string& source, const char* format, const std::vector<std::string>& warnings,
                        nlohmann::json entries) {
  return nlohmann::json{{"nemofs_inspect", 1},
                        {"source", source},
                        {"format", format},
                        {"warnings", warnings},
                        {"entries", std::move(entries)}};
}

}  // namespace

std::string inspect_dump(const nlohmann::json& doc) {
  return doc.dump(2, ' ', false, nlohmann::json::error_handler_t::replace);
}

nlohmann::json inspect_json(const Checkpoint& cp, const std::string& source) {
  nlohmann::json entries = nlohmann::json::array();
  tree_entries(cp.tree, "", entries);
  return document(source, format_name(cp.format), cp.warnings, std::move(entries));
}

// Streamed: one entry's JSON at a time, never the whole listing (a DOM of 300,000 entries was
// ~250 bytes each, the peak of inspecting a tar of that many members: issue 19). The bytes are
// those of inspect_dump(inspect_json(cp, source)): the document is dumped with an empty "entries" (its
// first key: nlohmann sorts them) and each entry, dumped and indented two levels, spliced in.
// Bytes that are not UTF-8 (tar names are bytes) are written as U+FFFD (inspect_dump).
void inspect_json_write(const Checkpoint& cp, const std::string& source, std::ostream& out) {
  const std::string doc = inspect_dump(document(source, format_name(cp.format), cp.warnings, nlohmann::json::array()));
  const std::string head = "{\n  \"entries\": []";
  if (doc.compare(0, head.size(), head) != 0) throw std::logic_error("inspect: unexpected document layout");
  out << "{\n  \"entries\": [";
  bool first = true;
  std::string text;
  cp.tree.walk([&](NodeId id, const Node& n) {
    if (id == Tree::kRoot) return;
    text = inspect_dump(tree_entry(cp.tree, "", id, n));
    out << (first ? "\n    " : ",\n    ");
    first = false;
    for (char c : text) {
      out << c;
      if (c == '\n') out << "    ";
    }
  });
  if (!first) out << "\n  ]";
  else out << "]";
  out << doc.substr(head.size()) << "\n";
}

nlohmann::json inspect_folder_json(const std::string& folder, const std::string& source) {
  nlohmann::json entries = nlohmann::json::array();
  std::vector<std::string> warnings;
  folder_entries(folder, "", entries, warnings);
  return document(source, format_name(Format::Folder), warnings, std::move(entries));
}

void inspect_text(const nlohmann::json& doc, std::ostream& out) {
  out << "# format: " << doc["format"].get<std::string>() << "\n";
  for (const auto& w : doc["warnings"]) out << "# warning: " << w.get<std::string>() << "\n";
  for (const auto& e : doc["entries"]) entry_text(e, out);
}

// Streamed as inspect_json_write is: one entry at a time.
void inspect_text(const Checkpoint& cp, std::ostream& out) {
  out << "# format: " << format_name(cp.format) << "\n";
  for (const auto& w : cp.warnings) out << "# warning: " << w << "\n";
  cp.tree.walk([&](NodeId id, const Node& n) {
    if (id != Tree::kRoot) entry_text(tree_entry(cp.tree, "", id, n), out);
  });
}

}  // namespace nemofs
