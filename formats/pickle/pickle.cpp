#include "formats/pickle/pickle.h"

#include <sys/mman.h>

#include <cctype>
#include <charconv>
#include <cmath>
#include <cstring>
#include <unordered_map>
#include <unordered_set>

#include "formats/core/checked.h"
#include "formats/core/errors.h"
#include "formats/core/utf8.h"
#include "formats/pickle/opcodes.h"

namespace nemofs::pickle {
namespace {

constexpr const char* kFmt = "pickle";

// ---------------------------------------------------------------------------------------------
// Allowlist. Add an entry here to give a global a symbolic tag; everything else stays an inert
// name. Modules are matched after the protocol-2 remapping below.

struct AllowEntry {
  const char* module;
  const char* name;
  Tag tag;
};

constexpr AllowEntry kAllowlist[] = {
    {"collections", "OrderedDict", Tag::OrderedDict},
    {"collections", "defaultdict", Tag::DefaultDict},
    {"collections", "Counter", Tag::Counter},
    {"builtins", "dict", Tag::BuiltinDict},
    {"builtins", "list", Tag::BuiltinList},
    {"builtins", "tuple", Tag::BuiltinTuple},
    {"builtins", "set", Tag::BuiltinSet},
    {"builtins", "frozenset", Tag::BuiltinFrozenSet},
    {"builtins", "bytes", Tag::BuiltinBytes},
    {"builtins", "bytearray", Tag::BuiltinByteArray},
    {"builtins", "getattr", Tag::Getattr},
    {"_codecs", "encode", Tag::CodecsEncode},
    {"copyreg", "_reconstructor", Tag::Reconstructor},
    {"copyreg", "__newobj__", Tag::NewObj},
    {"torch", "Size", Tag::TorchSize},
    {"torch", "device", Tag::TorchDevice},
    {"torch.serialization", "_get_layout", Tag::GetLayout},
    {"torch", "UntypedStorage", Tag::UntypedStorage},
    {"torch.storage", "UntypedStorage", Tag::UntypedStorage},
    {"torch.storage", "TypedStorage", Tag::TypedStorage},
    {"torch", "per_tensor_affine", Tag::TorchQScheme},
    {"torch", "per_tensor_symmetric", Tag::TorchQScheme},
    {"torch", "per_channel_affine", Tag::TorchQScheme},
    {"torch", "per_channel_symmetric", Tag::TorchQScheme},
    {"torch", "per_channel_affine_float_qparams", Tag::TorchQScheme},
    {"torch._utils", "_rebuild_tensor", Tag::RebuildTensor},
    {"torch._utils", "_rebuild_tensor_v2", Tag::RebuildTensorV2},
    {"torch._utils", "_rebuild_tensor_v3", Tag::RebuildTensorV3},
    {"torch._utils", "_rebuild_parameter", Tag::RebuildParameter},
    {"torch._utils", "_rebuild_parameter_with_state", Tag::RebuildParameterWithState},
    {"torch._tensor", "_rebuild_from_type_v2", Tag::RebuildFromTypeV2},
    {"torch._utils", "_rebuild_from_type_v2", Tag::RebuildFromTypeV2},
    {"torch._utils", "_rebuild_qtensor", Tag::RebuildOtherTensor},
    {"torch._utils", "_rebuild_sparse_tensor", Tag::RebuildOtherTensor},
    {"torch._utils", "_rebuild_nested_tensor", Tag::RebuildOtherTensor},
    {"torch._utils", "_rebuild_meta_tensor_no_storage", Tag::RebuildOtherTensor},
    {"torch._utils", "_rebuild_wrapper_subclass", Tag::RebuildOtherTensor},
    {"torch._utils", "_rebuild_device_tensor_from_cpu_tensor", Tag::RebuildOtherTensor},
    {"torch._utils", "_rebuild_device_tensor_from_numpy", Tag::RebuildOtherTensor},
    {"torch._utils", "_rebuild_xla_tensor", Tag::RebuildOtherTensor},
    {"torch._utils", "_rebuild_mlc_tensor", Tag::RebuildOtherTensor},
    {"torch._tensor", "_rebuild_from_type", Tag::RebuildOtherTensor},
};

// torch.<X>Storage / torch.cuda.<X>Storage -> dtype (torch/storage.py _dtype_to_storage_type_map).
struct StorageClass {
  const char* name;
  const char* dtype;
};
constexpr StorageClass kStorageClasses[] = {
    {"DoubleStorage", "float64"},   {"FloatStorage", "float32"},      {"HalfStorage", "float16"},
    {"BFloat16Storage", "bfloat16"}, {"LongStorage", "int64"},        {"IntStorage", "int32"},
    {"ShortStorage", "int16"},      {"CharStorage", "int8"},          {"ByteStorage", "uint8"},
    {"BoolStorage", "bool"},        {"ComplexDoubleStorage", "complex128"},
    {"ComplexFloatStorage", "complex64"}, {"QInt8Storage", "qint8"},  {"QUInt8Storage", "quint8"},
    {"QInt32Storage", "qint32"},    {"QUInt4x2Storage", "quint4x2"},  {"QUInt2x4Storage", "quint2x4"},
};

constexpr const char* kTorchDtypes[] = {
    "float64", "double", "float32", "float", "float16", "half", "bfloat16", "int64", "long", "int32",
    "int", "int16", "short", "int8", "uint8", "bool", "uint16", "uint32", "uint64", "complex32",
    "chalf", "complex64", "cfloat", "complex128", "cdouble", "float8_e4m3fn", "float8_e5m2",
    "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu", "float4_e2m1fn_x2", "qint8", "quint8",
    "qint32", "quint4x2", "quint2x4", "bits8", "bits16", "bits1x8", "bits2x4", "bits4x2",
    "uint1", "uint2", "uint3", "uint4", "uint5", "uint6", "uint7",
    "int1", "int2", "int3", "int4", "int5", "int6", "int7",
};

constexpr const char* kTorchLayouts[] = {"strided", "sparse_coo", "sparse_csr", "sparse_csc",
                                         "sparse_bsr", "sparse_bsc", "_mkldnn", "jagged"};

// CPython Lib/_compat_pickle.py (the entries a checkpoint can plausibly hold) and
// torch/serialization.py load_module_mapping.
struct NameMap {
  const char* from_module;
  const char* from_name;  // nullptr: whole module
  const char* to_module;
  const char* to_name;
};
constexpr NameMap kNameMap[] = {
    {"__builtin__", "xrange", "builtins", "range"},
    {"__builtin__", "reduce", "functools", "reduce"},
    {"__builtin__", "intern", "sys", "intern"},
    {"__builtin__", "unichr", "builtins", "chr"},
    {"__builtin__", "unicode", "builtins", "str"},
    {"__builtin__", "long", "builtins", "int"},
    {"__builtin__", "basestring", "builtins", "str"},
    {"itertools", "izip", "builtins", "zip"},
    {"itertools", "imap", "builtins", "map"},
    {"itertools", "ifilter", "builtins", "filter"},
    {"itertools", "ifilterfalse", "itertools", "filterfalse"},
    {"itertools", "izip_longest", "itertools", "zip_longest"},
    {"UserDict", "UserDict", "collections", "UserDict"},
    {"UserList", "UserList", "collections", "UserList"},
    {"UserString", "UserString", "collections", "UserString"},
    {"__builtin__", nullptr, "builtins", nullptr},
    {"copy_reg", nullptr, "copyreg", nullptr},
    {"Queue", nullptr, "queue", nullptr},
    {"cPickle", nullptr, "pickle", nullptr},
    {"cStringIO", nullptr, "io", nullptr},
    {"StringIO", nullptr, "io", nullptr},
    {"exceptions", nullptr, "builtins", nullptr},
    {"torch.tensor", nullptr, "torch._tensor", nullptr},
};

// ---------------------------------------------------------------------------------------------

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::None: return "None";
    case Kind::Bool: return "bool";
    case Kind::Int: return "int";
    case Kind::BigInt: return "int";
    case Kind::Float: return "float";
    case Kind::Str: return "str";
    case Kind::Bytes: return "bytes";
    case Kind::List: return "list";
    case Kind::Tuple: return "tuple";
    case Kind::Dict: return "dict";
    case Kind::Set: return "set";
    case Kind::FrozenSet: return "frozenset";
    case Kind::Global: return "global";
    case Kind::Object: return "object";
    case Kind::PersistentId: return "persistent id";
  }
  return "?";
}

int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Magnitude (big-endian base 2^32 limbs) to decimal.
std::string limbs_to_decimal(std::vector<uint32_t> limbs, bool negative) {
  std::string digits;
  while (!limbs.empty()) {
    uint64_t rem = 0;
    for (auto& l : limbs) {
      uint64_t cur = (rem << 32) | l;
      l = static_cast<uint32_t>(cur / 1000000000u);
      rem = cur % 1000000000u;
    }
    while (!limbs.empty() && limbs.front() == 0) limbs.erase(limbs.begin());
    for (int k = 0; k < 9; ++k) {
      digits += static_cast<char>('0' + rem % 10);
      rem /= 10;
      if (limbs.empty() && rem == 0) break;
    }
  }
  while (digits.size() > 1 && digits.back() == '0') digits.pop_back();
  if (digits.empty()) digits = "0";
  if (negative && digits != "0") digits += '-';
  return {digits.rbegin(), digits.rend()};
}

// ---------------------------------------------------------------------------------------------
// Buffered reads from a ByteSource; every length is checked against the bytes left first.

class Reader {
 public:
  Reader(const ByteSource& src, uint64_t pos) : src_(src), pos_(pos), end_(src.size()) {}

  uint64_t pos() const { return pos_; }
  uint64_t left() const { return pos_ < end_ ? end_ - pos_ : 0; }

  // Throws the "truncated" error for an inline argument of n bytes.
  void need(uint64_t n, uint64_t op_at, Op op) const {
    if (n > left())
      throw FormatError(kFmt, op_at, std::string("truncated: ") + op_name(op) + " needs " + std::to_string(n) +
                                         " bytes of argument, only " + std::to_string(left()) + " left");
  }
  void length_ok(uint64_t n, uint64_t op_at, Op op) const {
    if (n > left())
      throw FormatError(kFmt, op_at, std::string(op_name(op)) + " length " + std::to_string(n) +
                                         " exceeds the " + std::to_string(left()) + " bytes left in the stream");
  }

  bool at_end() const { return pos_ >= end_; }

  uint8_t byte() {
    if (pos_ >= buf_start_ + buf_.size() || pos_ < buf_start_) fill();
    return static_cast<uint8_t>(buf_[pos_++ - buf_start_]);
  }

  void copy(void* out, size_t n) {
    auto* o = static_cast<char*>(out);
    while (n > 0) {
      if (pos_ >= buf_start_ + buf_.size() || pos_ < buf_start_) fill();
      size_t avail = static_cast<size_t>(buf_start_ + buf_.size() - pos_);
      size_t k = std::min(avail, n);
      std::memcpy(o, buf_.data() + (pos_ - buf_start_), k);
      o += k;
      pos_ += k;
      n -= k;
    }
  }

  std::string take(size_t n) {
    std::string s(n, '\0');
    copy(s.data(), n);
    return s;
  }
  Text take(size_t n, Arena& arena) {
    if (n == 0) return {};
    char* p = arena.text_buffer(n);
    copy(p, n);
    return std::string_view(p, n);
  }

  void skip(uint64_t n) { pos_ += n; }

  // A '\n'-terminated line (without the '\n').
  std::string line(size_t max, uint64_t op_at, Op op) {
    std::string s;
    while (true) {
      if (at_end())
        throw FormatError(kFmt, op_at, std::string("truncated: ") + op_name(op) + " argument has no end of line");
      char c = static_cast<char>(byte());
      if (c == '\n') return s;
      if (s.size() >= max)
        throw FormatError(kFmt, op_at, std::string(op_name(op)) + " argument line is longer than " + std::to_string(max) + " bytes");
      s += c;
    }
  }

 private:
  void fill() {
    if (pos_ >= end_) throw FormatError(kFmt, pos_, "truncated: the stream ends before STOP");
    size_t n = static_cast<size_t>(std::min<uint64_t>(kChunk, end_ - pos_));
    buf_.resize(n);
    size_t got = src_.read_at(pos_, buf_.data(), n);
    if (got != n) throw FormatError(kFmt, pos_ + got, "truncated: the source ended early");
    buf_start_ = pos_;
  }

  static constexpr size_t kChunk = 1u << 16;
  const ByteSource& src_;
  uint64_t pos_;
  uint64_t end_;
  std::string buf_;
  uint64_t buf_start_ = 0;
};

// ---------------------------------------------------------------------------------------------

class Machine {
 public:
  Machine(const ByteSource& src, uint64_t offset, const Limits& limits)
      : in_(src, offset), limits_(limits), arena_(std::make_shared<Arena>()) {
    // No sane writer memoizes more objects than it has bytes.
    input_len_ = in_.left();
  }

  Document run();

 private:
  [[noreturn]] void fail(const std::string& msg) const { throw FormatError(kFmt, op_at_, msg); }

  // The current opcode's fixed-width little-endian argument (the "truncated" error when the
  // stream ends first).
  template <class T>
  T arg() {
    in_.need(sizeof(T), op_at_, op_);
    unsigned char b[sizeof(T)];
    in_.copy(b, sizeof(T));
    return load_le<T>(b);
  }
  uint8_t arg_byte() {
    in_.need(1, op_at_, op_);
    return in_.byte();
  }

  Value* make(Kind k) { return arena_->make(k); }
  // Immutable leaves (None, bools, small ints, the empty tuple) are made once per stream and
  // shared, as CPython shares them; Arena::size() still counts every use.
  Value* shared(Value*& slot, Kind k) {
    if (!slot) return slot = make(k);
    arena_->count_shared();
    return slot;
  }
  Value* make_int(int64_t v) {
    if (v >= kSmallIntMin && v < kSmallIntEnd) {
      if (small_ints_.empty()) small_ints_.resize(kSmallIntEnd - kSmallIntMin, nullptr);
      Value*& slot = small_ints_[static_cast<size_t>(v - kSmallIntMin)];
      if (!slot) {
        slot = make(Kind::Int);
        slot->i = v;
        return slot;
      }
      arena_->count_shared();
      return slot;
    }
    Value* x = make(Kind::Int);
    x->i = v;
    return x;
  }
  Value* make_bool(bool b) {
    Value* v = shared(b ? true_ : false_, Kind::Bool);
    v->b = b;
    return v;
  }
  static bool is_shared_leaf(const Value* v) {
    return v->is(Kind::None) || v->is(Kind::Bool) || v->is(Kind::Int) || (v->is(Kind::Tuple) && v->items.empty());
  }
  Value* make_str(Text s) {
    Value* x = make(Kind::Str);
    x->str = s;
    return x;
  }
  Value* make_str(std::string_view s) { return make_str(Text(arena_->text(s))); }
  Value* make_bytes(Text s) {
    Value* x = make(Kind::Bytes);
    x->str = s;
    return x;
  }
  Value* make_bytes(std::string_view s) { return make_bytes(Text(arena_->text(s))); }
  ValueExtra& extra(Value* v) {
    if (!v->extra) v->extra = arena_->make_extra();
    return *v->extra;
  }
  template <typename T>
  void append(Seq<T>& dst, const T* src, size_t n) {
    if (!arena_->append(dst, src, n)) fail("container has more than 4294967295 items");
  }

  void push(Value* v) {
    if (stack_.size() >= limits_.max_stack) fail("stack deeper than " + std::to_string(limits_.max_stack) + " entries");
    stack_.push_back(v);
  }
  size_t frame_base() const { return marks_.empty() ? 0 : marks_.back(); }
  void need_stack(size_t n) const {
    size_t have = stack_.size() - frame_base();
    if (have < n)
      fail(std::string("stack underflow: ") + op_name(op_) + " needs " + std::to_string(n) + " value" +
           (n == 1 ? "" : "s") + ", the stack has " + std::to_string(have) + (marks_.empty() ? "" : " above the last MARK"));
  }
  Value* pop() {
    need_stack(1);
    Value* v = stack_.back();
    stack_.pop_back();
    return v;
  }
  Value* top() {
    need_stack(1);
    return stack_.back();
  }
  // The values above the last MARK stay on the stack (callers read them at [base, size()) and
  // then drop them with stack_.resize(base)); returns base.
  size_t pop_mark() {
    if (marks_.empty()) fail(std::string("MARK missing: ") + op_name(op_) + " needs a MARK on the stack");
    size_t base = marks_.back();
    marks_.pop_back();
    return base;
  }
  Value* const* from(size_t base) const { return stack_.data() + base; }
  size_t above(size_t base) const { return stack_.size() - base; }

  void nest(Value* container, const Value* item) {
    uint32_t d = item->depth + 1;
    if (d > container->depth) {
      if (d > limits_.max_depth) fail("containers nested deeper than " + std::to_string(limits_.max_depth) + " levels");
      container->depth = d;
    }
  }
  Value* make_seq(Kind k, Value* const* items, size_t n) {
    Value* v = make(k);
    for (size_t i = 0; i < n; ++i) nest(v, items[i]);
    append(v->items, items, n);
    return v;
  }
  // A new sequence with the same items (they are append-only arrays, so the new one shares them).
  Value* make_seq(Kind k, const Seq<Value*>& items) {
    Value* v = make(k);
    for (Value* it : items) nest(v, it);
    Arena::share(v->items, items);
    return v;
  }
  // The arguments of a call as a tuple: the tuple itself, or a tuple copy of a list.
  Value* args_tuple(Value* v) {
    if (v->is(Kind::Tuple)) return v;
    return make_seq(Kind::Tuple, seq_items(v));
  }

  void memo_put(uint64_t idx) {
    Value* v = top();
    if (idx >= limits_.max_memo || idx > memo_.size() + 65536 || idx > input_len_)
      fail(std::string("memo index ") + std::to_string(idx) + " is out of range (" + op_name(op_) + ")");
    if (idx >= memo_.size()) memo_.resize(idx + 1, nullptr);
    if (!memo_[idx]) ++memo_count_;
    memo_[idx] = v;
  }
  Value* memo_get(uint64_t idx) {
    if (idx >= memo_.size() || !memo_[idx])
      fail(std::string("memo index ") + std::to_string(idx) + " was never stored (" + op_name(op_) + ")");
    return memo_[idx];
  }

  uint64_t parse_index(const std::string& line) {
    uint64_t v = 0;
    auto r = std::from_chars(line.data(), line.data() + line.size(), v);
    if (r.ec != std::errc() || r.ptr != line.data() + line.size())
      fail(std::string(op_name(op_)) + " argument '" + line.substr(0, 40) + "' is not a memo index");
    return v;
  }

  Value* int_from_decimal(std::string text);
  Value* int_from_le(const std::string& bytes);
  Value* resolve_global(std::string module, std::string name);
  Value* resolve_global_uncached(std::string module, std::string name);
  Value* call(Value* callable, Value* args, Value* kwargs, bool newobj);
  Value* encode(const Value* s, const Value* enc);
  const Seq<Value*>& seq_items(Value* v) const;
  void add_items(Value* target, Value* const* items, size_t n);
  void set_items(Value* target, Value* const* kv, size_t n);
  std::string decode_string_escape(const std::string& quoted);
  std::string decode_raw_unicode_escape(const std::string& raw);

  Reader in_;
  Limits limits_;
  std::shared_ptr<Arena> arena_;
  uint64_t input_len_ = 0;
  std::vector<Value*> stack_;
  std::vector<size_t> marks_;
  std::vector<Value*> scratch_;
  static constexpr int64_t kSmallIntMin = -256, kSmallIntEnd = 4096;
  std::vector<Value*> small_ints_;
  Value* none_ = nullptr;
  Value* true_ = nullptr;
  Value* false_ = nullptr;
  Value* empty_tuple_ = nullptr;
  std::vector<Value*> memo_;
  size_t memo_count_ = 0;
  std::unordered_map<std::string, Value*> globals_;
  uint64_t op_at_ = 0;
  Op op_{};
};

Value* Machine::int_from_decimal(std::string text) {
  while (!text.empty() && (text.back() == ' ' || text.back() == '\r')) text.pop_back();
  size_t start = 0;
  while (start < text.size() && text[start] == ' ') ++start;
  text = text.substr(start);
  bool neg = false;
  size_t i = 0;
  if (i < text.size() && (text[i] == '-' || text[i] == '+')) neg = text[i++] == '-';
  if (i == text.size()) fail(std::string(op_name(op_)) + " argument is not an integer");
  for (size_t k = i; k < text.size(); ++k)
    if (text[k] < '0' || text[k] > '9') fail(std::string(op_name(op_)) + " argument '" + text.substr(0, 40) + "' is not an integer");
  if (text.size() - i > limits_.max_int_bytes * 5 / 2)
    fail(std::string(op_name(op_)) + " integer has more than " + std::to_string(limits_.max_int_bytes * 5 / 2) + " digits");
  int64_t v = 0;
  auto r = std::from_chars(text.data() + (text[0] == '+' ? 1 : 0), text.data() + text.size(), v);
  if (r.ec == std::errc() && r.ptr == text.data() + text.size()) return make_int(v);
  while (i + 1 < text.size() && text[i] == '0') ++i;
  Value* x = make(Kind::BigInt);
  x->str = arena_->text((neg ? "-" : "") + text.substr(i));
  return x;
}

Value* Machine::int_from_le(const std::string& bytes) {
  if (bytes.empty()) return make_int(0);
  size_t n = bytes.size();
  bool neg = static_cast<unsigned char>(bytes[n - 1]) & 0x80;
  std::vector<unsigned char> mag(bytes.begin(), bytes.end());
  if (neg) {  // two's complement magnitude
    for (auto& c : mag) c = static_cast<unsigned char>(~c);
    for (auto& c : mag) {
      if (++c != 0) break;
    }
  }
  while (!mag.empty() && mag.back() == 0) mag.pop_back();
  if (mag.size() <= 8) {
    uint64_t m = 0;
    for (size_t k = mag.size(); k-- > 0;) m = (m << 8) | mag[k];
    if (!neg && m <= static_cast<uint64_t>(INT64_MAX)) return make_int(static_cast<int64_t>(m));
    if (neg && m <= static_cast<uint64_t>(INT64_MAX) + 1) return make_int(static_cast<int64_t>(0 - m));
  }
  std::vector<uint32_t> limbs((mag.size() + 3) / 4, 0);
  for (size_t k = 0; k < mag.size(); ++k) limbs[limbs.size() - 1 - k / 4] |= static_cast<uint32_t>(mag[k]) << (8 * (k % 4));
  Value* x = make(Kind::BigInt);
  x->str = arena_->text(limbs_to_decimal(std::move(limbs), neg));
  return x;
}

Value* Machine::resolve_global(std::string module, std::string name) {
  // One Value per distinct name, as Python has one object per class.
  std::string cache_key = module + '\n' + name;
  if (auto it = globals_.find(cache_key); it != globals_.end()) return it->second;
  Value* g = resolve_global_uncached(std::move(module), std::move(name));
  globals_.emplace(std::move(cache_key), g);
  return g;
}

Value* Machine::resolve_global_uncached(std::string module, std::string name) {
  for (const auto& m : kNameMap) {
    if (module != m.from_module) continue;
    if (m.from_name && name == m.from_name) {
      module = m.to_module;
      name = m.to_name;
      break;
    }
    if (!m.from_name) {
      module = m.to_module;
      break;
    }
  }
  Value* g = make(Kind::Global);
  for (const auto& a : kAllowlist) {
    if (module == a.module && name == a.name) {
      g->tag = a.tag;
      break;
    }
  }
  if (g->tag == Tag::Unknown && (module == "torch" || module == "torch.cuda")) {
    for (const auto& s : kStorageClasses)
      if (name == s.name) {
        g->tag = Tag::TypedStorage;
        extra(g).dtype = Text(s.dtype);
      }
    if (module == "torch") {
      for (const char* d : kTorchDtypes)
        if (name == d) {
          g->tag = Tag::TorchDtype;
          extra(g).dtype = Text(d);
        }
      for (const char* l : kTorchLayouts)
        if (name == l) g->tag = Tag::TorchLayout;
    }
  }
  g->str = arena_->text(module);
  extra(g).name = arena_->text(name);
  return g;
}

const Seq<Value*>& Machine::seq_items(Value* v) const {
  if (v->is(Kind::Tuple) || v->is(Kind::List)) return v->items;
  fail(std::string(op_name(op_)) + " arguments are a " + kind_name(v->kind) + ", not a tuple");
}

Value* Machine::encode(const Value* s, const Value* enc) {
  if (!s->is(Kind::Str)) return nullptr;
  std::string e = enc && enc->is(Kind::Str) ? enc->str.str() : "utf-8";
  for (auto& c : e) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (e == "utf-8" || e == "utf8") return make_bytes(s->str);
  if (e == "latin1" || e == "latin-1" || e == "iso-8859-1" || e == "iso8859-1") {
    std::vector<uint32_t> cps;
    if (!decode_utf8(s->str, Utf8Check::LeadOnly, cps)) return nullptr;
    std::string out;
    out.reserve(cps.size());
    for (uint32_t cp : cps) {
      if (cp > 255) return nullptr;
      out += static_cast<char>(cp);
    }
    return make_bytes(std::move(out));
  }
  return nullptr;
}

// Evaluates plain-data constructors; every other call is an inert Object.
Value* Machine::call(Value* callable, Value* args, Value* kwargs, bool newobj) {
  auto inert = [&]() {
    Value* o = make(Kind::Object);
    o->cls = callable;
    o->tag = callable->is(Kind::Global) ? callable->tag : Tag::Unknown;
    Arena::share(o->items, args->items);
    for (Value* it : o->items) nest(o, it);
    if (kwargs) {
      nest(o, kwargs);
      extra(o).kwargs = kwargs;
    }
    return o;
  };
  if (!callable->is(Kind::Global)) return inert();
  const auto& a = args->items;
  bool no_kwargs = !kwargs || (kwargs->is(Kind::Dict) && kwargs->entries.empty());
  if (!no_kwargs) return inert();
  switch (callable->tag) {
    case Tag::OrderedDict:
    case Tag::BuiltinDict:
    case Tag::Counter:
    case Tag::DefaultDict: {
      Value* d = make(Kind::Dict);
      if (callable->tag == Tag::DefaultDict || a.empty()) return d;
      if (a.size() != 1) return inert();
      if (a[0]->is(Kind::Dict)) {
        Arena::share(d->entries, a[0]->entries);
      } else if (a[0]->is(Kind::List) || a[0]->is(Kind::Tuple)) {
        for (Value* kv : a[0]->items)
          if (!(kv->is(Kind::List) || kv->is(Kind::Tuple)) || kv->items.size() != 2) return inert();
        for (Value* kv : a[0]->items) {
          Item e(kv->items[0], kv->items[1]);
          append(d->entries, &e, 1);
        }
      } else {
        return inert();
      }
      for (auto& [k, v] : d->entries) {
        nest(d, k);
        nest(d, v);
      }
      return d;
    }
    case Tag::BuiltinList:
    case Tag::BuiltinTuple:
    case Tag::BuiltinSet:
    case Tag::BuiltinFrozenSet: {
      Kind k = callable->tag == Tag::BuiltinList    ? Kind::List
               : callable->tag == Tag::BuiltinTuple ? Kind::Tuple
               : callable->tag == Tag::BuiltinSet   ? Kind::Set
                                                    : Kind::FrozenSet;
      if (a.empty()) return make(k);
      if (a.size() != 1) return inert();
      const Value* src = a[0];
      if (src->is(Kind::List) || src->is(Kind::Tuple) || src->is(Kind::Set) || src->is(Kind::FrozenSet))
        return make_seq(k, src->items);
      if (src->is(Kind::Dict)) {
        std::vector<Value*> keys;
        for (auto& [key, val] : src->entries) keys.push_back(key);
        return make_seq(k, keys.data(), keys.size());
      }
      return inert();
    }
    case Tag::BuiltinBytes:
    case Tag::BuiltinByteArray: {
      if (a.empty()) return make_bytes(Text());
      if (a[0]->is(Kind::Bytes) && a.size() == 1) return make_bytes(a[0]->str);
      if (a[0]->is(Kind::Str) && a.size() <= 2) {
        if (Value* b = encode(a[0], a.size() == 2 ? a[1] : nullptr)) return b;
        return inert();
      }
      if ((a[0]->is(Kind::List) || a[0]->is(Kind::Tuple)) && a.size() == 1) {
        std::string out;
        for (const Value* x : a[0]->items) {
          if (!x->is(Kind::Int) || x->i < 0 || x->i > 255) return inert();
          out += static_cast<char>(x->i);
        }
        return make_bytes(std::move(out));
      }
      return inert();
    }
    case Tag::CodecsEncode:
      if (newobj || a.empty() || a.size() > 3) return inert();
      if (Value* b = encode(a[0], a.size() >= 2 ? a[1] : nullptr)) return b;
      return inert();
    case Tag::Getattr:
      if (!newobj && a.size() == 2 && a[0]->is(Kind::Global) && a[1]->is(Kind::Str)) {
        Value* g = make(Kind::Global);
        g->str = a[0]->str;
        extra(g).name = arena_->text(a[0]->name() + "." + a[1]->str);
        return g;
      }
      return inert();
    case Tag::Reconstructor:
      if (!newobj && a.size() == 3) {
        Value* o = make(Kind::Object);
        o->cls = a[0];
        o->tag = a[0]->is(Kind::Global) ? a[0]->tag : Tag::Unknown;
        if (!a[2]->is(Kind::None)) {
          o->state = a[2];
          nest(o, a[2]);
        }
        return o;
      }
      return inert();
    case Tag::NewObj:
      if (!newobj && !a.empty()) {
        Value* inner = make_seq(Kind::Tuple, a.data() + 1, a.size() - 1);
        return call(a[0], inner, nullptr, true);
      }
      return inert();
    case Tag::TorchSize:
      if (a.size() == 1 && (a[0]->is(Kind::Tuple) || a[0]->is(Kind::List))) return args_tuple(a[0]);
      if (a.empty()) return make(Kind::Tuple);
      return inert();
    case Tag::GetLayout:
      if (!newobj && a.size() == 1 && a[0]->is(Kind::Str)) {
        std::string_view s = a[0]->str;
        size_t dot = s.rfind('.');
        Value* g = make(Kind::Global);
        g->str = dot == std::string::npos ? Text("torch") : Text(s.substr(0, dot));
        extra(g).name = dot == std::string::npos ? Text(s) : Text(s.substr(dot + 1));
        g->tag = Tag::TorchLayout;
        return g;
      }
      return inert();
    default:
      return inert();
  }
}

void Machine::add_items(Value* target, Value* const* items, size_t n) {
  Seq<Value*>* dst = nullptr;
  if (op_ == Op::ADDITEMS) {
    if (target->is(Kind::Set)) dst = &target->items;
  } else if (target->is(Kind::List)) {
    dst = &target->items;
  }
  if (!dst && target->is(Kind::Object)) dst = &extra(target).listitems;
  if (!dst)
    fail(std::string(op_name(op_)) + " target is a " + kind_name(target->kind) + ", not a " +
         (op_ == Op::ADDITEMS ? "set" : "list"));
  for (size_t i = 0; i < n; ++i) nest(target, items[i]);
  append(*dst, items, n);
}

void Machine::set_items(Value* target, Value* const* kv, size_t n) {
  if (n % 2) fail(std::string(op_name(op_)) + " has an odd number of items (a key without a value)");
  Seq<Item>* dst = nullptr;
  if (target->is(Kind::Dict) || target->is(Kind::Object)) dst = &target->entries;
  if (!dst) fail(std::string(op_name(op_)) + " target is a " + kind_name(target->kind) + ", not a dict");
  for (size_t k = 0; k < n; ++k) nest(target, kv[k]);
  static_assert(sizeof(Item) == 2 * sizeof(Value*));
  // Key/value pairs on the stack have the layout of Items; copied one by one to stay portable.
  if (dst->size() + n / 2 > UINT32_MAX) fail("container has more than 4294967295 items");
  for (size_t k = 0; k < n; k += 2) {
    Item e(kv[k], kv[k + 1]);
    append(*dst, &e, 1);
  }
}

std::string Machine::decode_string_escape(const std::string& line) {
  std::string s = line;
  while (!s.empty() && (s.back() == '\r' || s.back() == ' ')) s.pop_back();
  if (s.size() < 2 || (s.front() != '\'' && s.front() != '"') || s.back() != s.front())
    fail("STRING argument is not a quoted string");
  s = s.substr(1, s.size() - 2);
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '\\' || i + 1 == s.size()) {
      out += s[i];
      continue;
    }
    char c = s[++i];
    switch (c) {
      case 'n': out += '\n'; break;
      case 't': out += '\t'; break;
      case 'r': out += '\r'; break;
      case 'a': out += '\a'; break;
      case 'b': out += '\b'; break;
      case 'f': out += '\f'; break;
      case 'v': out += '\v'; break;
      case '\\': out += '\\'; break;
      case '\'': out += '\''; break;
      case '"': out += '"'; break;
      case '\n': break;
      case 'x': {
        int h = i + 2 < s.size() ? hexval(s[i + 1]) : -1, l = i + 2 < s.size() ? hexval(s[i + 2]) : -1;
        if (h < 0 || l < 0) fail("STRING argument has a bad \\x escape");
        out += static_cast<char>(h * 16 + l);
        i += 2;
        break;
      }
      default:
        if (c >= '0' && c <= '7') {
          int v = c - '0';
          for (int k = 0; k < 2 && i + 1 < s.size() && s[i + 1] >= '0' && s[i + 1] <= '7'; ++k) v = v * 8 + (s[++i] - '0');
          out += static_cast<char>(v & 0xFF);
        } else {
          out += '\\';
          out += c;
        }
    }
  }
  return out;
}

std::string Machine::decode_raw_unicode_escape(const std::string& raw) {
  std::string out;
  for (size_t i = 0; i < raw.size(); ++i) {
    auto c = static_cast<unsigned char>(raw[i]);
    if (c == '\\' && i + 1 < raw.size() && (raw[i + 1] == 'u' || raw[i + 1] == 'U')) {
      size_t n = raw[i + 1] == 'u' ? 4 : 8;
      if (i + 2 + n > raw.size()) fail("UNICODE argument has a truncated \\u escape");
      uint32_t cp = 0;
      for (size_t k = 0; k < n; ++k) {
        int h = hexval(raw[i + 2 + k]);
        if (h < 0) fail("UNICODE argument has a bad \\u escape");
        cp = cp * 16 + static_cast<uint32_t>(h);
      }
      if (cp > 0x10FFFF) fail("UNICODE argument has a code point beyond U+10FFFF");
      append_utf8(out, cp);
      i += 1 + n;
    } else {
      append_utf8(out, c);  // raw-unicode-escape: every other byte is Latin-1
    }
  }
  return out;
}

Document Machine::run() {
  while (true) {
    op_at_ = in_.pos();
    if (in_.at_end()) throw FormatError(kFmt, op_at_, "truncated: the stream ends before STOP");
    op_ = static_cast<Op>(in_.byte());
    switch (op_) {
      case Op::PROTO: {
        uint8_t v = arg_byte();
        if (v > 5) fail("unsupported pickle protocol " + std::to_string(v) + " (0-5 are known)");
        break;
      }
      case Op::FRAME: {  // framing is only a read-ahead hint
        uint64_t n = arg<uint64_t>();
        in_.length_ok(n, op_at_, op_);
        break;
      }
      case Op::STOP: {
        Value* v = pop();
        return Document{arena_, v, in_.pos()};
      }
      case Op::MARK:
        marks_.push_back(stack_.size());
        if (marks_.size() > limits_.max_stack) fail("too many MARKs");
        break;
      case Op::POP:
        if (stack_.size() > frame_base()) stack_.pop_back();
        else stack_.resize(pop_mark());
        break;
      case Op::POP_MARK:
        stack_.resize(pop_mark());
        break;
      case Op::DUP:
        push(top());
        break;
      case Op::INT: {
        std::string s = in_.line(limits_.max_line, op_at_, op_);
        if (s == "00" || s == "01") {
          push(make_bool(s == "01"));
        } else {
          push(int_from_decimal(s));
        }
        break;
      }
      case Op::BININT: {
        push(make_int(arg<int32_t>()));
        break;
      }
      case Op::BININT1:
        push(make_int(arg_byte()));
        break;
      case Op::BININT2: {
        push(make_int(arg<uint16_t>()));
        break;
      }
      case Op::LONG: {
        std::string s = in_.line(limits_.max_line, op_at_, op_);
        if (!s.empty() && (s.back() == 'L' || s.back() == 'l')) s.pop_back();
        push(int_from_decimal(s));
        break;
      }
      case Op::LONG1:
      case Op::LONG4: {
        uint64_t n;
        if (op_ == Op::LONG1) {
          n = arg_byte();
        } else {
          int32_t len = arg<int32_t>();
          if (len < 0) fail("LONG4 has a negative length " + std::to_string(len));
          n = static_cast<uint64_t>(len);
        }
        in_.length_ok(n, op_at_, op_);
        if (n > limits_.max_int_bytes)
          fail(std::string(op_name(op_)) + " integer of " + std::to_string(n) + " bytes is larger than the " +
               std::to_string(limits_.max_int_bytes) + "-byte limit");
        push(int_from_le(in_.take(static_cast<size_t>(n))));
        break;
      }
      case Op::FLOAT: {
        std::string s = in_.line(limits_.max_line, op_at_, op_);
        double d = 0;
        const char* b = s.data();
        const char* e = s.data() + s.size();
        while (b < e && *b == ' ') ++b;
        if (b < e && *b == '+') ++b;
        auto r = std::from_chars(b, e, d);
        if (r.ec != std::errc() || r.ptr != e) fail("FLOAT argument '" + s.substr(0, 40) + "' is not a number");
        Value* v = make(Kind::Float);
        v->f = d;
        push(v);
        break;
      }
      case Op::BINFLOAT: {
        in_.need(8, op_at_, op_);
        unsigned char b[8];
        in_.copy(b, 8);
        uint64_t bits = 0;
        for (int k = 0; k < 8; ++k) bits = (bits << 8) | b[k];  // big-endian
        Value* v = make(Kind::Float);
        std::memcpy(&v->f, &bits, 8);
        push(v);
        break;
      }
      case Op::STRING: {
        std::string s = decode_string_escape(in_.line(limits_.max_line, op_at_, op_));
        push(!find_invalid_utf8(s, Utf8Check::Shape) ? make_str(std::string_view(s)) : make_bytes(std::string_view(s)));
        break;
      }
      case Op::BINSTRING:
      case Op::SHORT_BINSTRING: {  // a Python 2 str: text when it decodes, else bytes
        uint64_t n;
        if (op_ == Op::SHORT_BINSTRING) {
          n = arg_byte();
        } else {
          int32_t len = arg<int32_t>();
          if (len < 0) fail("BINSTRING has a negative length " + std::to_string(len));
          n = static_cast<uint64_t>(len);
        }
        in_.length_ok(n, op_at_, op_);
        Text s = in_.take(static_cast<size_t>(n), *arena_);
        push(!find_invalid_utf8(s, Utf8Check::Shape) ? make_str(s) : make_bytes(s));
        break;
      }
      case Op::UNICODE:
        push(make_str(std::string_view(decode_raw_unicode_escape(in_.line(limits_.max_line, op_at_, op_)))));
        break;
      case Op::BINUNICODE:
      case Op::SHORT_BINUNICODE:
      case Op::BINUNICODE8:
      case Op::BINBYTES:
      case Op::SHORT_BINBYTES:
      case Op::BINBYTES8:
      case Op::BYTEARRAY8: {
        uint64_t n = (op_ == Op::SHORT_BINUNICODE || op_ == Op::SHORT_BINBYTES) ? arg_byte()
                     : (op_ == Op::BINUNICODE || op_ == Op::BINBYTES)           ? arg<uint32_t>()
                                                                                : arg<uint64_t>();
        in_.length_ok(n, op_at_, op_);
        Text s = in_.take(static_cast<size_t>(n), *arena_);
        bool text = op_ == Op::BINUNICODE || op_ == Op::SHORT_BINUNICODE || op_ == Op::BINUNICODE8;
        push(text ? make_str(s) : make_bytes(s));
        break;
      }
      case Op::NONE:
        push(shared(none_, Kind::None));
        break;
      case Op::NEWTRUE:
      case Op::NEWFALSE:
        push(make_bool(op_ == Op::NEWTRUE));
        break;
      case Op::EMPTY_LIST:
        push(make(Kind::List));
        break;
      case Op::EMPTY_TUPLE:
        push(shared(empty_tuple_, Kind::Tuple));
        break;
      case Op::EMPTY_DICT:
        push(make(Kind::Dict));
        break;
      case Op::EMPTY_SET:
        push(make(Kind::Set));
        break;
      case Op::LIST:
        {
          size_t base = pop_mark();
          Value* v = make_seq(Kind::List, from(base), above(base));
          stack_.resize(base);
          push(v);
        }
        break;
      case Op::TUPLE:
        {
          size_t base = pop_mark();
          Value* v = make_seq(Kind::Tuple, from(base), above(base));
          stack_.resize(base);
          push(v);
        }
        break;
      case Op::FROZENSET:
        {
          size_t base = pop_mark();
          Value* v = make_seq(Kind::FrozenSet, from(base), above(base));
          stack_.resize(base);
          push(v);
        }
        break;
      case Op::TUPLE1:
      case Op::TUPLE2:
      case Op::TUPLE3: {
        size_t n = op_ == Op::TUPLE1 ? 1 : op_ == Op::TUPLE2 ? 2 : 3;
        need_stack(n);
        size_t base = stack_.size() - n;
        Value* v = make_seq(Kind::Tuple, from(base), n);
        stack_.resize(base);
        push(v);
        break;
      }
      case Op::DICT: {
        size_t base = pop_mark();
        Value* d = make(Kind::Dict);
        set_items(d, from(base), above(base));
        stack_.resize(base);
        push(d);
        break;
      }
      case Op::APPEND: {
        need_stack(2);
        Value* x = pop();
        add_items(top(), &x, 1);
        break;
      }
      case Op::APPENDS:
      case Op::ADDITEMS: {
        size_t base = pop_mark();
        std::vector<Value*>& items = scratch_;
        items.assign(from(base), from(base) + above(base));
        stack_.resize(base);
        add_items(top(), items.data(), items.size());
        break;
      }
      case Op::SETITEM: {
        need_stack(3);
        Value* kv[2];
        kv[1] = pop();
        kv[0] = pop();
        set_items(top(), kv, 2);
        break;
      }
      case Op::SETITEMS: {
        size_t base = pop_mark();
        std::vector<Value*>& kv = scratch_;
        kv.assign(from(base), from(base) + above(base));
        stack_.resize(base);
        set_items(top(), kv.data(), kv.size());
        break;
      }
      case Op::GET:
        push(memo_get(parse_index(in_.line(limits_.max_line, op_at_, op_))));
        break;
      case Op::BINGET:
        push(memo_get(arg_byte()));
        break;
      case Op::LONG_BINGET: {
        push(memo_get(arg<uint32_t>()));
        break;
      }
      case Op::PUT:
        memo_put(parse_index(in_.line(limits_.max_line, op_at_, op_)));
        break;
      case Op::BINPUT:
        memo_put(arg_byte());
        break;
      case Op::LONG_BINPUT: {
        memo_put(arg<uint32_t>());
        break;
      }
      case Op::MEMOIZE:
        memo_put(memo_count_);
        break;
      case Op::GLOBAL: {
        std::string module = in_.line(limits_.max_line, op_at_, op_);
        std::string name = in_.line(limits_.max_line, op_at_, op_);
        push(resolve_global(std::move(module), std::move(name)));
        break;
      }
      case Op::STACK_GLOBAL: {
        need_stack(2);
        Value* name = pop();
        Value* module = pop();
        if (!module->is(Kind::Str) || !name->is(Kind::Str)) fail("STACK_GLOBAL needs two str values (module, name)");
        push(resolve_global(module->str.str(), name->str.str()));
        break;
      }
      case Op::REDUCE: {
        need_stack(2);
        Value* args = pop();
        Value* callable = pop();
        push(call(callable, args_tuple(args), nullptr, false));
        break;
      }
      case Op::NEWOBJ: {
        need_stack(2);
        Value* args = pop();
        Value* cls = pop();
        push(call(cls, args_tuple(args), nullptr, true));
        break;
      }
      case Op::NEWOBJ_EX: {
        need_stack(3);
        Value* kwargs = pop();
        Value* args = pop();
        Value* cls = pop();
        if (!kwargs->is(Kind::Dict)) fail("NEWOBJ_EX keyword arguments are not a dict");
        push(call(cls, args_tuple(args), kwargs, true));
        break;
      }
      case Op::BUILD: {
        need_stack(2);
        Value* state = pop();
        Value* obj = top();
        if (is_shared_leaf(obj)) {
          // BUILD on a leaf only records a state nobody reads; a private copy keeps it off the
          // shared value.
          Value* copy = make(obj->kind);
          *copy = *obj;
          stack_.back() = obj = copy;
        }
        if (obj->is(Kind::Object) && obj->state && obj->state->is(Kind::Dict) && state->is(Kind::Dict) &&
            obj->state != state) {
          Value* merged = make(Kind::Dict);
          append(merged->entries, obj->state->entries.data(), obj->state->entries.size());
          append(merged->entries, state->entries.data(), state->entries.size());
          merged->depth = std::max(obj->state->depth, state->depth);
          state = merged;
        }
        nest(obj, state);
        obj->state = state;
        break;
      }
      case Op::INST: {
        std::string module = in_.line(limits_.max_line, op_at_, op_);
        std::string name = in_.line(limits_.max_line, op_at_, op_);
        size_t base = pop_mark();
        Value* cls = resolve_global(std::move(module), std::move(name));
        Value* args = make_seq(Kind::Tuple, from(base), above(base));
        stack_.resize(base);
        push(call(cls, args, nullptr, false));
        break;
      }
      case Op::OBJ: {
        size_t base = pop_mark();
        if (above(base) == 0) fail("OBJ needs a class after its MARK");
        Value* cls = stack_[base];
        Value* args = make_seq(Kind::Tuple, from(base) + 1, above(base) - 1);
        stack_.resize(base);
        push(call(cls, args, nullptr, false));
        break;
      }
      case Op::PERSID: {
        Value* p = make(Kind::PersistentId);
        p->cls = make_str(std::string_view(in_.line(limits_.max_line, op_at_, op_)));
        push(p);
        break;
      }
      case Op::BINPERSID: {
        Value* pid = pop();
        Value* p = make(Kind::PersistentId);
        p->cls = pid;
        nest(p, pid);
        push(p);
        break;
      }
      case Op::EXT1:
      case Op::EXT2:
      case Op::EXT4:
        fail(std::string(op_name(op_)) + ": the copyreg extension registry is not supported");
      case Op::NEXT_BUFFER:
      case Op::READONLY_BUFFER:
        fail(std::string(op_name(op_)) + ": out-of-band pickle buffers are not supported");
      default: {
        static const char* hex = "0123456789abcdef";
        auto byte = static_cast<uint8_t>(op_);
        fail(std::string("unknown opcode 0x") + hex[byte >> 4] + hex[byte & 15]);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------

class Renderer {
 public:
  Renderer(RenderBudget& b, const RenderHook& hook) : budget_(b), hook_(hook) {}

  nlohmann::ordered_json render(const Value& v, uint32_t depth) {
    if (budget_.nodes_left == 0)
      throw FormatError(kFmt, "value too large to render (shared references expand beyond the node budget)");
    --budget_.nodes_left;
    if (depth > budget_.max_depth)
      throw FormatError(kFmt, "containers nested deeper than " + std::to_string(budget_.max_depth) + " levels");
    if (hook_) {
      if (auto j = hook_(v)) return *j;
    }
    bool container = v.kind >= Kind::List;
    if (container && !on_path_.insert(&v).second) {
      std::string what = v.qualified_name();
      return nlohmann::ordered_json{{"__cycle__", what.empty() ? kind_name(v.kind) : what}};
    }
    nlohmann::ordered_json j = render_inner(v, depth);
    if (container) on_path_.erase(&v);
    return j;
  }

  std::string key(const Value& k, uint32_t depth) {
    switch (k.kind) {
      case Kind::Str: return k.str.str();
      case Kind::Int: return std::to_string(k.i);
      case Kind::BigInt: return k.str.str();
      case Kind::Bool: return k.b ? "true" : "false";
      case Kind::None: return "null";
      default: return render(k, depth).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    }
  }

 private:
  nlohmann::ordered_json array(const Seq<Value*>& items, uint32_t depth) {
    auto a = nlohmann::ordered_json::array();
    for (const Value* x : items) a.push_back(render(*x, depth + 1));
    return a;
  }
  nlohmann::ordered_json object(const Seq<Item>& entries, uint32_t depth) {
    auto o = nlohmann::ordered_json::object();
    for (const auto& [k, x] : entries) o[key(*k, depth + 1)] = render(*x, depth + 1);
    return o;
  }

  nlohmann::ordered_json render_inner(const Value& v, uint32_t depth) {
    using J = nlohmann::ordered_json;
    switch (v.kind) {
      case Kind::None: return nullptr;
      case Kind::Bool: return v.b;
      case Kind::Int: return v.i;
      case Kind::BigInt: {
        if (v.str[0] != '-') {
          uint64_t u = 0;
          auto r = std::from_chars(v.str.data(), v.str.data() + v.str.size(), u);
          if (r.ec == std::errc() && r.ptr == v.str.data() + v.str.size()) return u;
        }
        return v.str.str();
      }
      case Kind::Float:
        if (std::isnan(v.f)) return "NaN";
        if (std::isinf(v.f)) return v.f > 0 ? "Infinity" : "-Infinity";
        return v.f;
      case Kind::Str: return v.str.str();
      case Kind::Bytes: return J{{"__bytes__", base64(v.str)}};
      case Kind::List:
      case Kind::Tuple: return array(v.items, depth);
      case Kind::Set: return J{{"__set__", array(v.items, depth)}};
      case Kind::FrozenSet: return J{{"__frozenset__", array(v.items, depth)}};
      case Kind::Dict: return object(v.entries, depth);
      case Kind::Global: return J{{"__global__", v.qualified_name()}};
      case Kind::PersistentId: return J{{"__persistent_id__", render(*v.cls, depth + 1)}};
      case Kind::Object: {
        J o = J::object();
        std::string cls = v.qualified_name();
        if (!cls.empty()) {
          o["__class__"] = cls;
        } else {
          o["__class__"] = nullptr;
          o["callable"] = v.cls ? render(*v.cls, depth + 1) : J();
        }
        o["args"] = array(v.items, depth);
        if (v.kwargs() && !v.kwargs()->entries.empty()) o["kwargs"] = render(*v.kwargs(), depth + 1);
        if (v.state) o["state"] = render(*v.state, depth + 1);
        if (!v.listitems().empty()) o["listitems"] = array(v.listitems(), depth);
        if (!v.entries.empty()) o["dictitems"] = object(v.entries, depth);
        return o;
      }
    }
    return nullptr;
  }

  RenderBudget& budget_;
  const RenderHook& hook_;
  std::unordered_set<const Value*> on_path_;
};

}  // namespace

const Seq<Value*> Value::kNoItems;

std::string Value::qualified_name() const {
  if (kind == Kind::Global) return str.empty() ? name().str() : str + "." + name();
  if (kind == Kind::Object && cls && cls->kind == Kind::Global) return cls->qualified_name();
  return {};
}

const Value* Value::get(std::string_view key) const {
  if (kind != Kind::Dict) return nullptr;
  for (const auto& [k, v] : entries)
    if (k->kind == Kind::Str && k->str == key) return v;
  return nullptr;
}

Arena::~Arena() {
  for (const std::vector<Block>* list : {&blocks_, &vblocks_})
    for (const Block& b : *list) {
      if (b.size >= kMapped) ::munmap(b.base, b.size);
      else std::free(b.base);
    }
}

// Blocks this large come from mmap so that freeing a Document gives their pages back to the OS
// (malloc would keep them in its heap).
Arena::Block Arena::grab(size_t bytes) {
  void* p;
  constexpr size_t kHuge = 2 << 20;
  if (bytes >= kHuge && bytes % kHuge == 0) {
    // 2 MiB aligned and marked for transparent huge pages: far fewer page faults to fill it.
    const size_t len = bytes + kHuge;
    void* raw = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) throw std::bad_alloc();
    const auto r = reinterpret_cast<uintptr_t>(raw);
    const uintptr_t a = (r + kHuge - 1) & ~(kHuge - 1);
    if (a > r) ::munmap(raw, a - r);
    if (r + len > a + bytes) ::munmap(reinterpret_cast<void*>(a + bytes), r + len - (a + bytes));
    p = reinterpret_cast<void*>(a);
    ::madvise(p, bytes, MADV_HUGEPAGE);
  } else if (bytes >= kMapped) {
    p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
  } else {
    p = std::malloc(bytes);
    if (!p) throw std::bad_alloc();
  }
  return Block{static_cast<char*>(p), bytes};
}

void* Arena::alloc_slow(size_t n, size_t align) {
  const size_t next = next_ ? next_ : kFirstBlock;
  // An array or string larger than a quarter block gets a block of its own, so the current
  // block's free space is kept.
  if (n > next / 4) {
    Block b = grab(std::max<size_t>(n, 16));
    blocks_.insert(blocks_.empty() ? blocks_.end() : blocks_.end() - 1, b);
    if (blocks_.size() == 1) used_ = b.size;  // nothing else fits in it
    return b.base;
  }
  blocks_.push_back(grab(next));
  next_ = std::min(next * 2, kMaxBlock);
  used_ = n;  // the block's start is aligned for anything
  return blocks_.back().base;
}

void Arena::new_value_block() {
  size_t bytes = vblocks_.empty() ? kFirstBlock : std::min(vblocks_.back().size * 2, kMaxBlock);
  vblocks_.push_back(grab(bytes));
  vused_ = 0;
  vcap_ = bytes / sizeof(Value);
}

Document unpickle(const ByteSource& src, uint64_t offset, const Limits& limits) {
  Machine m(src, offset, limits);
  return m.run();
}

Document unpickle(std::string_view bytes, const Limits& limits) {
  MemorySource src{std::string(bytes), "<pickle>"};
  return unpickle(src, 0, limits);
}

nlohmann::ordered_json to_json(const Value& v, RenderBudget& budget, const RenderHook& hook) {
  Renderer r(budget, hook);
  return r.render(v, 0);
}

nlohmann::ordered_json to_json(const Value& v) {
  RenderBudget b;
  return to_json(v, b);
}

std::string key_text(const Value& key, RenderBudget& budget) {
  RenderHook none;
  Renderer r(budget, none);
  return r.key(key, 0);
}

std::string base64(std::string_view in) {
  static const char* tbl = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    uint32_t n = (static_cast<unsigned char>(in[i]) << 16) | (static_cast<unsigned char>(in[i + 1]) << 8) |
                 static_cast<unsigned char>(in[i + 2]);
    out += tbl[n >> 18];
    out += tbl[(n >> 12) & 63];
    out += tbl[(n >> 6) & 63];
    out += tbl[n & 63];
  }
  if (i < in.size()) {
    uint32_t n = static_cast<unsigned char>(in[i]) << 16;
    if (i + 1 < in.size()) n |= static_cast<unsigned char>(in[i + 1]) << 8;
    out += tbl[n >> 18];
    out += tbl[(n >> 12) & 63];
    out += i + 1 < in.size() ? tbl[(n >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

}  // namespace nemofs::pickle
