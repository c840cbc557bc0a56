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
// pickle.cpp) that gives it a symbolic Tag. REDUCE/NEWOBJ on a data tag builds plain data
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
//   (a cycle) -> {"__cycle__": "<what it is>"}. A caller hook may render some values itself
//   (the torch layer renders tensors as {"__tensor__": {...}}).
#pragma once

#include <cstdint>
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
};

struct Value {
  Kind kind = Kind::None;
  Tag tag = Tag::Unknown;  // Global: allowlist tag; Object: tag of its class when it is a Global
  bool b = false;          // Bool
  int64_t i = 0;           // Int
  double f = 0;            // Float
  std::string str;         // Str (UTF-8), Bytes (raw), BigInt (decimal, leading '-'), Global (module)
  std::string name;        // Global: qualified name. TypedStorage Global: also `dtype` below
  std::string dtype;       // TypedStorage / TorchDtype Global: torch dtype name ("float32", ...)
  std::vector<Value*> items;                       // List, Tuple, Set, FrozenSet; Object: args
  std::vector<std::pair<Value*, Value*>> entries;  // Dict; Object: dictitems (SETITEM(S))
  std::vector<Value*> listitems;                   // Object: APPEND(S) / ADDITEMS
  Value* cls = nullptr;     // Object: the class or callable; PersistentId: the pid
  Value* kwargs = nullptr;  // Object made by NEWOBJ_EX
  Value* state = nullptr;   // BUILD state (Object, or a Dict such as an OrderedDict with _metadata)
  uint32_t depth = 1;       // nesting depth at construction time (limit check)

  bool is(Kind k) const { return kind == k; }
  bool is_global(std::string_view module, std::string_view qualname) const {
    return kind == Kind::Global && str == module && name == qualname;
  }
  // "module.QualName" of a Global, or of an Object's class when that is a Global; "" otherwise.
  std::string qualified_name() const;
  // Dict lookup by string key (first match), nullptr when absent or not a Dict.
  const Value* get(std::string_view key) const;
};

// Owns every Value of one unpickled stream, in blocks (few allocations, flat destruction).
// Addresses are stable.
class Arena {
 public:
  Value* make(Kind k) {
    if (used_ == kBlock || blocks_.empty()) {
      blocks_.push_back(std::make_unique<Value[]>(kBlock));
      used_ = 0;
    }
    Value* v = &blocks_.back()[used_++];
    v->kind = k;
    return v;
  }
  size_t size() const { return blocks_.empty() ? 0 : (blocks_.size() - 1) * kBlock + used_; }
  template <typename F>
  void for_each(F&& f) const {
    for (size_t b = 0; b < blocks_.size(); ++b) {
      size_t n = b + 1 == blocks_.size() ? used_ : kBlock;
      for (size_t i = 0; i < n; ++i) f(blocks_[b][i]);
    }
  }

 private:
  static constexpr size_t kBlock = 1024;
  std::vector<std::unique_ptr<Value[]>> blocks_;
  size_t used_ = 0;
};

struct Limits {
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
// node costs one unit; running out is a FormatError. One budget can span many renderings.
struct RenderBudget {
  uint64_t nodes_left = 1u << 24;
  uint32_t max_depth = 1000;
};

// Optional caller rendering for some values (return nullopt to use the default).
using RenderHook = std::function<std::optional<nlohmann::ordered_json>(const Value&)>;

nlohmann::ordered_json to_json(const Value& v, RenderBudget& budget, const RenderHook& hook = {});
nlohmann::ordered_json to_json(const Value& v);
// How a dict key or a folder entry name is written for a non-str key (see the header comment).
std::string key_text(const Value& key, RenderBudget& budget);

std::string base64(std::string_view bytes);

}  // namespace nemofs::pickle
