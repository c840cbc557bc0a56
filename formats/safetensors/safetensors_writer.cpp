#include "formats/safetensors/safetensors_writer.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <functional>
#include <map>
#include <string_view>

#include <nlohmann/json.hpp>

#include "formats/core/checked.h"
#include "formats/core/errors.h"
#include "formats/core/tensor.h"
#include "formats/core/utf8.h"

namespace nemofs {
namespace {

constexpr const char* kFmt = "safetensors-export";
constexpr uint64_t kMaxHeader = 100'000'000;  // the reference reader's MAX_HEADER_SIZE

// The reference's Dtype enum, in declaration order: the derived Ord that `prepare` sorts by.
constexpr std::array<std::string_view, 22> kDtypeOrder{
    "BOOL", "F4",  "F6_E2M3", "F6_E3M2", "U8",  "I8",  "F8_E5M2", "F8_E4M3", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ",
    "I16",  "U16", "F16",     "BF16",    "I32", "U32", "F32",     "C64",     "F64",     "I64",         "U64"};

int dtype_rank(std::string_view dtype) {
  for (size_t i = 0; i < kDtypeOrder.size(); ++i)
    if (kDtypeOrder[i] == dtype) return static_cast<int>(i);
  return -1;
}

// A JSON string as serde_json writes it (see the header).
void append_json_string(std::string& out, std::string_view s) {
  static const char* kHex = "0123456789abcdef";
  out += '"';
  for (char ch : s) {
    auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\t': out += "\\t"; break;
      case '\n': out += "\\n"; break;
      case '\f': out += "\\f"; break;
      case '\r': out += "\\r"; break;
      default:
        if (c < 0x20) {
          out += "\\u00";
          out += kHex[c >> 4];
          out += kHex[c & 15];
        } else {
          out += ch;
        }
    }
  }
  out += '"';
}

void append_uint_array(std::string& out, const std::vector<uint64_t>& v) {
  out += '[';
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) out += ',';
    out += std::to_string(v[i]);
  }
  out += ']';
}

std::string printable(const std::string& key) {
  // Messages are one line: control bytes in a key are shown as JSON escapes.
  std::string s;
  append_json_string(s, key);
  return s;
}

}  // namespace

SafetensorsMetadata default_safetensors_metadata() { return {{"format", "pt"}}; }

std::shared_ptr<SafetensorsImage> make_safetensors(std::vector<SafetensorsInput> tensors,
                                                   const SafetensorsMetadata& metadata) {
  // torch's float4_e2m1fn_x2 (nemofs F4_X2: one byte holds two 4-bit values, the shape counts
  // bytes) is what the reference's torch binding saves as F4 with the last dimension doubled, so
  // the header counts 4-bit elements; the bytes are the same. A 0-d one has no such shape.
  for (auto& t : tensors) {
    if (t.dtype != "F4_X2") continue;
    if (t.shape.empty())
      throw FormatError(kFmt, "tensor " + printable(t.key) + (t.origin.empty() ? "" : " (" + t.origin + ")") +
                                  ": a 0-d float4_e2m1fn_x2 tensor has no safetensors F4 shape");
    t.dtype = "F4";
    t.shape.back() = checked_mul(t.shape.back(), uint64_t{2}, kFmt, std::nullopt, "F4 shape");
  }
  std::map<std::string, const SafetensorsInput*> seen;
  for (const auto& t : tensors) {
    std::string where = t.origin.empty() ? "" : " (" + t.origin + ")";
    if (dtype_rank(t.dtype) < 0)
      throw FormatError(kFmt, "tensor " + printable(t.key) + where + ": dtype " + t.dtype +
                                  " has no safetensors equivalent");
    if (t.key.size() > kMaxHeader)
      throw FormatError(kFmt, "tensor " + printable(t.key.substr(0, 40)) + "...: a key of " + std::to_string(t.key.size()) +
                                  " bytes exceeds safetensors' header limit of " + std::to_string(kMaxHeader) + " bytes");
    if (find_invalid_utf8(t.key))
      throw FormatError(kFmt, "tensor " + printable(t.key) + where + ": key is not valid UTF-8");
    if (t.key == "__metadata__")
      throw FormatError(kFmt, "tensor" + where + ": the key __metadata__ is reserved by safetensors");
    auto [it, fresh] = seen.emplace(t.key, &t);
    if (!fresh)
      throw FormatError(kFmt, "two tensors would have the key " + printable(t.key) + ": " +
                                  (it->second->origin.empty() ? "?" : it->second->origin) + " and " +
                                  (t.origin.empty() ? "?" : t.origin));
    auto dt = dtype_by_name(t.dtype);
    uint64_t want = tensor_nbytes(*dt, t.shape, kFmt, std::nullopt);
    if (!t.data || t.data->size() != want)
      throw FormatError(kFmt, "tensor " + printable(t.key) + where + ": " +
                                  std::to_string(t.data ? t.data->size() : 0) + " bytes, dtype and shape need " +
                                  std::to_string(want));
  }
  for (const auto& [k, v] : metadata)
    if (find_invalid_utf8(k) || find_invalid_utf8(v)) throw FormatError(kFmt, "metadata is not valid UTF-8");

  // The reference's order: descending dtype (enum position), then key (bytes; std::string
  // compares as unsigned char, like Rust's str).
  std::stable_sort(tensors.begin(), tensors.end(), [](const SafetensorsInput& a, const SafetensorsInput& b) {
    int ra = dtype_rank(a.dtype), rb = dtype_rank(b.dtype);
    if (ra != rb) return ra > rb;
    return a.key < b.key;
  });

  auto img = std::shared_ptr<SafetensorsImage>(new SafetensorsImage());
  std::string json = "{";
  bool first = true;
  if (!metadata.empty()) {
    json += "\"__metadata__\":{";
    for (size_t i = 0; i < metadata.size(); ++i) {
      if (i) json += ',';
      append_json_string(json, metadata[i].first);
      json += ':';
      append_json_string(json, metadata[i].second);
    }
    json += '}';
    first = false;
  }
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    if (!first) json += ',';
    first = false;
    append_json_string(json, t.key);
    json += ":{\"dtype\":";
    append_json_string(json, t.dtype);
    json += ",\"shape\":";
    append_uint_array(json, t.shape);
    uint64_t end = checked_add(offset, t.data->size(), kFmt, std::nullopt, "data size");
    json += ",\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(end) + "]}";
    img->starts_.push_back(offset);
    offset = end;
    // Checked as it grows, so a huge tree is refused before it costs gigabytes of header.
    if (json.size() > kMaxHeader)
      throw FormatError(kFmt, "the header would exceed safetensors' limit of " + std::to_string(kMaxHeader) +
                                  " bytes (" + std::to_string(tensors.size()) + " tensors); export a part with --select");
  }
  json += '}';
  json.append((8 - json.size() % 8) % 8, ' ');
  if (json.size() > kMaxHeader)
    throw FormatError(kFmt, "the header would exceed safetensors' limit of " + std::to_string(kMaxHeader) +
                                " bytes (" + std::to_string(tensors.size()) + " tensors); export a part with --select");
  uint64_t n = json.size();
  img->header_.resize(8);
  for (int i = 0; i < 8; ++i) img->header_[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  img->header_ += json;
  img->data_size_ = offset;
  img->tensors_ = std::move(tensors);
  checked_add(img->header_.size(), img->data_size_, kFmt, std::nullopt, "file size");
  return img;
}

size_t SafetensorsImage::tensor_at(uint64_t d) const {
  auto it = std::upper_bound(starts_.begin(), starts_.end(), d);
  return static_cast<size_t>(it - starts_.begin()) - 1;
}

size_t SafetensorsImage::read_at(uint64_t off, void* buf, size_t len) const {
  uint64_t total = size();
  if (off >= total || len == 0) return 0;
  len = static_cast<size_t>(std::min<uint64_t>(len, total - off));
  auto* p = static_cast<char*>(buf);
  size_t done = 0;
  if (off < header_.size()) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(len, header_.size() - off));
    std::memcpy(p, header_.data() + off, n);
    done = n;
  }
  while (done < len) {
    uint64_t d = off + done - header_.size();
    size_t i = tensor_at(d);
    const auto& src = *tensors_[i].data;
    uint64_t local = d - starts_[i];
    size_t want = static_cast<size_t>(std::min<uint64_t>(len - done, src.size() - local));
    size_t got = src.read_at(local, p + done, want);
    done += got;
    if (got != want) break;  // the source threw or ended: callers see a short read
  }
  return done;
}

std::optional<FileRange> SafetensorsImage::file_range(uint64_t off, uint64_t len) const {
  if (len == 0 || off < header_.size() || off >= size() || len > size() - off) return std::nullopt;
  uint64_t d = off - header_.size();
  size_t i = tensor_at(d);
  uint64_t local = d - starts_[i];
  if (len > tensors_[i].data->size() - local) return std::nullopt;
  return tensors_[i].data->file_range(local, len);
}

void SafetensorsImage::pieces(uint64_t off, uint64_t len, std::vector<Piece>& out) const {
  uint64_t done = 0;
  if (off < header_.size()) {
    uint64_t n = std::min<uint64_t>(len, header_.size() - off);
    out.push_back(Piece{n, false, std::nullopt});
    done = n;
  }
  while (done < len) {
    uint64_t d = off + done - header_.size();
    size_t i = tensor_at(d);
    const auto& src = *tensors_[i].data;
    uint64_t local = d - starts_[i];
    uint64_t n = std::min<uint64_t>(len - done, src.size() - local);
    src.pieces(local, n, out);
    done += n;
  }
}

std::string export_key(const std::string& rel) {
  std::string key;
  size_t start = 0;
  while (true) {
    size_t slash = rel.find('/', start);
    std::string_view comp(rel.data() + start, (slash == std::string::npos ? rel.size() : slash) - start);
    if (start) key += '.';
    key += unescape_key(comp);
    if (slash == std::string::npos) break;
    start = slash + 1;
  }
  return key;
}

std::vector<SafetensorsInput> tree_tensors(const Tree& tree, NodeId dir) {
  if (tree.node(dir).type != NodeType::Dir) throw FormatError(kFmt, "not a folder: " + tree.path_of(dir));
  std::string base = tree.path_of(dir);
  std::vector<SafetensorsInput> out;
  std::map<std::string, std::string> owner;  // key -> path
  tree.walk(
      [&](NodeId id, const Node& n) {
        if (n.type != NodeType::File) return;
        auto side = tree.lookup(n.parent, n.name + ".json");
        if (!side) return;
        const auto* mem = dynamic_cast<const MemorySource*>(tree.node(*side).data.get());
        if (!mem) return;
        auto j = nlohmann::json::parse(mem->bytes(), nullptr, false);
        if (j.is_discarded() || !j.is_object() || !j.contains("dtype") || !j.contains("shape") || !j.contains("nbytes"))
          return;
        if (!j["dtype"].is_string() || !j["shape"].is_array() || !j["nbytes"].is_number_unsigned() ||
            j["nbytes"].get<uint64_t>() != n.data->size())
          return;
        SafetensorsInput t;
        t.dtype = j["dtype"].get<std::string>();
        for (const auto& d : j["shape"]) {
          if (!d.is_number_unsigned()) return;
          t.shape.push_back(d.get<uint64_t>());
        }
        std::string path = tree.path_of(id);
        std::string rel = base.empty() ? path : path.substr(base.size() + 1);
        t.key = export_key(rel);
        t.data = n.data;
        t.origin = path;
        auto [it, fresh] = owner.emplace(t.key, path);
        if (!fresh)
          throw FormatError(kFmt, "two tensors would have the key " + printable(t.key) + ": " + it->second + " and " + path);
        out.push_back(std::move(t));
      },
      dir);
  return out;
}

std::vector<NodeId> tensor_views(const Tree& tree) {
  std::vector<NodeId> views;
  std::function<void(NodeId)> visit = [&](NodeId d) {
    for (const auto& [name, child] : tree.node(d).children) {
      const Node& c = tree.node(child);
      if (c.type != NodeType::Dir) continue;
      constexpr std::string_view kSuffix = ".tensors";
      if (name.size() > kSuffix.size() && name.compare(name.size() - kSuffix.size(), kSuffix.size(), kSuffix) == 0 &&
          tree.lookup(d, std::string_view(name).substr(0, name.size() - kSuffix.size()))) {
        views.push_back(child);  // a view holds a checkpoint's tree, not further views
        continue;
      }
      visit(child);
    }
  };
  visit(Tree::kRoot);
  return views;
}

NodeId default_export_dir(const Tree& tree, bool nemo) {
  if (!nemo) return Tree::kRoot;
  auto views = tensor_views(tree);
  if (views.size() == 1) return views[0];
  for (const char* name : {"model_weights.ckpt.tensors", "model_weights.tensors"})
    if (auto id = tree.lookup(Tree::kRoot, name); id && tree.node(*id).type == NodeType::Dir) return *id;
  if (views.empty())
    throw FormatError(kFmt, "the .nemo has no weights view (no member is a checkpoint nemofs reads); "
                            "choose a folder with --select");
  std::string list;
  for (NodeId v : views) list += (list.empty() ? "" : ", ") + tree.path_of(v);
  throw FormatError(kFmt, "the .nemo has several checkpoint views (" + list + "); choose one with --select");
}

NodeId select_export_dir(const Tree& tree, const std::string& path) {
  std::string p = path;
  while (!p.empty() && p.front() == '/') p.erase(0, 1);
  while (!p.empty() && p.back() == '/') p.pop_back();
  if (p.empty() || p == ".") return Tree::kRoot;
  auto id = tree.resolve(p);
  if (!id) throw FormatError(kFmt, "--select " + path + ": no such folder in the checkpoint's tree");
  if (tree.node(*id).type != NodeType::Dir)
    throw FormatError(kFmt, "--select " + path + ": not a folder (select the folder that holds it)");
  return *id;
}

void add_safetensors_view(Tree& tree, NodeId dir, std::vector<std::string>& warnings) {
  std::string where = tree.path_of(dir);
  std::string shown = where.empty() ? "model.safetensors" : where + "/model.safetensors";
  if (tree.lookup(dir, "model.safetensors")) {
    warnings.push_back(shown + ": the checkpoint has an entry of that name; it is shown instead of the -o safetensors view");
    return;
  }
  try {
    auto img = make_safetensors(tree_tensors(tree, dir), default_safetensors_metadata());
    img->set_description(shown);
    tree.add_file(dir, "model.safetensors", img);
  } catch (const FormatError& e) {
    warnings.push_back(shown + ": not shown: " + e.detail());
  }
}

void add_safetensors_views(Tree& tree, bool nemo, std::vector<std::string>& warnings) {
  if (nemo) {
    for (NodeId view : tensor_views(tree)) add_safetensors_view(tree, view, warnings);
  } else {
    add_safetensors_view(tree, Tree::kRoot, warnings);
  }
}

}  // namespace nemofs
