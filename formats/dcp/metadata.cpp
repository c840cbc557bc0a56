// The .metadata pickle -> dcp::Metadata (see dcp.h for the layout).
#include <algorithm>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string_view>
#include <unordered_map>
#include <unordered_set>

#include "formats/core/checked.h"
#include "formats/core/errors.h"
#include "formats/core/hash.h"
#include "formats/core/tensor.h"
#include "formats/dcp/dcp.h"
#include "formats/pickle/pickle.h"

namespace nemofs::dcp {
namespace {

using pickle::Kind;
using pickle::Value;

constexpr const char* kFmt = "dcp";

[[noreturn]] void bad(const std::string& msg) { throw FormatError(kFmt, ".metadata: " + msg); }

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The class name of an Object (after the last '.'), "" otherwise.
std::string class_name(const Value* v) {
  if (!v || !v->is(Kind::Object) || !v->cls || !v->cls->is(Kind::Global)) return {};
  return v->cls->name();
}

// A dataclass instance's fields: the BUILD state dict, or the dict half of a (dict, slots) tuple.
// Null when the object carries no dict state (fields left at their defaults).
const Value* fields(const Value* obj) {
  if (!obj || !obj->is(Kind::Object) || !obj->state) return nullptr;
  const Value* s = obj->state;
  if (s->is(Kind::Dict)) return s;
  if (s->is(Kind::Tuple) && s->items.size() == 2) {
    if (s->items[0]->is(Kind::Dict)) return s->items[0];
    if (s->items[1]->is(Kind::Dict)) return s->items[1];
  }
  return nullptr;
}

const Value* field(const Value* obj, std::string_view name) {
  const Value* f = fields(obj);
  if (!f) return nullptr;
  const Value* v = f->get(name);
  if (v) return v;
  // slots dataclasses: the second half of the state tuple holds the slot values
  if (obj->state->is(Kind::Tuple) && obj->state->items.size() == 2 && obj->state->items[1]->is(Kind::Dict))
    return obj->state->items[1]->get(name);
  return nullptr;
}

// The compact records of the three dataclasses a .metadata holds one (or two) of per chunk, made
// while the pickle is read (pickle::Compactor), so that a file listing a million chunks is never
// held as ~26 Values a chunk. An instance whose fields are not what these records hold (a
// transform list, a field of an unexpected type) is declined and stays Values, read below as
// before (with the same messages).
class Records final : public pickle::Compactor {
 public:
  enum RecKind : uint64_t { kChunk = 1, kIndex = 2, kInfo = 3 };
  struct ChunkRec {
    uint64_t at;  // offsets at pool[at, at + n), sizes at pool[at + n, at + 2n)
    uint32_t n;
  };
  struct IndexRec {
    uint64_t at;     // offset at pool[at, at + n)
    uint32_t n;
    uint32_t fqn;    // name id
    bool has_offset;
  };
  struct InfoRec {
    uint64_t offset, length;
    uint32_t file;  // name id
  };

  bool wants(const Value& cls) override {
    std::string_view n = cls.name();
    return n == "ChunkStorageMetadata" || n == "MetadataIndex" || n == "_StorageInfo";
  }

  int64_t compact(const Value& obj) override {
    const std::string_view n = obj.cls->name();
    if (!fields(&obj)) return -1;
    if (n == "ChunkStorageMetadata") {
      const Value* off = field(&obj, "offsets");
      const Value* size = field(&obj, "sizes");
      if (!int_tuple_ok(off) || !int_tuple_ok(size) || off->items.size() != size->items.size()) return -1;
      ChunkRec r{pool.size(), static_cast<uint32_t>(off->items.size())};
      put(off);
      put(size);
      chunks.push_back(r);
      return id(kChunk, chunks.size() - 1);
    }
    if (n == "MetadataIndex") {
      const Value* fqn = field(&obj, "fqn");
      const Value* off = field(&obj, "offset");
      if (!fqn || !fqn->is(Kind::Str)) return -1;
      IndexRec r{pool.size(), 0, name_id(fqn->str), false};
      if (off && !off->is(Kind::None)) {
        if (!int_tuple_ok(off)) return -1;
        r.n = static_cast<uint32_t>(off->items.size());
        r.has_offset = true;
        put(off);
      }
      index.push_back(r);
      return id(kIndex, index.size() - 1);
    }
    if (n != "_StorageInfo") return -1;
    const Value* path = field(&obj, "relative_path");
    const Value* off = field(&obj, "offset");
    const Value* len = field(&obj, "length");
    const Value* t = field(&obj, "transform_descriptors");
    if (!path || !path->is(Kind::Str) || !nonneg_ok(off) || !nonneg_ok(len)) return -1;
    if (t && !t->is(Kind::None) && !((t->is(Kind::List) || t->is(Kind::Tuple)) && t->items.empty())) return -1;
    infos.push_back(InfoRec{static_cast<uint64_t>(off->i), static_cast<uint64_t>(len->i), name_id(path->str)});
    return id(kInfo, infos.size() - 1);
  }

  // The record kind of a compacted Value (0 when it is not one) and its index.
  static uint64_t kind_of(const Value* v) {
    return v && v->is(Kind::Object) && v->tag == pickle::Tag::Compacted ? static_cast<uint64_t>(v->i) >> 56 : 0;
  }
  static size_t index_of(const Value* v) { return static_cast<size_t>(static_cast<uint64_t>(v->i) & ((uint64_t{1} << 56) - 1)); }

  void clear() { *this = Records(); }

  std::vector<uint64_t> pool;
  std::vector<ChunkRec> chunks;
  std::vector<IndexRec> index;
  std::vector<InfoRec> infos;
  std::deque<std::string> names;  // stable addresses: keys of name_ids and of the storage index

 private:
  static int64_t id(uint64_t kind, size_t i) { return static_cast<int64_t>((kind << 56) | i); }
  static bool nonneg_ok(const Value* v) { return v && v->is(Kind::Int) && v->i >= 0; }
  static bool int_tuple_ok(const Value* v) {
    if (!v || !(v->is(Kind::Tuple) || v->is(Kind::List))) return false;
    return std::all_of(v->items.begin(), v->items.end(), nonneg_ok);
  }
  void put(const Value* t) {
    for (const Value* x : t->items) pool.push_back(static_cast<uint64_t>(x->i));
  }
  uint32_t name_id(std::string_view s) {
    auto it = name_ids.find(s);
    if (it != name_ids.end()) return it->second;
    names.emplace_back(s);
    const auto n = static_cast<uint32_t>(names.size() - 1);
    name_ids.emplace(std::string_view(names.back()), n);
    return n;
  }
  std::unordered_map<std::string_view, uint32_t> name_ids;
};

// `what` is a callable giving the field's name; messages are only built on failure.
template <typename W>
std::vector<uint64_t> int_tuple(const Value* v, const W& what) {
  if (!v || !(v->is(Kind::Tuple) || v->is(Kind::List))) bad(what() + " is not a tuple of ints");
  std::vector<uint64_t> out;
  out.reserve(v->items.size());
  for (const Value* x : v->items) {
    if (!x->is(Kind::Int) || x->i < 0) bad(what() + " holds something that is not a non-negative int");
    out.push_back(static_cast<uint64_t>(x->i));
  }
  return out;
}

template <typename W>
uint64_t nonneg(const Value* v, const W& what) {
  if (!v || !v->is(Kind::Int) || v->i < 0) bad(what() + " is not a non-negative int");
  return static_cast<uint64_t>(v->i);
}

std::string dtype_of(const Value* props, const std::string& fqn) {
  const Value* d = nullptr;
  if (props && props->is(Kind::Object) && props->state) {
    if (props->state->is(Kind::Tuple) && !props->state->items.empty()) d = props->state->items[0];
    else if (props->state->is(Kind::Dict)) d = props->state->get("dtype");
  }
  if (!d) bad("tensor '" + fqn + "' has no TensorProperties dtype");
  if (!d->is(Kind::Global) || d->tag != pickle::Tag::TorchDtype)
    bad("tensor '" + fqn + "' has dtype " + (d->is(Kind::Global) ? d->qualified_name() : "of an unknown kind") +
        ", not a torch dtype");
  return d->dtype();
}

template <typename W>
StorageInfo storage_info(const Value* v, const Records& recs, const W& what) {
  if (Records::kind_of(v) == Records::kInfo) {
    const Records::InfoRec& r = recs.infos[Records::index_of(v)];
    return StorageInfo{recs.names[r.file], r.offset, r.length, {}};
  }
  if (!v || !v->is(Kind::Object)) bad(what() + ": storage entry is not a _StorageInfo");
  StorageInfo s;
  const Value* path = field(v, "relative_path");
  if (!path || !path->is(Kind::Str)) bad(what() + ": _StorageInfo has no relative_path");
  s.file = path->str;
  s.offset = nonneg(field(v, "offset"), [&] { return what() + ": _StorageInfo offset"; });
  s.length = nonneg(field(v, "length"), [&] { return what() + ": _StorageInfo length"; });
  if (const Value* t = field(v, "transform_descriptors"); t && !t->is(Kind::None)) {
    if (!(t->is(Kind::List) || t->is(Kind::Tuple))) bad(what() + ": transform_descriptors is not a list");
    for (const Value* x : t->items) {
      if (!x->is(Kind::Str)) bad(what() + ": a transform descriptor is not a str");
      s.transforms.push_back(x->str);
    }
  }
  return s;
}

// storage_data grouped by fqn; a chunk is matched by offsets (its position in the list first,
// which is where writers usually put it, then a per-fqn map built on demand). Offsets live in
// the Records' pool (those of uncompacted keys are added to it).
struct StorageIndex {
  explicit StorageIndex(const std::vector<uint64_t>& pool) : pool(pool) {}
  struct Item {
    uint64_t at = 0;
    uint32_t n = 0;
    bool has_offset = false;
    const Value* info = nullptr;
  };
  struct Group {
    std::vector<Item> items;
    mutable std::unique_ptr<std::map<std::vector<uint64_t>, const Value*>> by_offsets;
  };
  const std::vector<uint64_t>& pool;
  std::unordered_map<std::string_view, Group> by_fqn;

  bool same(const Item& x, const std::vector<uint64_t>& offsets) const {
    return x.n == offsets.size() && std::equal(offsets.begin(), offsets.end(), pool.begin() + static_cast<ptrdiff_t>(x.at));
  }
  const Value* find(std::string_view fqn, const std::vector<uint64_t>* offsets, size_t position) const {
    auto it = by_fqn.find(fqn);
    if (it == by_fqn.end()) return nullptr;
    const Group& g = it->second;
    if (!offsets) {
      for (const Item& x : g.items)
        if (!x.has_offset) return x.info;
      return nullptr;
    }
    if (position < g.items.size() && g.items[position].has_offset && same(g.items[position], *offsets))
      return g.items[position].info;
    if (!g.by_offsets) {
      g.by_offsets = std::make_unique<std::map<std::vector<uint64_t>, const Value*>>();
      for (const Item& x : g.items)
        if (x.has_offset)
          g.by_offsets->emplace(std::vector<uint64_t>(pool.begin() + static_cast<ptrdiff_t>(x.at),
                                                      pool.begin() + static_cast<ptrdiff_t>(x.at + x.n)),
                                x.info);
    }
    auto f = g.by_offsets->find(*offsets);
    return f == g.by_offsets->end() ? nullptr : f->second;
  }
};

// Value::get (first entry with that str key) for many lookups in one big dict.
class DictIndex {
 public:
  explicit DictIndex(const Value* d) {
    if (!d || !d->is(Kind::Dict)) return;
    map_.reserve(d->entries.size());
    for (const auto& [k, v] : d->entries)
      if (k->is(Kind::Str)) map_.emplace(std::string_view(k->str), v);  // keeps the first
  }
  const Value* get(std::string_view key) const {
    auto it = map_.find(key);
    return it == map_.end() ? nullptr : it->second;
  }

 private:
  std::unordered_map<std::string_view, const Value*> map_;
};

// FNV-1a's constants (formats/core/hash.h), mixing whole 64-bit words rather than bytes.
uint64_t box_hash(const Box& b) {
  uint64_t h = kFnvOffset;
  for (const auto* v : {&b.offsets, &b.sizes})
    for (uint64_t x : *v) h = (h ^ x) * kFnvPrime;
  return h;
}

}  // namespace

Metadata parse_metadata(const ByteSource& src, bool compact) {
  Records recs;
  pickle::Document doc;
  try {
    pickle::Limits limits;
    if (compact) limits.compactor = &recs;
    doc = pickle::unpickle(src, 0, limits);
  } catch (const pickle::CompactionConflict&) {
    // A later object refers back into a part of a chunk or storage entry (a torch.Size shared
    // by two objects; torch's writers do not do this): read the file again as plain Values.
    recs.clear();
    doc = pickle::unpickle(src, 0);
  }
  const Value* root = doc.root;
  std::string cls = class_name(root);
  if (!ends_with(cls, "Metadata") || !fields(root))
    bad("not a distributed checkpoint Metadata object (found " +
        (cls.empty() ? std::string("a ") + (root ? "non-object value" : "nothing") : root->qualified_name()) + ")");
  const Value* sdm = field(root, "state_dict_metadata");
  if (!sdm || !sdm->is(Kind::Dict)) bad("Metadata has no state_dict_metadata dict");
  const Value* sd = field(root, "storage_data");
  if (sd && sd->is(Kind::None)) sd = nullptr;
  if (sd && !sd->is(Kind::Dict)) bad("Metadata.storage_data is not a dict");
  const Value* pd = field(root, "planner_data");
  if (pd && !pd->is(Kind::Dict)) pd = nullptr;  // None or a planner's own object: keys stay flat
  const Value* mcore = field(root, "mcore_data");

  Metadata md;
  md.compacted = recs.chunks.size() + recs.index.size() + recs.infos.size();
  if (const Value* v = field(root, "version"); v && v->is(Kind::Str)) md.version = v->str;

  StorageIndex storage(recs.pool);
  if (sd) {
    for (const auto& [k, v] : sd->entries) {
      StorageIndex::Item item;
      item.info = v;
      std::string_view name;
      if (Records::kind_of(k) == Records::kIndex) {
        const Records::IndexRec& r = recs.index[Records::index_of(k)];
        name = recs.names[r.fqn];
        item.at = r.at;
        item.n = r.n;
        item.has_offset = r.has_offset;
      } else {
        const Value* fqn = field(k, "fqn");
        if (!fqn || !fqn->is(Kind::Str)) bad("a storage_data key is not a MetadataIndex with an fqn");
        name = fqn->str;
        const Value* off = field(k, "offset");
        if (off && !off->is(Kind::None)) {
          std::vector<uint64_t> o = int_tuple(off, [&] { return "MetadataIndex('" + fqn->str + "').offset"; });
          item.at = recs.pool.size();
          item.n = static_cast<uint32_t>(o.size());
          item.has_offset = true;
          recs.pool.insert(recs.pool.end(), o.begin(), o.end());
        }
      }
      storage.by_fqn[name].items.push_back(item);
    }
  }

  std::unordered_set<std::string_view> seen;
  seen.reserve(sdm->entries.size());
  const DictIndex planner(pd);
  const DictIndex mcore_index(mcore);
  md.entries.reserve(sdm->entries.size());
  for (const auto& [k, v] : sdm->entries) {
    if (!k->is(Kind::Str)) bad("a state_dict_metadata key is not a str");
    Entry e;
    e.fqn = k->str;
    if (!seen.insert(std::string_view(k->str)).second) bad("key '" + e.fqn + "' appears twice");
    const std::string what = "'" + e.fqn + "'";
    std::string kind = class_name(v);
    if (kind == "BytesStorageMetadata") {
      const Value* info = storage.find(e.fqn, nullptr, 0);
      if (!info) bad(what + ": bytes entry has no storage_data entry");
      e.storage = storage_info(info, recs, [&] { return what; });
    } else if (kind == "TensorStorageMetadata" || (v->is(Kind::Object) && field(v, "chunks"))) {
      e.is_tensor = true;
      e.torch_dtype = dtype_of(field(v, "properties"), e.fqn);
      e.shape = int_tuple(field(v, "size"), [&] { return what + " size"; });
      const Value* chunks = field(v, "chunks");
      if (!chunks || !(chunks->is(Kind::List) || chunks->is(Kind::Tuple))) bad(what + " has no chunks list");
      // Replica detection: open addressing over indices into e.chunks (4 bytes a slot, no node
      // per chunk), at most half full.
      size_t cap = 16;
      while (cap < 2 * chunks->items.size()) cap *= 2;
      std::vector<uint32_t> slots(cap, UINT32_MAX);
      e.chunks.reserve(chunks->items.size());
      for (size_t i = 0; i < chunks->items.size(); ++i) {
        const Value* c = chunks->items[i];
        auto cw = [&] { return what + " chunk " + std::to_string(i); };
        Chunk ch;
        if (Records::kind_of(c) == Records::kChunk) {
          const Records::ChunkRec& r = recs.chunks[Records::index_of(c)];
          const auto at = recs.pool.begin() + static_cast<ptrdiff_t>(r.at);
          ch.box.offsets.assign(at, at + r.n);
          ch.box.sizes.assign(at + r.n, at + 2 * r.n);
        } else {
          ch.box.offsets = int_tuple(field(c, "offsets"), [&] { return cw() + " offsets"; });
          ch.box.sizes = int_tuple(field(c, "sizes"), [&] { return cw() + " sizes"; });
        }
        // Replicas written more than once share one storage entry; keep the first.
        // splitmix64's finalizer: the multiply-only hash's low bits see only the inputs' low bits
        // (offsets are often multiples of a power of two).
        uint64_t h = box_hash(ch.box);
        h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9ULL;
        h = (h ^ (h >> 27)) * 0x94d049bb133111ebULL;
        size_t slot = static_cast<size_t>(h ^ (h >> 31)) & (cap - 1);
        bool replica = false;
        for (; slots[slot] != UINT32_MAX; slot = (slot + 1) & (cap - 1)) {
          const Box& other = e.chunks[slots[slot]].box;
          if (other.offsets == ch.box.offsets && other.sizes == ch.box.sizes) {
            replica = true;
            break;
          }
        }
        if (replica) continue;
        const Value* info = storage.find(e.fqn, &ch.box.offsets, i);
        if (!info) {
          bool empty = std::any_of(ch.box.sizes.begin(), ch.box.sizes.end(), [](uint64_t s) { return s == 0; });
          if (empty) continue;  // zero-size shards hold no bytes; some writers skip their items
          bad(what + ": chunk " + std::to_string(i) + " at offsets " + [&] {
            std::string s = "[";
            for (size_t d = 0; d < ch.box.offsets.size(); ++d) s += (d ? ", " : "") + std::to_string(ch.box.offsets[d]);
            return s + "]";
          }() + " has no storage_data entry");
        }
        ch.storage = storage_info(info, recs, cw);
        if (e.chunks.size() >= UINT32_MAX) bad(what + " has more than 4294967294 chunks");
        slots[slot] = static_cast<uint32_t>(e.chunks.size());
        e.chunks.push_back(std::move(ch));
      }
      if (mcore && mcore->is(Kind::Dict))
        if (const Value* m = mcore_index.get(e.fqn))
          if (const Value* o = m->get("nd_reformulated_orig_global_shape")) e.mcore_orig_shape = pickle::to_json(*o);
    } else {
      bad(what + ": unknown storage metadata " + (v->is(Kind::Object) ? v->qualified_name() : "value"));
    }
    if (pd) {
      if (const Value* p = planner.get(e.fqn); p && (p->is(Kind::Tuple) || p->is(Kind::List)) && !p->items.empty()) {
        std::vector<PathElem> path;
        bool ok = true;
        for (const Value* x : p->items) {
          PathElem pe;
          if (x->is(Kind::Str)) pe.key = x->str;
          else if (x->is(Kind::Int)) pe.is_index = true, pe.index = x->i;
          else ok = false;
          path.push_back(std::move(pe));
        }
        if (ok) e.path = std::move(path);
      }
    }
    md.entries.push_back(std::move(e));
  }
  return md;
}

}  // namespace nemofs::dcp
