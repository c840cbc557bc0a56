#include "formats/torch/torch.h"

#include <algorithm>
#include <cstring>
#include <unordered_map>
#include <unordered_set>

#include "formats/core/checked.h"
#include "formats/core/errors.h"
#include "formats/zip/zip.h"

namespace nemofs::torch {

using pickle::Kind;
using pickle::Tag;
using pickle::Value;

namespace {

// ---------------------------------------------------------------------------------------------
// Strided gather: each read computes the storage index of every element it overlaps, reads the
// touched storage bytes in a few coalesced runs, and scatters them into place.

class StridedSource final : public ByteSource {
 public:
  StridedSource(SourcePtr storage, uint64_t elem, std::vector<uint64_t> shape, std::vector<uint64_t> stride,
                uint64_t offset, uint32_t swap_unit, std::string what)
      : storage_(std::move(storage)), elem_(elem), shape_(std::move(shape)), stride_(std::move(stride)),
        offset_(offset), swap_(swap_unit), what_(std::move(what)) {
    numel_ = 1;
    for (uint64_t d : shape_) numel_ *= d;  // checked by the caller
    size_ = numel_ * elem_;
  }

  uint64_t size() const override { return size_; }
  std::string describe() const override { return what_; }
  void verify() const override { storage_->verify(); }

  size_t read_at(uint64_t off, void* buf, size_t len) const override {
    if (off >= size_ || len == 0) return 0;
    size_t n = static_cast<size_t>(std::min<uint64_t>(len, size_ - off));
    uint64_t e_first = off / elem_;
    uint64_t e_end = (off + n + elem_ - 1) / elem_;
    auto* out = static_cast<unsigned char*>(buf);
    std::vector<unsigned char> tmp;
    for (uint64_t a = e_first; a < e_end; a += kChunk) {
      uint64_t b = std::min<uint64_t>(e_end, a + kChunk);
      gather(a, b, tmp);
      // Copy the part of elements [a, b) that overlaps [off, off + n).
      uint64_t lo = std::max<uint64_t>(off, a * elem_), hi = std::min<uint64_t>(off + n, b * elem_);
      std::memcpy(out + (lo - off), tmp.data() + (lo - a * elem_), static_cast<size_t>(hi - lo));
    }
    return n;
  }

 private:
  static constexpr uint64_t kChunk = 1u << 16;     // elements per gather pass
  static constexpr uint64_t kGapBytes = 4096;      // read through holes up to this size
  static constexpr uint64_t kMaxRunBytes = 1u << 20;

  void gather(uint64_t a, uint64_t b, std::vector<unsigned char>& tmp) const {
    size_t count = static_cast<size_t>(b - a);
    tmp.resize(count * elem_);
    std::vector<std::pair<uint64_t, uint32_t>> idx(count);
    // Multi-index of element a, then an odometer walk.
    size_t nd = shape_.size();
    std::vector<uint64_t> pos(nd, 0);
    uint64_t rem = a, sidx = offset_;
    for (size_t k = nd; k-- > 0;) {
      pos[k] = rem % shape_[k];
      rem /= shape_[k];
      sidx += pos[k] * stride_[k];
    }
    bool sorted = true;
    for (size_t i = 0; i < count; ++i) {
      idx[i] = {sidx, static_cast<uint32_t>(i)};
      if (i > 0 && sidx < idx[i - 1].first) sorted = false;
      for (size_t k = nd; k-- > 0;) {
        if (++pos[k] < shape_[k]) {
          sidx += stride_[k];
          break;
        }
        sidx -= (shape_[k] - 1) * stride_[k];
        pos[k] = 0;
      }
    }
    if (!sorted) std::sort(idx.begin(), idx.end());
    std::vector<unsigned char> run;
    for (size_t i = 0; i < count;) {
      uint64_t first = idx[i].first, last = first;
      size_t j = i + 1;
      while (j < count && (idx[j].first - last) * elem_ <= kGapBytes && (idx[j].first - first + 1) * elem_ <= kMaxRunBytes) {
        last = idx[j].first;
        ++j;
      }
      size_t bytes = static_cast<size_t>((last - first + 1) * elem_);
      run.resize(bytes);
      size_t got = storage_->read_at(first * elem_, run.data(), bytes);
      if (got != bytes) throw SysError(EIO, what_ + ": storage bytes are truncated");
      for (size_t k = i; k < j; ++k) {
        unsigned char* dst = tmp.data() + static_cast<size_t>(idx[k].second) * elem_;
        std::memcpy(dst, run.data() + (idx[k].first - first) * elem_, static_cast<size_t>(elem_));
        if (swap_ > 1)
          for (uint64_t g = 0; g + swap_ <= elem_; g += swap_) std::reverse(dst + g, dst + g + swap_);
      }
      i = j;
    }
  }

  SourcePtr storage_;
  uint64_t elem_;
  std::vector<uint64_t> shape_, stride_;
  uint64_t offset_;
  uint32_t swap_;
  std::string what_;
  uint64_t numel_ = 0, size_ = 0;
};

// Element size of a storage's dtype, including the quantized ones nemofs does not show.
std::optional<uint64_t> storage_elem_size(const std::string& torch_dtype) {
  if (torch_dtype.empty()) return 1;  // UntypedStorage: numel counts bytes
  if (auto d = dtype_from_torch(torch_dtype); d && d->bits % 8 == 0) return d->bits / 8;
  if (torch_dtype == "qint8" || torch_dtype == "quint8" || torch_dtype == "quint4x2" || torch_dtype == "quint2x4") return 1;
  if (torch_dtype == "qint32") return 4;
  return std::nullopt;
}

bool as_uint(const Value* v, uint64_t& out) {
  if (!v || !v->is(Kind::Int) || v->i < 0) return false;
  out = static_cast<uint64_t>(v->i);
  return true;
}

std::vector<uint64_t> uint_tuple(const Value* v, const char* what) {
  if (!v || !(v->is(Kind::Tuple) || v->is(Kind::List)))
    throw FormatError("torch", std::string("tensor ") + what + " is not a tuple");
  std::vector<uint64_t> out;
  for (const Value* x : v->items) {
    uint64_t u;
    if (!as_uint(x, u)) throw FormatError("torch", std::string("tensor ") + what + " holds a value that is not a non-negative int");
    out.push_back(u);
  }
  return out;
}

bool is_tensor_tag(Tag t) {
  return t == Tag::RebuildTensor || t == Tag::RebuildTensorV2 || t == Tag::RebuildTensorV3 || t == Tag::RebuildParameter ||
         t == Tag::RebuildParameterWithState || t == Tag::RebuildFromTypeV2 || t == Tag::RebuildOtherTensor;
}

// The pieces of a ('storage', type, key, location, numel[, view]) persistent id.
struct Pid {
  std::string key;
  std::string dtype;  // "" = UntypedStorage
  uint64_t numel = 0;
  const Value* view = nullptr;  // legacy (view_key, offset, size)
};

Pid parse_pid(const Value& pid_value, const char* fmt) {
  const Value* p = pid_value.is(Kind::PersistentId) ? pid_value.cls : &pid_value;
  if (!p || !p->is(Kind::Tuple) || p->items.size() < 5 || !p->items[0]->is(Kind::Str) || p->items[0]->str != "storage")
    throw FormatError(fmt, "tensor storage is not a ('storage', type, key, location, numel) persistent id");
  const Value* type = p->items[1];
  Pid out;
  if (type->is(Kind::Global) && type->tag == Tag::TypedStorage && !type->dtype().empty()) out.dtype = type->dtype();
  else if (!(type->is(Kind::Global) && type->tag == Tag::UntypedStorage))
    throw FormatError(fmt, "storage type '" + type->qualified_name() + "' is not a torch storage class");
  if (p->items[2]->is(Kind::Str)) out.key = p->items[2]->str;
  else if (p->items[2]->is(Kind::Int)) out.key = std::to_string(p->items[2]->i);
  else throw FormatError(fmt, "storage key is not a str");
  if (!as_uint(p->items[4], out.numel)) throw FormatError(fmt, "storage '" + out.key + "' has no valid element count");
  if (p->items.size() >= 6 && p->items[5]->is(Kind::Tuple)) out.view = p->items[5];
  return out;
}

std::string body(const nlohmann::ordered_json& j) {
  return j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

}  // namespace

SourcePtr strided_view(SourcePtr storage, uint64_t elem_size, std::vector<uint64_t> shape, std::vector<uint64_t> stride,
                       uint64_t storage_offset, uint32_t swap_unit, std::string what) {
  uint64_t numel = 1;
  for (uint64_t d : shape) numel *= d;
  bool contiguous = true;
  uint64_t expect = 1;
  for (size_t k = shape.size(); k-- > 0;) {
    if (shape[k] != 1 && stride[k] != expect) contiguous = false;
    expect *= shape[k];
  }
  if (numel == 0) return std::make_shared<MemorySource>(std::string(), what);
  if (contiguous && swap_unit <= 1) return make_sub(std::move(storage), storage_offset * elem_size, numel * elem_size, what);
  return std::make_shared<StridedSource>(std::move(storage), elem_size, std::move(shape), std::move(stride), storage_offset,
                                         swap_unit, std::move(what));
}

// ---------------------------------------------------------------------------------------------

std::optional<TensorInfo> TorchFile::tensor(const Value& v) const {
  if (!v.is(Kind::Object) || !is_tensor_tag(v.tag)) return std::nullopt;
  return tensor_from(v.tag, v.items, 0);
}

std::optional<TensorInfo> TorchFile::tensor_from(Tag tag, const pickle::Seq<Value*>& args, int depth) const {
  const char* fmt = source.c_str();
  if (depth > 8) throw FormatError(fmt, "tensor rebuild calls nested too deeply");
  switch (tag) {
    case Tag::RebuildParameter:
    case Tag::RebuildParameterWithState:
      if (args.empty() || !args[0]->is(Kind::Object) || !is_tensor_tag(args[0]->tag)) return std::nullopt;
      return tensor_from(args[0]->tag, args[0]->items, depth + 1);
    case Tag::RebuildFromTypeV2:
      if (args.size() < 3 || !args[0]->is(Kind::Global) || !is_tensor_tag(args[0]->tag) ||
          !(args[2]->is(Kind::Tuple) || args[2]->is(Kind::List)))
        return std::nullopt;
      return tensor_from(args[0]->tag, args[2]->items, depth + 1);
    case Tag::RebuildTensor:
    case Tag::RebuildTensorV2:
    case Tag::RebuildTensorV3:
      break;
    default:
      return std::nullopt;
  }
  size_t need = tag == Tag::RebuildTensor ? 4 : tag == Tag::RebuildTensorV2 ? 6 : 7;
  if (args.size() < need) throw FormatError(fmt, "tensor rebuild call has " + std::to_string(args.size()) + " arguments, expected at least " + std::to_string(need));
  if (!args[0]->is(Kind::PersistentId)) throw FormatError(fmt, "tensor storage is not a persistent id");
  Pid pid = parse_pid(*args[0], fmt);
  TensorInfo t;
  if (!as_uint(args[1], t.storage_offset)) throw FormatError(fmt, "tensor storage offset is not a non-negative int");
  t.shape = uint_tuple(args[2], "size");
  t.stride = uint_tuple(args[3], "stride");
  if (t.shape.size() != t.stride.size()) throw FormatError(fmt, "tensor size and stride have different lengths");
  const Value* meta = nullptr;
  if (tag == Tag::RebuildTensorV3) {
    if (!args[6]->is(Kind::Global) || args[6]->tag != Tag::TorchDtype)
      throw FormatError(fmt, "_rebuild_tensor_v3 dtype is not a torch dtype");
    t.torch_dtype = args[6]->dtype();
    if (args.size() > 7) meta = args[7];
  } else {
    t.torch_dtype = pid.dtype;
    if (tag == Tag::RebuildTensorV2 && args.size() > 6) meta = args[6];
  }
  if (t.torch_dtype.empty()) throw FormatError(fmt, "tensor over an UntypedStorage has no dtype");
  if (meta && meta->is(Kind::Dict)) {
    for (const auto& [k, x] : meta->entries) {
      if (!k->is(Kind::Str) || !x->is(Kind::Bool)) continue;
      if (k->str == "neg") t.neg = x->b;
      if (k->str == "conj") t.conj = x->b;
    }
  }
  auto dt = dtype_from_torch(t.torch_dtype);
  if (!dt || dt->bits % 8 != 0) return std::nullopt;  // quantized / sub-byte: not a raw-bytes file
  t.dtype = *dt;
  t.storage = resolve(*args[0], t.torch_dtype);
  uint64_t elem = dt->bits / 8;
  uint64_t numel = 1;
  for (uint64_t d : t.shape) numel = checked_mul(numel, d, fmt, std::nullopt, "tensor element count");
  (void)tensor_nbytes(t.dtype, t.shape, fmt, std::nullopt);
  if (numel > 0) {
    uint64_t last = t.storage_offset;
    for (size_t k = 0; k < t.shape.size(); ++k)
      last = checked_add(last, checked_mul(t.shape[k] - 1, t.stride[k], fmt, std::nullopt, "tensor extent"), fmt,
                         std::nullopt, "tensor extent");
    uint64_t have = t.storage->bytes->size() / elem;
    if (last >= have)
      throw FormatError(fmt, "tensor reaches element " + std::to_string(last) + " of storage '" + t.storage->name +
                                 "', which holds " + std::to_string(have) + " elements of " + t.torch_dtype);
  }
  return t;
}

SourcePtr TorchFile::tensor_bytes(const TensorInfo& t) const {
  uint64_t elem = t.dtype.bits / 8;
  uint32_t swap = 1;
  if (big_endian && elem > 1) swap = static_cast<uint32_t>(t.dtype.name[0] == 'C' ? elem / 2 : elem);
  return strided_view(t.storage->bytes, elem, t.shape, t.stride, t.storage_offset, swap, t.storage->name);
}

TensorMeta TorchFile::tensor_meta(const TensorInfo& t) const {
  TensorMeta m;
  m.dtype = t.dtype.name;
  m.shape = t.shape;
  m.nbytes = tensor_nbytes(t.dtype, t.shape, source.c_str(), std::nullopt);
  m.extra["source"] = source;
  m.extra["storage"] = t.storage->name;
  m.extra["storage_offset"] = t.storage_offset;
  m.extra["stride"] = t.stride;
  bool contiguous = true;
  uint64_t expect = 1;
  for (size_t k = t.shape.size(); k-- > 0;) {
    if (t.shape[k] != 1 && t.stride[k] != expect) contiguous = false;
    expect *= t.shape[k];
  }
  bool swapped = big_endian && t.dtype.bits > 8;
  m.extra["contiguous"] = contiguous && !swapped;
  m.extra["torch_dtype"] = t.torch_dtype;
  if (swapped) m.extra["stored_byteorder"] = "big";
  if (t.neg) m.extra["neg"] = true;
  if (t.conj) m.extra["conj"] = true;
  return m;
}

// ---------------------------------------------------------------------------------------------

std::shared_ptr<TorchFile> load_torch_zip(const SourcePtr& src) {
  constexpr const char* fmt = "torch-zip";
  auto index = std::make_shared<ZipIndex>(index_zip(*src));
  if (index->entries.empty()) throw FormatError(fmt, "empty zip: not a torch.save archive");
  const std::string& first = index->entries.front().name;
  size_t slash = first.find('/');
  if (slash == std::string::npos || slash == 0)
    throw FormatError(fmt, "zip entry '" + first + "' has no root folder: not a torch.save archive");
  std::string root = first.substr(0, slash + 1);
  const ZipEntry* pkl = index->find(root + "data.pkl");
  if (!pkl) throw FormatError(fmt, "no " + root + "data.pkl in the zip: not a torch.save archive");

  auto f = std::make_shared<TorchFile>();
  f->source = fmt;
  if (const ZipEntry* bo = index->find(root + "byteorder")) {
    if (bo->usize > 16) throw FormatError(fmt, "byteorder record is " + std::to_string(bo->usize) + " bytes long");
    auto s = open_zip_entry(src, *bo);
    std::string v = read_exact(*s, 0, static_cast<size_t>(s->size()), fmt);
    if (v == "big") f->big_endian = true;
    else if (v != "little") throw FormatError(fmt, "byteorder record says '" + v + "' (expected little or big)");
  }
  auto pkl_src = open_zip_entry(src, *pkl);
  try {
    f->doc = pickle::unpickle(*pkl_src, 0);
  } catch (const FormatError& e) {
    throw FormatError("pickle", e.offset(), root + "data.pkl: " + e.detail());
  }

  auto cache = std::make_shared<std::unordered_map<std::string, std::unique_ptr<Storage>>>();
  f->resolve = [src, index, root, cache](const Value& pid_value, const std::string&) -> const Storage* {
    Pid pid = parse_pid(pid_value, "torch-zip");
    if (auto it = cache->find(pid.key); it != cache->end()) return it->second.get();
    std::string rec = "data/" + pid.key;
    const ZipEntry* e = index->find(root + rec);
    if (!e) throw FormatError("torch-zip", "storage record " + root + rec + " is missing");
    auto elem = storage_elem_size(pid.dtype);
    if (!elem) throw FormatError("torch-zip", "storage " + rec + " has an unknown dtype '" + pid.dtype + "'");
    uint64_t nbytes = checked_mul(pid.numel, *elem, "torch-zip", e->local_header, "storage size");
    if (nbytes > e->usize)
      throw FormatError("torch-zip", e->local_header, "storage " + rec + " should hold " + std::to_string(nbytes) +
                                                          " bytes but its record has " + std::to_string(e->usize));
    auto s = std::make_unique<Storage>();
    s->name = rec;
    s->dtype = pid.dtype;
    auto bytes = open_zip_entry(src, *e);
    s->bytes = nbytes == e->usize ? bytes : make_sub(bytes, 0, nbytes, rec);
    return cache->emplace(pid.key, std::move(s)).first->second.get();
  };
  return f;
}

std::shared_ptr<TorchFile> load_torch_legacy(const SourcePtr& src) {
  constexpr const char* fmt = "torch-legacy";
  auto next = [&](uint64_t at, const char* what) {
    try {
      return pickle::unpickle(*src, at);
    } catch (const FormatError& e) {
      throw FormatError("pickle", e.offset(), std::string("legacy torch file, ") + what + ": " + e.detail());
    }
  };
  auto magic = next(0, "magic number");
  if (!(magic.root->is(Kind::BigInt) && magic.root->str == "119547037146038801333356"))
    throw FormatError(fmt, 0, "the first pickle is not torch's magic number: not a legacy torch.save file");
  auto version = next(magic.end, "protocol version");
  if (!version.root->is(Kind::Int) || version.root->i != 1001)
    throw FormatError(fmt, magic.end, "unsupported legacy protocol version (expected 1001)");
  auto sys_info = next(version.end, "sys_info");
  auto f = std::make_shared<TorchFile>();
  f->source = fmt;
  if (const Value* le = sys_info.root->get("little_endian"); le && le->is(Kind::Bool)) f->big_endian = !le->b;
  f->doc = next(sys_info.end, "object");
  auto keys = next(f->doc.end, "storage keys");
  if (!keys.root->is(Kind::List)) throw FormatError(fmt, f->doc.end, "storage key list is not a list");

  // Element size of every storage key, from the persistent ids of the object pickle.
  std::unordered_map<std::string, std::string> key_dtype;
  f->doc.arena->for_each([&](const Value& v) {
    if (!v.is(Kind::PersistentId) || !v.cls || !v.cls->is(Kind::Tuple) || v.cls->items.empty()) return;
    if (!v.cls->items[0]->is(Kind::Str) || v.cls->items[0]->str != "storage") return;
    Pid pid = parse_pid(v, fmt);
    key_dtype.emplace(pid.key, pid.dtype);
  });

  auto storages = std::make_shared<std::unordered_map<std::string, std::unique_ptr<Storage>>>();
  uint64_t at = keys.end;
  for (const Value* k : keys.root->items) {
    if (!k->is(Kind::Str)) throw FormatError(fmt, at, "storage key list holds a non-str key");
    auto it = key_dtype.find(k->str);
    if (it == key_dtype.end())
      throw FormatError(fmt, at, "storage '" + k->str + "' is listed but no tensor refers to it (its element size is unknown)");
    auto elem = storage_elem_size(it->second);
    if (!elem) throw FormatError(fmt, at, "storage '" + k->str + "' has an unknown dtype '" + it->second + "'");
    std::string cnt = read_exact(*src, at, 8, fmt);
    uint64_t numel = 0;
    for (int b = 0; b < 8; ++b) {
      int i = f->big_endian ? b : 7 - b;
      numel = (numel << 8) | static_cast<unsigned char>(cnt[static_cast<size_t>(i)]);
    }
    uint64_t nbytes = checked_mul(numel, *elem, fmt, at, "storage size");
    uint64_t data = at + 8;
    if (nbytes > src->size() - std::min(src->size(), data))
      throw FormatError(fmt, at, "storage '" + k->str + "' of " + std::to_string(nbytes) + " bytes runs past the end of the file");
    auto s = std::make_unique<Storage>();
    s->name = k->str;
    s->dtype = it->second;
    s->bytes = make_sub(src, data, nbytes, "storage " + k->str);
    (*storages)[k->str] = std::move(s);
    at = data + nbytes;
  }

  auto views = std::make_shared<std::unordered_map<std::string, std::unique_ptr<Storage>>>();
  f->resolve = [storages, views](const Value& pid_value, const std::string&) -> const Storage* {
    Pid pid = parse_pid(pid_value, "torch-legacy");
    auto it = storages->find(pid.key);
    if (it == storages->end()) throw FormatError("torch-legacy", "storage '" + pid.key + "' is not in the file");
    if (!pid.view) return it->second.get();
    // (view_key, offset, size) in elements of the storage's dtype.
    const auto& v = pid.view->items;
    uint64_t off = 0, size = 0;
    if (v.size() != 3 || !v[0]->is(Kind::Str) || !as_uint(v[1], off) || !as_uint(v[2], size))
      throw FormatError("torch-legacy", "storage view metadata is not (key, offset, size)");
    if (auto vit = views->find(v[0]->str); vit != views->end()) return vit->second.get();
    uint64_t elem = storage_elem_size(it->second->dtype).value_or(1);
    uint64_t b0 = checked_mul(off, elem, "torch-legacy", std::nullopt, "storage view"),
             bn = checked_mul(size, elem, "torch-legacy", std::nullopt, "storage view");
    if (checked_add(b0, bn, "torch-legacy", std::nullopt, "storage view") > it->second->bytes->size())
      throw FormatError("torch-legacy", "storage view '" + v[0]->str + "' lies outside storage '" + pid.key + "'");
    auto s = std::make_unique<Storage>();
    s->name = pid.key + "[" + std::to_string(off) + ":" + std::to_string(off + size) + "]";
    s->dtype = it->second->dtype;
    s->bytes = make_sub(it->second->bytes, b0, bn, s->name);
    return views->emplace(v[0]->str, std::move(s)).first->second.get();
  };
  return f;
}

// ---------------------------------------------------------------------------------------------

namespace {

class Builder {
 public:
  Builder(Tree& tree, TorchFile& f) : tree_(tree), f_(f) {
    entries_left_ = std::max<uint64_t>(1u << 16, 8 * f.doc.arena->size());
    budget_.nodes_left = std::max<uint64_t>(1u << 22, 16 * f.doc.arena->size());
    hook_ = [this](const Value& v) -> std::optional<nlohmann::ordered_json> {
      const TensorInfo* t = tensor(v);
      if (!t) return std::nullopt;
      return nlohmann::ordered_json{{"__tensor__",
                                     {{"dtype", t->dtype.name}, {"shape", t->shape}, {"storage", t->storage->name}}}};
    };
  }

  void root(NodeId dir) {
    const Value& r = *f_.doc.root;
    if (module(r)) add_module(dir, r, "", 0);
    else if (stateful(r) && has_tensor(r, 0)) add_object(dir, r, "", 0);
    else if (container(r) && (!r.is(Kind::Object) || has_tensor(r, 0))) expand(dir, r, "", 0);
    else add_entry(dir, "", r.is(Kind::Object) && tensor(r) ? "tensor" : "value", r, 0);
  }

 private:
  // Dicts, lists, tuples, and instances of their subclasses (an Object filled by SETITEMS or
  // APPENDS, e.g. an AttributeDict or a custom OrderedDict): their items are what a user indexes.
  static bool container(const Value& v) {
    if (v.is(Kind::Dict) || v.is(Kind::List) || v.is(Kind::Tuple)) return true;
    return v.is(Kind::Object) && !is_tensor_tag(v.tag) && (!v.entries.empty() || !v.listitems().empty());
  }
  static bool dict_like(const Value& v) { return v.is(Kind::Dict) || (v.is(Kind::Object) && !v.entries.empty()); }
  static const pickle::Seq<Value*>& seq_items(const Value& v) { return v.is(Kind::Object) ? v.listitems() : v.items; }

  // A torch.nn.Module: an inert object whose BUILD state (its __dict__) has _parameters,
  // _buffers and _modules dicts (OrderedDicts unpickle as dicts).
  static bool module(const Value& v) {
    if (!v.is(Kind::Object) || is_tensor_tag(v.tag) || !v.state || !v.state->is(Kind::Dict)) return false;
    for (const char* k : {"_parameters", "_buffers", "_modules"}) {
      const Value* x = v.state->get(k);
      if (!x || !x->is(Kind::Dict)) return false;
    }
    return true;
  }
  // Any other inert object with a BUILD state (not a tensor, a dict/list subclass, an OmegaConf config).
  static bool stateful(const Value& v) {
    return v.is(Kind::Object) && !is_tensor_tag(v.tag) && v.state && !container(v) && !module(v) &&
           pickle::omegaconf_kind(v) == pickle::OmegaConfKind::None;
  }

  // module.state_dict(): parameters, then persistent buffers, then each child module's with its
  // name and a dot prepended (None entries skipped), as Module._save_to_state_dict does.
  void state_dict(const Value& m, const std::string& prefix, uint32_t depth,
                  std::vector<std::pair<std::string, const Value*>>& out) {
    if (depth > 1000) throw FormatError(f_.source, "modules nested deeper than 1000 levels");
    if (!on_path_.insert(&m).second) return;
    const Value* st = m.state;
    for (const auto& [k, x] : st->get("_parameters")->entries)
      if (k->is(Kind::Str) && !x->is(Kind::None)) out.emplace_back(prefix + k->str, x);
    const Value* np = st->get("_non_persistent_buffers_set");
    auto persistent = [&](const Value& name) {
      if (!np || !(np->is(Kind::Set) || np->is(Kind::FrozenSet))) return true;
      for (const Value* n : np->items)
        if (n->is(Kind::Str) && n->str == name.str) return false;
      return true;
    };
    for (const auto& [k, x] : st->get("_buffers")->entries)
      if (k->is(Kind::Str) && !x->is(Kind::None) && persistent(*k)) out.emplace_back(prefix + k->str, x);
    for (const auto& [k, x] : st->get("_modules")->entries)
      if (k->is(Kind::Str) && module(*x)) state_dict(*x, prefix + k->str + ".", depth + 1, out);
    on_path_.erase(&m);
  }

  // The module's class and the rest of its state (without _parameters, _buffers, _modules), its
  // children's likewise under "modules".
  // pickle::to_json, and one warning naming `where` when the value was too large to render.
  nlohmann::ordered_json json(const Value& x, const std::string& where) {
    const uint64_t before = budget_.placeholders;
    auto j = pickle::to_json(x, budget_, hook_);
    if (budget_.placeholders != before)
      f_.warnings.push_back(where + ": value too large to render (" + budget_.last_placeholder +
                            "): shown as a {\"__too_large__\": ...} placeholder");
    return j;
  }

  nlohmann::ordered_json module_summary(const Value& m, const std::string& where, uint32_t depth) {
    if (depth > 1000) throw FormatError(f_.source, "modules nested deeper than 1000 levels");
    nlohmann::ordered_json j = nlohmann::ordered_json::object();
    std::string cls = m.qualified_name();
    j["__class__"] = cls.empty() ? nlohmann::ordered_json() : nlohmann::ordered_json(cls);
    auto state = nlohmann::ordered_json::object();
    for (const auto& [k, x] : m.state->entries) {
      if (k->is(Kind::Str) && (k->str == "_parameters" || k->str == "_buffers" || k->str == "_modules")) continue;
      std::string key = pickle::key_text(*k, budget_);
      state[key] = json(*x, where + " state " + key);
    }
    j["state"] = std::move(state);
    auto mods = nlohmann::ordered_json::object();
    on_path_.insert(&m);
    for (const auto& [k, x] : m.state->get("_modules")->entries) {
      std::string name = pickle::key_text(*k, budget_);
      if (x->is(Kind::None)) mods[name] = nullptr;
      else if (module(*x) && !on_path_.count(x)) mods[name] = module_summary(*x, where + " module " + name, depth + 1);
      else mods[name] = json(*x, where + " module " + name);
    }
    on_path_.erase(&m);
    j["modules"] = std::move(mods);
    return j;
  }

  // A module's folder: one tensor file (and sidecar) per state_dict() key, and __module__.json.
  void add_module(NodeId dir, const Value& m, const std::string& path, uint32_t depth) {
    std::vector<std::pair<std::string, const Value*>> keys;
    state_dict(m, "", depth, keys);
    for (const auto& [key, x] : keys) {
      spend();
      const TensorInfo* t = tensor(*x);
      std::string name = escape_key(key);
      if (!t) {
        f_.warnings.push_back(path + name + ": " + x->qualified_name() + " is not shown as a tensor file (unsupported kind or dtype)");
        continue;
      }
      if (taken(dir, name, path) || taken(dir, name + ".json", path)) continue;
      add_tensor(tree_, dir, key, f_.tensor_bytes(*t), f_.tensor_meta(*t));
    }
    if (taken(dir, "__module__.json", path)) return;
    tree_.add_file(dir, "__module__.json",
                   std::make_shared<MemorySource>(body(module_summary(m, path + "__module__.json", depth)), "__module__.json"));
  }

  // Any other object whose state holds a tensor: __object__.json (its class and arguments), and
  // its state's entries (a dict state) or its state as the entry __state__.
  void add_object(NodeId dir, const Value& o, const std::string& path, uint32_t depth) {
    nlohmann::ordered_json j = nlohmann::ordered_json::object();
    std::string cls = o.qualified_name();
    j["__class__"] = cls.empty() ? nlohmann::ordered_json() : nlohmann::ordered_json(cls);
    auto args = nlohmann::ordered_json::array();
    for (const Value* a : o.items) args.push_back(json(*a, path + "__object__.json args"));
    j["args"] = std::move(args);
    if (o.kwargs() && !o.kwargs()->entries.empty()) j["kwargs"] = json(*o.kwargs(), path + "__object__.json kwargs");
    tree_.add_file(dir, "__object__.json", std::make_shared<MemorySource>(body(j), "__object__.json"));
    on_path_.insert(&o);
    if (o.state->is(Kind::Dict)) {
      for (const auto& [k, x] : o.state->entries) add_entry(dir, path, pickle::key_text(*k, budget_), *x, depth + 1);
    } else {
      add_entry(dir, path, "__state__", *o.state, depth + 1);
    }
    on_path_.erase(&o);
  }

  const TensorInfo* tensor(const Value& v) {
    if (!v.is(Kind::Object) || !is_tensor_tag(v.tag)) return nullptr;
    auto it = tensors_.find(&v);
    if (it == tensors_.end()) it = tensors_.emplace(&v, f_.tensor(v)).first;
    return it->second ? &*it->second : nullptr;
  }

  bool has_tensor(const Value& v, uint32_t depth) {
    if (tensor(v)) return true;
    if (module(v)) return true;  // always a folder
    if (stateful(v)) {
      if (auto it = has_.find(&v); it != has_.end()) return it->second;
      if (depth > 1000) throw FormatError(f_.source, "containers nested deeper than 1000 levels");
      if (!on_path_.insert(&v).second) return false;
      bool any = has_tensor(*v.state, depth + 1);
      on_path_.erase(&v);
      has_[&v] = any;
      return any;
    }
    if (!container(v)) return false;
    if (auto it = has_.find(&v); it != has_.end()) return it->second;
    if (depth > 1000) throw FormatError(f_.source, "containers nested deeper than 1000 levels");
    if (!on_path_.insert(&v).second) return false;
    bool any = false;
    if (dict_like(v)) {
      for (const auto& [k, x] : v.entries)
        if ((any = has_tensor(*x, depth + 1))) break;
    } else {
      for (const Value* x : seq_items(v))
        if ((any = has_tensor(*x, depth + 1))) break;
    }
    on_path_.erase(&v);
    has_[&v] = any;
    return any;
  }

  void expand(NodeId dir, const Value& v, const std::string& path, uint32_t depth) {
    if (depth > 1000) throw FormatError(f_.source, "containers nested deeper than 1000 levels");
    on_path_.insert(&v);
    if (dict_like(v)) {
      for (const auto& [k, x] : v.entries) add_entry(dir, path, pickle::key_text(*k, budget_), *x, depth + 1);
    } else {
      const auto& items = seq_items(v);
      for (size_t i = 0; i < items.size(); ++i) add_entry(dir, path, std::to_string(i), *items[i], depth + 1);
    }
    on_path_.erase(&v);
  }

  bool taken(NodeId dir, const std::string& name, const std::string& path) {
    if (!tree_.lookup(dir, name)) return false;
    f_.warnings.push_back(path + name + ": another entry of the same name was shown instead");
    return true;
  }

  void spend() {
    if (entries_left_ == 0)
      throw FormatError(f_.source, "object tree too large (shared references expand to too many entries)");
    --entries_left_;
  }

  void add_entry(NodeId dir, const std::string& path, const std::string& key, const Value& x, uint32_t depth) {
    spend();
    std::string name = escape_key(key);
    if (const TensorInfo* t = tensor(x)) {
      if (taken(dir, name, path) || taken(dir, name + ".json", path)) return;
      add_tensor(tree_, dir, key, f_.tensor_bytes(*t), f_.tensor_meta(*t));
      return;
    }
    if (x.is(Kind::Object) && is_tensor_tag(x.tag))
      f_.warnings.push_back(path + name + ": " + x.qualified_name() + " is not shown as a tensor file (unsupported kind or dtype)");
    if (module(x) && !on_path_.count(&x)) {
      if (taken(dir, name, path)) return;
      add_module(tree_.add_dir(dir, name), x, path + name + "/", depth);
      return;
    }
    if (stateful(x) && !on_path_.count(&x) && has_tensor(x, depth)) {
      if (taken(dir, name, path)) return;
      add_object(tree_.add_dir(dir, name), x, path + name + "/", depth);
      return;
    }
    if (container(x) && !on_path_.count(&x) && has_tensor(x, depth)) {
      if (taken(dir, name, path)) return;
      NodeId sub = tree_.add_dir(dir, name);
      expand(sub, x, path + name + "/", depth);
      return;
    }
    if (taken(dir, name + ".json", path)) return;
    const uint64_t placeholders = budget_.placeholders;
    tree_.add_file(dir, name + ".json", std::make_shared<MemorySource>(body(json(x, path + name + ".json")), name + ".json"));
    // An OmegaConf config (or plain data holding one) also reads as the YAML OmegaConf.to_yaml
    // writes for it, like a .nemo's model_config.yaml (not one too large to render).
    if (budget_.placeholders == placeholders && pickle::holds_omegaconf(x)) {
      std::optional<std::string> yaml;
      try {
        yaml = pickle::to_yaml(x, budget_);
      } catch (const FormatError& e) {
        // Out of render budget: the JSON is there, the YAML is left out (and said so).
        f_.warnings.push_back(path + name + ".yaml: not shown (" + e.detail() + ")");
      }
      if (yaml && !taken(dir, name + ".yaml", path))
        tree_.add_file(dir, name + ".yaml", std::make_shared<MemorySource>(std::move(*yaml), name + ".yaml"));
    }
  }

  Tree& tree_;
  TorchFile& f_;
  uint64_t entries_left_;
  pickle::RenderBudget budget_;
  pickle::RenderHook hook_;
  std::unordered_map<const Value*, std::optional<TensorInfo>> tensors_;
  std::unordered_map<const Value*, bool> has_;
  std::unordered_set<const Value*> on_path_;
};

}  // namespace

void build_torch_tree(Tree& tree, NodeId dir, TorchFile& f) {
  Builder b(tree, f);
  b.root(dir);
}

}  // namespace nemofs::torch
