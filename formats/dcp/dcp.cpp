#include "formats/dcp/dcp.h"

#include <algorithm>
#include <charconv>
#include <cstring>
#include <functional>
#include <map>
#include <unordered_map>
#include <unordered_set>

#include "formats/core/checked.h"
#include "formats/core/errors.h"
#include "formats/core/tensor.h"
#include "formats/detect/checkpoint.h"
#include "formats/torch/torch.h"

namespace nemofs::dcp {
namespace {

using pickle::Kind;
using pickle::Value;

constexpr const char* kFmt = "dcp";

std::string dims_text(const std::vector<uint64_t>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

// Opens each data file of the folder once.
class DataFiles {
 public:
  explicit DataFiles(const FileSet& fs) : fs_(fs) {}
  template <typename W>
  SourcePtr get(const std::string& rel, const W& what_fn) {
    auto it = open_.find(rel);
    if (it != open_.end()) return it->second;
    const std::string what = what_fn();
    bool bad = rel.empty() || rel[0] == '/';
    for (size_t i = 0, j; !bad && i <= rel.size(); i = j + 1) {
      j = rel.find('/', i);
      if (j == std::string::npos) j = rel.size();
      std::string_view part(rel.data() + i, j - i);
      if (part == ".." || part == "." || part.empty()) bad = true;
    }
    if (bad) throw FormatError(kFmt, what + ": data file name '" + rel + "' leaves the checkpoint folder");
    SourcePtr src = fs_.open(rel);
    if (!src) throw FormatError(kFmt, what + ": data file '" + rel + "' is missing from " + fs_.describe());
    open_.emplace(rel, src);
    return src;
  }

 private:
  const FileSet& fs_;
  std::unordered_map<std::string, SourcePtr> open_;
};

// The data file holding an item, after checking the item can be read from it. `what` is a
// callable naming the item (messages are built only on failure).
template <typename W>
SourcePtr item_file(DataFiles& files, const StorageInfo& s, const W& what) {
  if (!s.transforms.empty()) {
    std::string t;
    for (const auto& x : s.transforms) t += (t.empty() ? "" : ", ") + x;
    throw FormatError(kFmt, what() + ": item is stored through transform(s) " + t +
                                " (compressed DCP items are not supported)");
  }
  SourcePtr file = files.get(s.file, what);
  auto end = try_add(s.offset, s.length);
  if (!end || *end > file->size())
    throw FormatError(kFmt, s.offset, what() + ": item [" + std::to_string(s.offset) + ", +" + std::to_string(s.length) +
                                          ") lies beyond the end of '" + s.file + "' (" + std::to_string(file->size()) +
                                          " bytes)");
  return file;
}

SourcePtr item_source(DataFiles& files, const StorageInfo& s, const std::string& what) {
  return make_sub(item_file(files, s, [&] { return what; }), s.offset, s.length, s.file + " @ " + std::to_string(s.offset));
}

void require_zip(const SourcePtr& item, const StorageInfo& s, const std::string& what) {
  char head[4] = {};
  if (item->read_at(0, head, 4) != 4 || std::memcmp(head, "PK\x03\x04", 4) != 0)
    throw FormatError(kFmt, s.offset, what + ": item at offset " + std::to_string(s.offset) + " of '" + s.file +
                                          "' is not an embedded torch.save zip (SAFETENSORS-serialized or raw DCP items "
                                          "are not supported)");
}

// Opens one tensor chunk: the embedded torch.save zip must hold one tensor of the entry's dtype
// and the chunk's sizes.
SourcePtr open_chunk(const SourcePtr& item, const StorageInfo& s, const DTypeInfo& dt, const std::vector<uint64_t>& sizes,
                     const std::string& what) {
  require_zip(item, s, what);
  auto f = torch::load_torch_zip(item);
  auto t = f->tensor(*f->doc.root);
  if (!t) throw FormatError(kFmt, s.offset, what + ": item in '" + s.file + "' does not hold a tensor");
  if (std::strcmp(t->dtype.name, dt.name) != 0)
    throw FormatError(kFmt, s.offset, what + ": chunk holds dtype " + t->dtype.name + " but .metadata says " + dt.name);
  if (t->shape != sizes)
    throw FormatError(kFmt, s.offset, what + ": chunk holds shape " + dims_text(t->shape) + " but .metadata says sizes " +
                                          dims_text(sizes));
  return f->tensor_bytes(*t);
}

// Whether a torch object holds a tensor below it (through dicts, lists and tuples).
bool holds_tensor(const torch::TorchFile& f, const Value* v, std::unordered_set<const Value*>& seen) {
  if (!seen.insert(v).second) return false;
  if (v->is(Kind::Dict)) {
    for (const auto& [k, x] : v->entries)
      if (holds_tensor(f, x, seen)) return true;
    return false;
  }
  if (v->is(Kind::List) || v->is(Kind::Tuple)) {
    for (const Value* x : v->items)
      if (holds_tensor(f, x, seen)) return true;
    return false;
  }
  return f.tensor(*v).has_value();
}

std::shared_ptr<torch::TorchFile> load_object(const SourcePtr& src) {
  char head[4] = {};
  if (src->read_at(0, head, 4) == 4 && std::memcmp(head, "PK\x03\x04", 4) == 0) return torch::load_torch_zip(src);
  return torch::load_torch_legacy(src);
}

// ------------------------------------------------------------------------------------------
// The object tree rebuilt from planner paths.

struct ONode {
  const Entry* entry = nullptr;                 // leaf
  SourcePtr tensor;                             // tensor leaf: the assembled bytes
  std::string sidecar;                          // tensor leaf: its `.json` body
  SourcePtr sidecar_src;                        // or that body rendered on each read (see RenderedSource)
  uint64_t nbytes = 0;                          // tensor leaf: dtype x shape
  std::shared_ptr<torch::TorchFile> object;     // bytes leaf
  bool leaf_tensors = false;                    // bytes leaf whose object holds tensors
  std::vector<std::pair<PathElem, std::unique_ptr<ONode>>> kids;
  std::unordered_map<std::string, size_t> by_name;
  bool has_tensor = false;
  bool is_leaf() const { return entry != nullptr; }
};

std::string elem_name(const PathElem& p) { return p.is_index ? std::to_string(p.index) : p.key; }

// Inserts every entry at its path; false when two paths collide (a leaf where a container is
// needed, or the same path twice).
bool place(ONode& root, std::vector<ONode*>& leaves, const std::vector<Entry>& entries, bool use_paths) {
  for (const Entry& e : entries) {
    std::vector<PathElem> flat{PathElem{false, 0, e.fqn}};
    const auto& path = use_paths && !e.path.empty() ? e.path : flat;
    ONode* n = &root;
    for (size_t i = 0; i < path.size(); ++i) {
      if (n->is_leaf()) return false;
      std::string name = elem_name(path[i]);
      auto it = n->by_name.find(name);
      if (it == n->by_name.end()) {
        n->by_name.emplace(name, n->kids.size());
        n->kids.emplace_back(path[i], std::make_unique<ONode>());
        n = n->kids.back().second.get();
      } else {
        n = n->kids[it->second].second.get();
        if (i + 1 == path.size()) return false;  // the same path twice, or a leaf over a container
      }
    }
    if (!n->kids.empty()) return false;
    n->entry = &e;
    leaves.push_back(n);
  }
  return true;
}

bool mark_tensors(ONode& n) {
  if (n.is_leaf()) return n.has_tensor = n.entry->is_tensor || n.leaf_tensors;
  bool any = false;
  for (auto& [p, k] : n.kids) any = mark_tensors(*k) || any;
  return n.has_tensor = any;
}

nlohmann::ordered_json render(const ONode& n, pickle::RenderBudget& budget) {
  if (n.is_leaf()) return pickle::to_json(*n.object->doc.root, budget);
  bool all_index = std::all_of(n.kids.begin(), n.kids.end(), [](const auto& k) { return k.first.is_index && k.first.index >= 0; });
  if (all_index && !n.kids.empty()) {
    int64_t top = 0;
    for (const auto& [p, k] : n.kids) top = std::max(top, p.index);
    if (static_cast<uint64_t>(top) < 4 * n.kids.size() + 16) {
      auto arr = nlohmann::ordered_json::array();
      std::vector<const ONode*> slot(static_cast<size_t>(top) + 1, nullptr);
      for (const auto& [p, k] : n.kids) slot[static_cast<size_t>(p.index)] = k.get();
      for (const ONode* k : slot) arr.push_back(k ? render(*k, budget) : nlohmann::ordered_json());
      return arr;
    }
  }
  auto obj = nlohmann::ordered_json::object();
  for (const auto& [p, k] : n.kids) obj[elem_name(p)] = render(*k, budget);
  return obj;
}

void add_json_file(Tree& tree, NodeId dir, const std::string& key, const nlohmann::ordered_json& j) {
  std::string name = escape_key(key) + ".json";
  tree.add_file(dir, name,
                std::make_shared<MemorySource>(j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n", name));
}

// A text file rendered again at every read instead of held: the sidecars of a checkpoint with
// many chunks list every chunk (~190 bytes each) and held, they were most of a mounted
// 100,000-chunk checkpoint's memory (19 of ~80 MiB), while they are read rarely, and once each
// through the kernel's page cache. The renderer must give the same text every time (it renders
// from metadata kept alive with it); a different length is an I/O error, never other bytes.
class RenderedSource final : public ByteSource {
 public:
  RenderedSource(std::function<std::string()> render, uint64_t size, std::string what)
      : render_(std::move(render)), size_(size), what_(std::move(what)) {}
  uint64_t size() const override { return size_; }
  size_t read_at(uint64_t off, void* buf, size_t len) const override {
    if (off >= size_ || len == 0) return 0;
    std::string text = render_();
    if (text.size() != size_) throw SysError(EIO, what_ + ": rendered " + std::to_string(text.size()) +
                                                     " bytes, " + std::to_string(size_) + " expected");
    size_t n = static_cast<size_t>(std::min<uint64_t>(len, size_ - off));
    std::memcpy(buf, text.data() + off, n);
    return n;
  }
  std::string describe() const override { return what_; }

 private:
  std::function<std::string()> render_;
  uint64_t size_;
  std::string what_;
};

// add_tensor() with the sidecar already rendered.
void add_tensor_file(Tree& tree, NodeId dir, const std::string& key, ONode& leaf) {
  if (leaf.tensor->size() != leaf.nbytes)
    throw FormatError("tensor", "tensor '" + key + "' has " + std::to_string(leaf.tensor->size()) +
                                    " bytes but dtype and shape say " + std::to_string(leaf.nbytes));
  std::string name = escape_key(key);
  tree.add_file(dir, name, std::move(leaf.tensor));
  name += ".json";
  tree.add_file(dir, name, leaf.sidecar_src ? std::move(leaf.sidecar_src)
                                             : std::make_shared<MemorySource>(std::move(leaf.sidecar), name));
}

void emit(Tree& tree, NodeId dir, ONode& n, pickle::RenderBudget& budget) {
  for (auto& [p, k] : n.kids) {
    const std::string name = elem_name(p);
    if (k->is_leaf() && k->entry->is_tensor) {
      add_tensor_file(tree, dir, name, *k);
    } else if (k->is_leaf() && k->leaf_tensors) {
      torch::build_torch_tree(tree, tree.add_dir(dir, escape_key(name)), *k->object);
    } else if (k->has_tensor) {
      emit(tree, tree.add_dir(dir, escape_key(name)), *k, budget);
    } else {
      add_json_file(tree, dir, name, render(*k, budget));
    }
  }
}

// Copies the children of `from` in `src` under `to` in `dst`, skipping names `to` already has.
void merge_into(Tree& dst, NodeId to, const Tree& src, NodeId from) {
  for (const auto& [name, id] : src.node(from).children) {
    const Node& n = src.node(id);
    if (dst.lookup(to, name)) continue;
    if (n.type == NodeType::File) {
      dst.add_file(to, name, n.data);
    } else {
      NodeId d = dst.add_dir(to, name);
      merge_into(dst, d, src, id);
    }
  }
}

// A string as nlohmann::json dumps it (quoted, escaped, invalid UTF-8 replaced).
void put_string(std::string& out, std::string_view s) {
  bool plain = true;
  for (char c : s) {
    auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u >= 0x7F || c == '"' || c == '\\') {
      plain = false;
      break;
    }
  }
  if (plain) {
    out += '"';
    out.append(s);
    out += '"';
    return;
  }
  out += nlohmann::json(std::string(s)).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

void put_uint(std::string& out, uint64_t v) {
  char buf[24];
  auto r = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, r.ptr);
}

// A list of numbers as nlohmann's dump(2) writes it at `indent` spaces.
void put_dims(std::string& out, const std::vector<uint64_t>& v, size_t indent) {
  if (v.empty()) {
    out += "[]";
    return;
  }
  out += "[\n";
  for (size_t i = 0; i < v.size(); ++i) {
    out.append(indent + 2, ' ');
    put_uint(out, v[i]);
    out += i + 1 < v.size() ? ",\n" : "\n";
  }
  out.append(indent, ' ');
  out += ']';
}

}  // namespace

std::string sidecar_text(const Entry& e, const char* dtype, uint64_t elem_bytes, uint64_t nbytes) {
  // Keys in the order nlohmann::json (a sorted map) writes them; the bytes are exactly
  // json_file_body(sidecar_json(meta)) of the TensorMeta this describes (a unit test checks).
  std::string out;
  const bool list = e.chunks.size() <= kSidecarChunkLimit;
  out.reserve(256 + (list ? e.chunks.size() * (140 + 2 * 12 * e.shape.size()) : 0));
  out += "{\n";
  size_t nonempty = 0;
  if (list) out += "  \"chunks\": ";
  for (const Chunk& c : e.chunks) {
    uint64_t vol = elem_bytes;
    for (uint64_t s : c.box.sizes) vol *= s;
    if (vol == 0) continue;
    ++nonempty;
    if (!list) continue;
    out += nonempty == 1 ? "[\n" : ",\n";
    out += "    {\n      \"file\": ";
    put_string(out, c.storage.file);
    out += ",\n      \"length\": ";
    put_uint(out, c.storage.length);
    out += ",\n      \"offset\": ";
    put_uint(out, c.storage.offset);
    out += ",\n      \"offsets\": ";
    put_dims(out, c.box.offsets, 6);
    out += ",\n      \"sizes\": ";
    put_dims(out, c.box.sizes, 6);
    out += "\n    }";
  }
  if (list) out += nonempty ? "\n  ],\n" : "[],\n";
  else out += "  \"chunk_count\": " + std::to_string(nonempty) + ",\n";
  out += "  \"dtype\": ";
  put_string(out, dtype);
  out += ",\n  \"fqn\": ";
  put_string(out, e.fqn);
  out += ",\n";
  if (e.mcore_orig_shape) {
    // (the round trip through text is what the nlohmann-built sidecar did, errors included)
    std::string v = nlohmann::json::parse(e.mcore_orig_shape->dump()).dump(2, ' ', false, nlohmann::json::error_handler_t::replace);
    out += "  \"mcore_nd_reformulated_orig_global_shape\": ";
    for (char c : v) {
      out += c;
      if (c == '\n') out += "  ";  // one level deeper than a standalone dump
    }
    out += ",\n";
  }
  out += "  \"nbytes\": " + std::to_string(nbytes) + ",\n  \"shape\": ";
  put_dims(out, e.shape, 2);
  out += ",\n  \"source\": \"dcp\",\n  \"torch_dtype\": ";
  put_string(out, e.torch_dtype);
  out += "\n}\n";
  return out;
}

void build_dcp(Tree& tree, NodeId dir, const FileSet& files) {
  SourcePtr meta_src = files.open(".metadata");
  if (!meta_src) throw FormatError(kFmt, files.describe() + ": no .metadata file");
  auto keep = std::make_shared<Metadata>();
  Metadata& md = *keep;
  try {
    md = parse_metadata(*meta_src);
  } catch (const FormatError& e) {
    // pickle errors carry the byte offset; name the file they are in
    throw FormatError(e.format(), e.offset(), files.describe() + "/.metadata: " + e.detail());
  }
  DataFiles data(files);

  size_t total_chunks = 0;
  for (const Entry& e : md.entries) total_chunks += e.chunks.size();
  const bool eager = total_chunks <= kEagerChunkLimit;

  ONode root;
  std::vector<ONode*> leaves;
  if (!place(root, leaves, md.entries, true)) {
    root = ONode{};
    leaves.clear();
    place(root, leaves, md.entries, false);
  }

  std::vector<Box> boxes;
  for (ONode* leaf : leaves) {
    const Entry& e = *leaf->entry;
    const std::string what = "'" + e.fqn + "'";
    if (!e.is_tensor) {
      SourcePtr item = item_source(data, e.storage, what);
      require_zip(item, e.storage, what);
      leaf->object = torch::load_torch_zip(item);
      std::unordered_set<const Value*> seen;
      leaf->leaf_tensors = holds_tensor(*leaf->object, leaf->object->doc.root, seen);
      continue;
    }
    auto dt = dtype_from_torch(e.torch_dtype);
    if (!dt || dt->bits % 8 != 0)
      throw FormatError(kFmt, what + ": torch dtype " + e.torch_dtype + " cannot be shown as raw bytes");
    const uint64_t elem = dt->bits / 8;
    boxes.clear();
    boxes.reserve(e.chunks.size());
    for (const Chunk& c : e.chunks) boxes.push_back(c.box);
    validate_tiling(e.shape, boxes, what);
    std::vector<Box>().swap(boxes);  // not held beside the chunks built below
    const uint64_t nbytes = tensor_nbytes(*dt, e.shape, kFmt, std::nullopt);
    leaf->sidecar = sidecar_text(e, dt->name, elem, nbytes);
    if (!eager) {
      // Many chunks: the metadata stays alive with the chunks anyway; render from it on demand.
      const uint64_t size = leaf->sidecar.size();
      leaf->sidecar_src = std::make_shared<RenderedSource>(
          [keep, &e, name = dt->name, elem, nbytes] { return sidecar_text(e, name, elem, nbytes); }, size,
          what + " (sidecar)");
      std::string().swap(leaf->sidecar);
    }
    leaf->nbytes = nbytes;

    std::vector<ShardChunk> chunks;
    chunks.reserve(e.chunks.size());
    for (size_t i = 0; i < e.chunks.size(); ++i) {
      const Chunk& c = e.chunks[i];
      uint64_t vol = elem;
      for (uint64_t s : c.box.sizes) vol *= s;  // bounded by the validated tensor size
      if (vol == 0) continue;
      auto cw = [&] { return what + " chunk " + dims_text(c.box.offsets); };
      SourcePtr file = item_file(data, c.storage, cw);
      if (c.storage.length < vol)
        throw FormatError(kFmt, c.storage.offset, cw() + ": item of " + std::to_string(c.storage.length) + " bytes in '" +
                                                      c.storage.file + "' cannot hold the chunk's " + std::to_string(vol) +
                                                      " bytes of " + dt->name);
      ShardChunk sc;
      sc.box = c.box;
      sc.what = c.storage.file + " @ " + std::to_string(c.storage.offset);
      if (eager) {
        SourcePtr item = make_sub(file, c.storage.offset, c.storage.length, sc.what);
        SourcePtr bytes = open_chunk(item, c.storage, *dt, c.box.sizes, cw());
        sc.open = [bytes] { return bytes; };
      } else {
        // The metadata stays alive with the chunks that refer to it.
        sc.open = [keep, &c, &e, file, d = *dt] {
          SourcePtr item = make_sub(file, c.storage.offset, c.storage.length);
          return open_chunk(item, c.storage, d, c.box.sizes, "'" + e.fqn + "' chunk " + dims_text(c.box.offsets));
        };
      }
      chunks.push_back(std::move(sc));
    }

    if (eager && chunks.size() == 1 && [&] {
          const Box& b = chunks[0].box;
          return b.sizes == e.shape;
        }()) {
      leaf->tensor = chunks[0].open();  // a whole tensor in one chunk: its own source (zero-copy)
      if (leaf->tensor->size() != nbytes)
        throw FormatError(kFmt, what + ": chunk holds " + std::to_string(leaf->tensor->size()) + " bytes, expected " +
                                    std::to_string(nbytes));
    } else {
      leaf->tensor = std::make_shared<ShardedTensorSource>(e.shape, elem, std::move(chunks), files.describe() + ": " + what);
    }
  }

  mark_tensors(root);
  pickle::RenderBudget budget;
  emit(tree, dir, root, budget);

  // Lightning (meta.pt) and Megatron (common.pt) keep the non-sharded part of the checkpoint
  // beside the DCP files; loaders merge it with the sharded state.
  for (const char* side : {"meta.pt", "common.pt"}) {
    SourcePtr src = files.open(side);
    if (!src) continue;
    std::shared_ptr<torch::TorchFile> f;
    try {
      f = load_object(src);
    } catch (const FormatError& e) {
      throw FormatError(e.format(), e.offset(), files.describe() + "/" + side + ": " + e.detail());
    }
    Tree side_tree;
    torch::build_torch_tree(side_tree, Tree::kRoot, *f);
    merge_into(tree, dir, side_tree, Tree::kRoot);
  }
}

}  // namespace nemofs::dcp
