#include "formats/pickle/machine.h"

#include <algorithm>
#include <charconv>
#include <cstring>

#include "formats/core/utf8.h"

namespace nemofs::pickle {
namespace detail {

Value* Machine::resolve_global(std::string module, std::string name) {
  // One Value per distinct name, as Python has one object per class.
  std::string cache_key = module + '\n' + name;
  if (auto it = globals_.find(cache_key); it != globals_.end()) return it->second;
  ++cache_fills_;
  Value* g = resolve_global_uncached(std::move(module), std::move(name));
  globals_.emplace(std::move(cache_key), g);
  return g;
}

Value* Machine::resolve_global_uncached(std::string module, std::string name) {
  remap_python2_name(module, name);
  Value* g = make(Kind::Global);
  Allowed a = look_up(module, name);
  g->tag = a.tag;
  if (a.dtype) extra(g).dtype = Text(a.dtype);
  g->str = arena_->text(module);
  extra(g).name = arena_->text(name);
  return g;
}

void Machine::add_items(Value* target, Value* const* items, size_t n) {
  Seq<Value*>* dst = nullptr;
  if (op_ == Op::ADDITEMS) {
    if (target->is(Kind::Set)) dst = &target->items;
  } else if (target->is(Kind::List)) {
    dst = &target->items;
  }
  touch(target);
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
  touch(target);
  for (size_t k = 0; k < n; ++k) nest(target, kv[k]);
  static_assert(sizeof(Item) == 2 * sizeof(Value*));
  // Key/value pairs on the stack have the layout of Items; copied one by one to stay portable.
  if (dst->size() + n / 2 > UINT32_MAX) fail("container has more than 4294967295 items");
  for (size_t k = 0; k < n; k += 2) {
    Item e(kv[k], kv[k + 1]);
    append(*dst, &e, 1);
  }
}

void Machine::open_window(Value* callable) {
  window_ = false;
  if (!limits_.compactor || !callable->is(Kind::Global)) return;
  if (!limits_.compactor->wants(*callable)) return;
  window_ = true;
  window_dirty_ = false;
  window_mark_ = arena_->mark();
  window_slot_ = stack_.size();  // where the caller pushes the instance
  window_low_ = SIZE_MAX;
  window_fills_ = cache_fills_;
  window_memo_.clear();
  window_obj_ = nullptr;  // set by the caller once the instance is made
}

void Machine::close_window(Value* obj) {
  window_ = false;
  if (window_dirty_ || window_fills_ != cache_fills_ || !arena_->can_roll_back(window_mark_) ||
      window_low_ < window_slot_ + 1 || stack_.size() != window_slot_ + 1 || stack_.back() != obj)
    return;
  const int64_t id = limits_.compactor->compact(*obj);
  if (id < 0) return;
  // Memo entries stored since the mark: the instance itself, strings and numbers (copied), or a
  // part that cannot be rebuilt (evicted). Copied before the rollback lets new values overwrite.
  struct Leaf {
    uint64_t idx;
    Value v;
    std::string text;
  };
  std::vector<Leaf> leaves;
  std::vector<uint64_t> instance;
  for (uint64_t idx : window_memo_) {
    Value* v = memo_[idx];
    if (!v || v == &evicted_ || !arena_->made_since(window_mark_, v)) continue;
    if (v == obj) {
      instance.push_back(idx);
    } else if (!v->extra && (v->is(Kind::Str) || v->is(Kind::Bytes) || v->is(Kind::BigInt) || v->is(Kind::Int) ||
                             v->is(Kind::Float))) {
      leaves.push_back(Leaf{idx, *v, std::string(v->str)});
    } else {
      memo_[idx] = &evicted_;
    }
  }
  Value* cls = obj->cls;
  const uint32_t depth = obj->depth;
  arena_->rollback(window_mark_);
  Value* r = make(Kind::Object);
  r->cls = cls;
  r->tag = Tag::Compacted;
  r->i = id;
  r->depth = depth;
  stack_.back() = r;
  for (uint64_t idx : instance) memo_[idx] = r;
  for (Leaf& l : leaves) {
    Value* v = make(l.v.kind);
    *v = l.v;
    v->str = arena_->text(l.text);
    memo_[l.idx] = v;
  }
}

Document Machine::run() {
  if (limits_.compactor) {
    // The shared leaves are made up front: one first made inside a compaction window would
    // otherwise keep that window's values (a cached leaf outlives every window).
    for (int64_t v = kSmallIntMin; v < kSmallIntEnd; ++v) make_int(v);
    shared(none_, Kind::None);
    make_bool(true);
    make_bool(false);
    shared(empty_tuple_, Kind::Tuple);
  }
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
        if (stack_.size() > frame_base()) cut(stack_.size() - 1);
        else cut(pop_mark());
        break;
      case Op::POP_MARK:
        cut(pop_mark());
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
      case Op::BININT:
      case Op::BININT1:
      case Op::BININT2: {
        int64_t v = op_ == Op::BININT ? arg<int32_t>() : op_ == Op::BININT1 ? arg_byte() : arg<uint16_t>();
        push(make_int(v));
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
        uint64_t n = length_arg(op_ == Op::LONG1);
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
        uint64_t n = length_arg(op_ == Op::SHORT_BINSTRING);
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
      case Op::TUPLE:
      case Op::FROZENSET: {
        Kind k = op_ == Op::LIST ? Kind::List : op_ == Op::TUPLE ? Kind::Tuple : Kind::FrozenSet;
        push_seq(k, pop_mark());
        break;
      }
      case Op::TUPLE1:
      case Op::TUPLE2:
      case Op::TUPLE3: {
        size_t n = op_ == Op::TUPLE1 ? 1 : op_ == Op::TUPLE2 ? 2 : 3;
        need_stack(n);
        push_seq(Kind::Tuple, stack_.size() - n);
        break;
      }
      case Op::DICT: {
        size_t base = pop_mark();
        Value* d = make(Kind::Dict);
        set_items(d, from(base), above(base));
        cut(base);
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
        std::vector<Value*>& items = take_above_mark();
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
        std::vector<Value*>& kv = take_above_mark();
        set_items(top(), kv.data(), kv.size());
        break;
      }
      case Op::GET:
      case Op::BINGET:
      case Op::LONG_BINGET:
        push(memo_get(memo_index()));
        break;
      case Op::PUT:
      case Op::BINPUT:
      case Op::LONG_BINPUT:
        memo_put(memo_index());
        break;
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
      case Op::REDUCE:
      case Op::NEWOBJ: {
        need_stack(2);
        Value* args = pop();
        Value* callable = pop();
        push(call(callable, args_tuple(args), nullptr, op_ == Op::NEWOBJ));
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
        touch(obj);
        nest(obj, state);
        obj->state = state;
        if (window_ && obj == window_obj_) close_window(obj);
        break;
      }
      case Op::INST: {
        std::string module = in_.line(limits_.max_line, op_at_, op_);
        std::string name = in_.line(limits_.max_line, op_at_, op_);
        size_t base = pop_mark();
        Value* cls = resolve_global(std::move(module), std::move(name));
        Value* args = make_seq(Kind::Tuple, from(base), above(base));
        cut(base);
        push(call(cls, args, nullptr, false));
        break;
      }
      case Op::OBJ: {
        size_t base = pop_mark();
        if (above(base) == 0) fail("OBJ needs a class after its MARK");
        Value* cls = stack_[base];
        Value* args = make_seq(Kind::Tuple, from(base) + 1, above(base) - 1);
        cut(base);
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

}  // namespace detail

Document unpickle(const ByteSource& src, uint64_t offset, const Limits& limits) {
  detail::Machine m(src, offset, limits);
  return m.run();
}

Document unpickle(std::string_view bytes, const Limits& limits) {
  MemorySource src{std::string(bytes), "<pickle>"};
  return unpickle(src, 0, limits);
}

}  // namespace nemofs::pickle
