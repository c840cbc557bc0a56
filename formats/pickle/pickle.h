// A restricted pickle virtual machine: protocols 0-5 decoded into inert data. Nothing from a pickle
// is ever executed.
//
// Byte layout (CPython Lib/pickletools.py; formats.md section 3): a pickle is a sequence of
// opcodes, each one byte followed by its inline argument, ending with STOP ('.'):
//   [0x80 PROTO u8]  [0x95 FRAME u64le]*  opcode arg  opcode arg ...  0x2e STOP
// Inline arguments are: fixed little-endian integers (BININT i32, BININT1 u8, BININT2 u16,
// LONG1 u8 n + n bytes two's complement LE, LONG4 i32 n + n bytes), big-endian f64 (BINFLOAT),
// length-prefixed byte strings (u8 / u32 / u64 lengths), or '\n'-terminated text lines (protocol
// 0: INT, LONG, FLOAT, STRING, UNICODE, GET, PUT, PERSID, GLOBAL "module\nname\n", INST).
// The machine has a stack, a metastack of MARK positions, and a memo (index -> object).
//
// What a pickle becomes (Value, owned by an Arena; Values point at each other with raw pointers so
// shared and cyclic graphs are cheap and destruction is flat):
//   None, Bool, Int (int64), BigInt (decimal text, ints beyond int64), Float, Str (UTF-8),
//   Bytes (bytes, bytearray, protocol-2 _codecs.encode), List, Tuple, Dict (ordered, any keys),
//   Set, FrozenSet, Global (module + qualified name + allowlist Tag), Object (inert instance:
//   class/callable, args, kwargs, state, listitems, dictitems), PersistentId (the pid a torch
//   storage reference carries).
// GLOBAL/STACK_GLOBAL never import anything: the name is looked up in an allowlist (kAllowlist in
// allowlist.cpp) that gives it a symbolic Tag. REDUCE/NEWOBJ on a data tag builds plain data
// (OrderedDict/defaultdict/Counter -> Dict, set/frozenset, bytes/bytearray/_codecs.encode -> Bytes,
// torch.Size -> Tuple, getattr(Global, "X") -> Global "module.Name.X", _get_layout -> Global);
// every other call, allowlisted tensor rebuilds included, becomes an Object whose `cls` is the
// Global, so the torch layer (formats/torch) interprets rebuilds and everything else stays inert.
// Protocol-2 names are remapped first (__builtin__ -> builtins, copy_reg -> copyreg, long -> int,
// torch.tensor -> torch._tensor, ...).
//
// Limits (all refusals are FormatError("pickle", opcode offset, message)): stack and memo sizes,
// memo indices (bounded by the input length), string/bytes lengths (checked against the bytes left
// before any allocation), integer size (LONG of more than 1024 bytes), container nesting depth
// (1000), protocol <= 5. Unsupported by design: EXT1/2/4 (copyreg extension registry) and
// NEXT_BUFFER/READONLY_BUFFER (out-of-band buffers) are refused with their own message.
//
// JSON rendering (to_json), the contract shown in `<key>.json` files (layout.md section 3):
//   None -> null; Bool -> true/false; Int -> number; BigInt -> number when it fits uint64, else a
//   string of decimal digits; Float -> number, non-finite as the strings "NaN", "Infinity",
//   "-Infinity"; Str -> string; Bytes -> {"__bytes__": "<base64>"}; List/Tuple -> array;
//   Dict -> object (insertion order kept; a key that is not a str is written as the compact JSON
//   text of its rendering, so 1 -> "1", True -> "true", None -> "null", (1, 2) -> "[1,2]";
//   a later duplicate key overwrites an earlier one); Set -> {"__set__": [...]};
//   FrozenSet -> {"__frozenset__": [...]}; Global -> {"__global__": "module.QualName"};
//   Object -> {"__class__": "module.QualName", "args": [...], then only when present:
//   "kwargs": {...}, "state": <BUILD state>, "listitems": [...], "dictitems": {...}} (a callable
//   that is not a Global: "__class__": null plus "callable": <its rendering>);
//   PersistentId -> {"__persistent_id__": <pid>}; a value reached again while it is being rendered
//   (a cycle) -> {"__cycle__": "<what it is>"}. OmegaConf configs render as
//   OmegaConf.to_container(cfg, resolve=False) gives them (omegaconf.cpp): DictConfig -> object,
//   ListConfig -> array, a None / missing / interpolation config -> null / "???" / "${...}", a
//   value node -> its value, an enum member held by a node (or an enum key) -> its name.
//   A caller hook may render some values itself
//   (the torch layer renders tensors as {"__tensor__": {...}}).
//   A value too large to render (RenderBudget: more than value_nodes nodes or value_text bytes
//   of text, counted the way it would render, shared references expanded; or more than the
//   nodes left in the budget) -> {"__too_large__": {"class": "<its class or kind>", "nodes": N}},
//   N = the nodes its rendering would have (saturating at 2^64 - 1). The check walks the value
//   before anything is built and stops at the limit, so refusing costs no memory.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <new>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "formats/core/byte_source.h"

namespace nemofs::pickle {

enum class Kind : uint8_t {
  None, Bool, Int, BigInt, Float, Str, Bytes, List, Tuple, Dict, Set, FrozenSet, Global, Object, PersistentId
};

// What the allowlist knows a global to be. Unknown = not allowlisted: it stays an inert name.
enum class Tag : uint8_t {
  Unknown,
  // Plain-data constructors, evaluated by the machine (see the header comment).
  OrderedDict, DefaultDict, Counter, BuiltinDict, BuiltinList, BuiltinTuple, BuiltinSet, BuiltinFrozenSet,
  BuiltinBytes, BuiltinByteArray, CodecsEncode, Getattr, Reconstructor, NewObj, TorchSize, GetLayout,
  // Symbols kept as Globals / Objects for the torch layer.
  TorchDevice, TorchDtype, TypedStorage, UntypedStorage, TorchLayout, TorchQScheme,
  RebuildTensor, RebuildTensorV2, RebuildTensorV3, RebuildParameter, RebuildParameterWithState,
  RebuildFromTypeV2, RebuildOtherTensor,  // qtensor, sparse, nested, meta, wrapper subclass, device
  // An Object a Compactor replaced by a record of its own (Value::i is the record's id).
  Compacted,
};

// Text held by the Arena (valid while the Document lives). A string_view that also converts to
// std::string and concatenates with one, so callers can treat it like the string it stands for.
struct Text : std::string_view {
  constexpr Text() = default;
  constexpr Text(std::string_view v) : std::string_view(v) {}
  operator std::string() const { return std::string(data(), size()); }
  std::string str() const { return std::string(data(), size()); }
  friend std::string operator+(const std::string& a, Text b) { return cat(a, b); }
  friend std::string operator+(const char* a, Text b) { return cat(a, b); }
  friend std::string operator+(Text a, const std::string& b) { return cat(a, b); }
  friend std::string operator+(Text a, const char* b) { return cat(a, b); }
  friend std::string operator+(Text a, char b) { return cat(a, std::string_view(&b, 1)); }

 private:
  static std::string cat(std::string_view a, std::string_view b) {
    std::string s;
    s.reserve(a.size() + b.size());
    s.append(a);
    s.append(b);
    return s;
  }
};

// A read-only array of T held by the Arena (containers of a Value; grown only by the machine).
template <typename T>
class Seq {
 public:
  using value_type = T;
  const T* begin() const { return data_; }
  const T* end() const { return data_ + size_; }
  const T* data() const { return data_; }
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  const T& operator[](size_t i) const { return data_[i]; }
  const T& front() const { return data_[0]; }
  const T& back() const { return data_[size_ - 1]; }

 private:
  friend class Arena;
  T* data_ = nullptr;
  uint32_t size_ = 0;
  uint32_t cap_ = 0;
};

struct Value;
using Item = std::pair<Value*, Value*>;

// Fields only Globals and some Objects have (kept out of Value so that every Value stays small).
struct ValueExtra {
  Text name;            // Global: qualified name
  Text dtype;           // TypedStorage / TorchDtype Global: torch dtype name ("float32", ...)
  Seq<Value*> listitems;  // Object: APPEND(S) / ADDITEMS
  Value* kwargs = nullptr;  // Object made by NEWOBJ_EX
};

// Trivially destructible: the Arena frees every Value of a Document at once.
struct Value {
  Kind kind = Kind::None;
  Tag tag = Tag::Unknown;  // Global: allowlist tag; Object: tag of its class when it is a Global
  bool b = false;          // Bool
  uint32_t depth = 1;      // nesting depth at construction time (limit check)
  union {
    int64_t i = 0;         // Int
    double f;              // Float
  };
  Text str;                // Str (UTF-8), Bytes (raw), BigInt (decimal, leading '-'), Global (module)
  Seq<Value*> items;       // List, Tuple, Set, FrozenSet; Object: args
  Seq<Item> entries;       // Dict; Object: dictitems (SETITEM(S))
  Value* cls = nullptr;    // Object: the class or callable; PersistentId: the pid
  Value* state = nullptr;  // BUILD state (Object, or a Dict such as an OrderedDict with _metadata)
  ValueExtra* extra = nullptr;

  Text name() const { return extra ? extra->name : Text(); }
  Text dtype() const { return extra ? extra->dtype : Text(); }
  const Seq<Value*>& listitems() const { return extra ? extra->listitems : kNoItems; }
  const Value* kwargs() const { return extra ? extra->kwargs : nullptr; }

  bool is(Kind k) const { return kind == k; }
  bool is_global(std::string_view module, std::string_view qualname) const {
    return kind == Kind::Global && str == module && name() == qualname;
  }
  // "module.QualName" of a Global, or of an Object's class when that is a Global; "" otherwise.
  std::string qualified_name() const;
  // Dict lookup by string key (first match), nullptr when absent or not a Dict.
  const Value* get(std::string_view key) const;

 private:
  static const Seq<Value*> kNoItems;
};

// Owns every Value, array and string of one unpickled stream: bump allocation in blocks that grow
// geometrically (few allocations, no per-value destructor; freed at once, large blocks straight
// back to the OS). Values live in blocks of their own so they can be visited. Addresses are stable.
class Arena {
 public:
  Arena() = default;
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;
  ~Arena();

  Value* make(Kind k) {
    if (vused_ == vcap_) new_value_block();
    Value* v = new (vblocks_.back().base + vused_++ * sizeof(Value)) Value;
    v->kind = k;
    ++values_;
    return v;
  }
  ValueExtra* make_extra() { return new (alloc(sizeof(ValueExtra), alignof(ValueExtra))) ValueExtra; }
  Text text(std::string_view s) {
    if (s.empty()) return {};
    char* p = static_cast<char*>(alloc(s.size(), 1));
    std::memcpy(p, s.data(), s.size());
    return std::string_view(p, s.size());
  }
  char* text_buffer(size_t n) { return static_cast<char*>(alloc(n, 1)); }
  // Appends n elements; false when the array would exceed UINT32_MAX elements.
  template <typename T>
  bool append(Seq<T>& s, const T* src, size_t n) {
    if (n == 0) return true;
    if (n > UINT32_MAX - s.size_) return false;
    if (s.size_ + n > s.cap_) {
      size_t cap = std::max<size_t>({size_t{4}, size_t{s.cap_} * 2, s.size_ + n});
      cap = std::min<size_t>(cap, UINT32_MAX);
      T* d = static_cast<T*>(alloc(cap * sizeof(T), alignof(T)));
      if (s.size_) std::memcpy(static_cast<void*>(d), s.data_, s.size_ * sizeof(T));
      s.data_ = d;
      s.cap_ = static_cast<uint32_t>(cap);
    }
    std::memcpy(static_cast<void*>(s.data_ + s.size_), src, n * sizeof(T));
    s.size_ += static_cast<uint32_t>(n);
    return true;
  }
  // Makes `dst` a view of `src`'s elements (immutable tuples share their arrays).
  template <typename T>
  static void share(Seq<T>& dst, const Seq<T>& src) {
    dst.data_ = src.data_;
    dst.size_ = src.size_;
    dst.cap_ = src.size_;  // an append to dst copies first
  }

  // A position in the arena. rollback(m) frees everything made since m (the memory is reused), as
  // long as no block was added since; the caller guarantees nothing kept refers to what it frees.
  struct Mark {
    size_t blocks, used, vblocks, vused, values;
  };
  Mark mark() const { return Mark{blocks_.size(), used_, vblocks_.size(), vused_, values_}; }
  bool can_roll_back(const Mark& m) const { return blocks_.size() == m.blocks && vblocks_.size() == m.vblocks; }
  void rollback(const Mark& m) {
    used_ = m.used;
    vused_ = m.vused;
    values_ = m.values;
  }
  // v was made since m (only meaningful while can_roll_back(m)).
  bool made_since(const Mark& m, const Value* v) const {
    if (vblocks_.empty()) return false;
    const char* p = reinterpret_cast<const char*>(v);
    const char* base = vblocks_.back().base;
    return p >= base + m.vused * sizeof(Value) && p < base + vused_ * sizeof(Value);
  }

  // Number of Values made (a shared leaf counts each time it is used).
  size_t size() const { return values_; }
  void count_shared() { ++values_; }
  template <typename F>
  void for_each(F&& f) const {
    for (size_t b = 0; b < vblocks_.size(); ++b) {
      size_t n = b + 1 == vblocks_.size() ? vused_ : vblocks_[b].size / sizeof(Value);
      for (size_t i = 0; i < n; ++i) f(*reinterpret_cast<const Value*>(vblocks_[b].base + i * sizeof(Value)));
    }
  }

 private:
  struct Block {
    char* base;
    size_t size;
  };
  void* alloc(size_t n, size_t align) {
    size_t p = (used_ + align - 1) & ~(align - 1);
    if (blocks_.empty() || p + n > blocks_.back().size) return alloc_slow(n, align);
    used_ = p + n;
    return blocks_.back().base + p;
  }
  void* alloc_slow(size_t n, size_t align);
  void new_value_block();
  Block grab(size_t bytes);

  static constexpr size_t kFirstBlock = 4 << 10;
  static constexpr size_t kMaxBlock = 4 << 20;
  static constexpr size_t kMapped = 256 << 10;

  std::vector<Block> blocks_;   // strings, arrays, extras
  size_t used_ = 0;
  size_t next_ = 0;             // size of the next bytes block
  std::vector<Block> vblocks_;  // Values only
  size_t vused_ = 0, vcap_ = 0;
  size_t values_ = 0;
};

// Lets a caller replace instances of some classes by compact records of its own while they are
// unpickled, so that a pickle of millions of small dataclass instances (a DCP .metadata) is never
// held whole as Values. When an instance of a wanted class is made (NEWOBJ/REDUCE/INST/OBJ) the
// machine marks the arena; at the BUILD that completes that instance, compact() turns it into a
// record. When nothing made since the mark can still be reached (no older container was changed,
// no cached leaf or global was made, the instance is alone on top of its stack slot), everything
// made since the mark is freed and the instance becomes a Value of tag Compacted (i = the id).
// The memo stays exact: entries naming the instance name its replacement, memoized strings and
// numbers made since the mark are copied, and any other memoized part (its state dict, a tuple
// in it) is marked evicted: a later GET of it throws CompactionConflict, and the caller unpickles
// again without a compactor (torch's DCP writers do not share such parts).
class Compactor {
 public:
  virtual ~Compactor() = default;
  // Whether instances of `cls` (a Global) may be compacted; asked for every instance made.
  virtual bool wants(const Value& cls) = 0;
  // `obj` (state set by BUILD) -> the id (>= 0) of the caller's record of it, or -1 to keep it
  // as Values. Must copy what it keeps: obj and what it refers to may be freed after.
  virtual int64_t compact(const Value& obj) = 0;
};

// Thrown by unpickle when a pickle refers again to a part of a compacted instance.
struct CompactionConflict : std::exception {
  const char* what() const noexcept override { return "a compacted object is referred to again"; }
};

struct Limits {
  Compactor* compactor = nullptr;      // see Compactor
  uint32_t max_depth = 1000;           // container nesting
  size_t max_stack = 1u << 22;         // stack entries (also bounded by the input length)
  size_t max_memo = 1u << 26;          // memo indices (also bounded by the input length)
  size_t max_int_bytes = 1024;         // LONG1/LONG4/text LONG magnitude
  size_t max_line = 1u << 16;          // protocol-0 text arguments
};

// The result of one pickle: the root value and the arena that owns it.
struct Document {
  std::shared_ptr<Arena> arena;
  const Value* root = nullptr;
  uint64_t end = 0;  // offset just past STOP in the source
};

// Unpickles one stream that starts at `offset` of `src` and ends at its STOP. `what` names the
// stream in error messages. Throws FormatError("pickle", offset, ...).
Document unpickle(const ByteSource& src, uint64_t offset = 0, const Limits& limits = {});
Document unpickle(std::string_view bytes, const Limits& limits = {});

// Bounds the total work of rendering a (possibly shared, DAG-shaped) value graph: every rendered
// node costs one unit. One budget can span many renderings; a value that does not fit in what is
// left, or in the per-value limits, renders as the __too_large__ placeholder (see the header).
// ~100 bytes of memory per node while one value is built: the per-value limits keep that under
// ~100 MiB whatever the input.
struct RenderBudget {
  uint64_t nodes_left = 1u << 24;
  uint32_t max_depth = 1000;
  uint64_t value_nodes = 1u << 20;   // nodes of one rendered value
  uint64_t value_text = 32u << 20;   // bytes of strings, bytes (base64) and keys in one value
  uint64_t placeholders = 0;         // values rendered as placeholders so far
  std::string last_placeholder;      // "<class>, <N> nodes" of the latest one (for warnings)
};

// Optional caller rendering for some values (return nullopt to use the default).
using RenderHook = std::function<std::optional<nlohmann::ordered_json>(const Value&)>;

nlohmann::ordered_json to_json(const Value& v, RenderBudget& budget, const RenderHook& hook = {});
nlohmann::ordered_json to_json(const Value& v);
// How a dict key or a folder entry name is written for a non-str key (see the header comment).
std::string key_text(const Value& key, RenderBudget& budget);

std::string base64(std::string_view bytes);

// OmegaConf configs (omegaconf.cpp). An Object of class omegaconf.dictconfig.DictConfig or
// omegaconf.listconfig.ListConfig whose state has "_content", or of a value node class of
// omegaconf.nodes (AnyNode, StringNode, IntegerNode, FloatNode, BooleanNode, EnumNode, BytesNode,
// PathNode, ValueNode) whose state has "_val"; anything else is None (and stays inert).
enum class OmegaConfKind : uint8_t { None, DictConfig, ListConfig, Node };
OmegaConfKind omegaconf_kind(const Value& v);
// A config's "_content" or a node's "_val"; nullptr when v is not one.
const Value* omegaconf_payload(const Value& v);
// "NAME" of a Global "module.EnumClass.NAME" (how an enum member pickles: getattr(cls, "NAME")).
std::optional<std::string> enum_member_name(const Value& v);
// v is a DictConfig/ListConfig, or a dict/list/tuple with one somewhere inside.
bool holds_omegaconf(const Value& v);
// The text OmegaConf.to_yaml(v) writes (resolve=False; PyYAML 6, OmegaConfDumper), for v a config
// or plain data holding configs; nullopt when v is not a mapping or sequence, or holds something
// OmegaConf would write with a Python tag (bytes, paths, objects) or that is not valid UTF-8.
std::optional<std::string> to_yaml(const Value& v, RenderBudget& budget);

}  // namespace nemofs::pickle
