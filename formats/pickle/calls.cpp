// What REDUCE, NEWOBJ(_EX), INST and OBJ build: plain data for the allow-listed data constructors,
// an inert Object for every other call.
#include <cctype>
#include <string>
#include <vector>

#include "formats/core/utf8.h"
#include "formats/pickle/machine.h"

namespace nemofs::pickle::detail {

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
    if (limits_.compactor) open_window(callable);
    Value* o = make(Kind::Object);
    if (window_) window_obj_ = o;
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

}  // namespace nemofs::pickle::detail
