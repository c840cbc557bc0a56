// The pickle machine's state, shared by the sources that implement its opcodes: machine.cpp (the
// dispatch loop, stack, metastack and memo), calls.cpp (what REDUCE / NEWOBJ / INST / OBJ build)
// and literals.cpp (protocol-0 text arguments and LONG integers).
#pragma once

#include <algorithm>
#include <charconv>
#include <cstring>
#include <deque>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "formats/core/byte_source.h"
#include "formats/core/checked.h"
#include "formats/core/errors.h"
#include "formats/pickle/internal.h"
#include "formats/pickle/opcodes.h"
#include "formats/pickle/pickle.h"

namespace nemofs::pickle::detail {

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

  // The length of LONG1 / SHORT_BINSTRING (one byte) or LONG4 / BINSTRING (signed, as protocol 1
  // wrote it: a negative one is refused), checked against the bytes left.
  uint64_t length_arg(bool one_byte) {
    uint64_t n;
    if (one_byte) {
      n = arg_byte();
    } else {
      int32_t len = arg<int32_t>();
      if (len < 0) fail(std::string(op_name(op_)) + " has a negative length " + std::to_string(len));
      n = static_cast<uint64_t>(len);
    }
    in_.length_ok(n, op_at_, op_);
    return n;
  }

  Value* make(Kind k) { return arena_->make(k); }
  // Immutable leaves (None, bools, small ints, the empty tuple) are made once per stream and
  // shared, as CPython shares them; Arena::size() still counts every use.
  Value* shared(Value*& slot, Kind k) {
    if (!slot) {
      ++cache_fills_;
      return slot = make(k);
    }
    arena_->count_shared();
    return slot;
  }
  Value* make_int(int64_t v) {
    if (v >= kSmallIntMin && v < kSmallIntEnd) {
      if (small_ints_.empty()) small_ints_.resize(kSmallIntEnd - kSmallIntMin, nullptr);
      Value*& slot = small_ints_[static_cast<size_t>(v - kSmallIntMin)];
      if (!slot) {
        ++cache_fills_;
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

  // Every shrink of the stack goes through here, so a compaction window knows whether the slot
  // of its instance was ever popped.
  void cut(size_t n) {
    stack_.resize(n);
    if (n < window_low_) window_low_ = n;
  }
  // A container made before the open window's mark is changed: what the window made may now be
  // reachable from it, so the window cannot be freed.
  void touch(const Value* target) {
    if (window_ && !arena_->made_since(window_mark_, target)) window_dirty_ = true;
  }
  void open_window(Value* callable);
  void close_window(Value* obj);

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
    cut(stack_.size() - 1);
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
  // APPENDS / ADDITEMS / SETITEMS: the values above the last MARK, off the stack (in scratch_, valid
  // until the next call), so that the container they go into is the top again.
  std::vector<Value*>& take_above_mark() {
    size_t base = pop_mark();
    scratch_.assign(from(base), from(base) + above(base));
    cut(base);
    return scratch_;
  }
  // Replaces the stack entries from `base` up with one sequence of them.
  void push_seq(Kind k, size_t base) {
    Value* v = make_seq(k, from(base), above(base));
    cut(base);
    push(v);
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
    // Indices at most 65536 past the number of entries stored: the memo's table stays within
    // 8 bytes per stored entry (+ 512 KiB) however a stream spreads its indices out.
    if (idx >= limits_.max_memo || idx > memo_count_ + 65536 || idx > input_len_)
      fail(std::string("memo index ") + std::to_string(idx) + " is out of range (" + op_name(op_) + ")");
    if (idx >= memo_.size()) memo_.resize(idx + 1, nullptr);
    if (!memo_[idx]) ++memo_count_;
    memo_[idx] = v;
    if (window_) window_memo_.push_back(idx);
  }
  Value* memo_get(uint64_t idx) {
    if (idx >= memo_.size() || !memo_[idx])
      fail(std::string("memo index ") + std::to_string(idx) + " was never stored (" + op_name(op_) + ")");
    if (memo_[idx] == &evicted_) throw CompactionConflict();
    return memo_[idx];
  }

  uint64_t parse_index(const std::string& line) {
    uint64_t v = 0;
    auto r = std::from_chars(line.data(), line.data() + line.size(), v);
    if (r.ec != std::errc() || r.ptr != line.data() + line.size())
      fail(std::string(op_name(op_)) + " argument '" + line.substr(0, 40) + "' is not a memo index");
    return v;
  }

  // GET / PUT carry their memo index as a text line, BINGET / BINPUT as a byte, LONG_BINGET /
  // LONG_BINPUT as a u32.
  uint64_t memo_index() {
    if (op_ == Op::GET || op_ == Op::PUT) return parse_index(in_.line(limits_.max_line, op_at_, op_));
    if (op_ == Op::BINGET || op_ == Op::BINPUT) return arg_byte();
    return arg<uint32_t>();
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
  std::deque<Value*> memo_;  // chunked: growing it never copies (no 3x peak of a vector's regrowth)
  size_t memo_count_ = 0;
  std::unordered_map<std::string, Value*> globals_;
  uint64_t op_at_ = 0;
  Op op_{};

  // Compaction (Limits::compactor): at most one window open, from the making of a wanted
  // instance to its BUILD.
  bool window_ = false;
  bool window_dirty_ = false;
  Arena::Mark window_mark_{};
  size_t window_slot_ = 0;        // the stack index the instance was pushed at
  size_t window_low_ = SIZE_MAX;  // the lowest stack size since the window opened
  uint64_t window_fills_ = 0;
  const Value* window_obj_ = nullptr;
  std::vector<uint64_t> window_memo_;  // memo indices stored since the window opened
  uint64_t cache_fills_ = 0;           // cached leaves and globals made (they outlive any window)
  static inline Value evicted_{};      // memo entry of a freed part of a compacted instance
};

}  // namespace nemofs::pickle::detail
