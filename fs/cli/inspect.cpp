#include "fs/cli/inspect.h"

#include <optional>

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

}  // namespace

nlohmann::json inspect_json(const Checkpoint& cp, const std::string& source) {
  nlohmann::json entries = nlohmann::json::array();
  cp.tree.walk([&](NodeId id, const Node& n) {
    if (id == Tree::kRoot) return;
    nlohmann::json e;
    e["path"] = cp.tree.path_of(id);
    if (n.type == NodeType::Dir) {
      e["type"] = "dir";
      e["size"] = 0;
    } else if (auto t = tensor_info(cp.tree, id)) {
      e["type"] = "tensor";
      e["size"] = n.data->size();
      e["dtype"] = t->dtype;
      e["shape"] = t->shape;
    } else {
      e["type"] = "file";
      e["size"] = n.data->size();
    }
    entries.push_back(std::move(e));
  });
  return nlohmann::json{{"nemofs_inspect", 1},
                        {"source", source},
                        {"format", format_name(cp.format)},
                        {"warnings", cp.warnings},
                        {"entries", std::move(entries)}};
}

void inspect_text(const Checkpoint& cp, std::ostream& out) {
  out << "# format: " << format_name(cp.format) << "\n";
  for (const auto& w : cp.warnings) out << "# warning: " << w << "\n";
  cp.tree.walk([&](NodeId id, const Node& n) {
    if (id == Tree::kRoot) return;
    std::string path = cp.tree.path_of(id);
    if (n.type == NodeType::Dir) {
      out << "dir     " << path << "/\n";
    } else if (auto t = tensor_info(cp.tree, id)) {
      out << "tensor  " << path << "  " << t->dtype << " " << t->shape.dump() << "  " << n.data->size() << " bytes\n";
    } else {
      out << "file    " << path << "  " << n.data->size() << " bytes\n";
    }
  });
}

}  // namespace nemofs
