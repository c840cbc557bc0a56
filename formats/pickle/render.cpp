// to_json: the rendering contract of pickle.h's header comment.
#include <charconv>
#include <cmath>
#include <string>
#include <unordered_map>
#include <unordered_set>

#include "formats/core/errors.h"
#include "formats/pickle/internal.h"
#include "formats/pickle/pickle.h"

namespace nemofs::pickle {
namespace {

using detail::kFmt;
using detail::kind_name;

uint64_t sat_add(uint64_t a, uint64_t b) { return a > UINT64_MAX - b ? UINT64_MAX : a + b; }

// What a value's rendering will cost, found by walking it the way Renderer does without building
// anything: nodes (one per rendered value, shared references counted each time they are reached,
// a cycle's back reference as one) and text bytes. `fits` stops as soon as a limit is passed, so
// it costs at most the limit in time and only the walk's path in memory; `total` counts
// everything, memoizing each container's count (only for a value that did not fit).
class Sizer {
 public:
  Sizer(const RenderHook& hook, uint32_t max_depth) : hook_(hook), max_depth_(max_depth) {}

  bool fits(const Value& v, uint64_t max_nodes, uint64_t max_text) {
    max_nodes_ = max_nodes;
    max_text_ = max_text;
    nodes_ = text_ = 0;
    memo_ = nullptr;
    walk(v, 0);
    return nodes_ <= max_nodes_ && text_ <= max_text_;
  }
  uint64_t total(const Value& v) {
    max_nodes_ = max_text_ = UINT64_MAX;
    std::unordered_map<const Value*, uint64_t> memo;
    memo_ = &memo;
    return count(v, 0);
  }

 private:
  bool over() const { return nodes_ > max_nodes_ || text_ > max_text_; }
  static uint64_t text_of(const Value& v) {
    switch (v.kind) {
      case Kind::Str:
      case Kind::BigInt: return v.str.size();
      case Kind::Bytes: return (v.str.size() + 2) / 3 * 4;
      default: return 0;
    }
  }
  // Calls f(child) for each value render() reaches from v (in render's order, keys included).
  template <class F>
  bool children(const Value& v, F&& f) {
    if (hook_ && hook_(v)) return false;
    if (v.is(Kind::Object)) {
      OmegaConfKind k = omegaconf_kind(v);
      if (k != OmegaConfKind::None) {
        const Value& p = *omegaconf_payload(v);
        if (k == OmegaConfKind::Node && enum_member_name(p)) return true;
        if (k == OmegaConfKind::Node || p.is(Kind::None) || p.is(Kind::Str)) return f(p), true;
        if ((k == OmegaConfKind::ListConfig && p.is(Kind::List)) || (k == OmegaConfKind::DictConfig && p.is(Kind::Dict))) {
          for (const Value* x : p.items) f(*x);
          for (const auto& [key, x] : p.entries) f(*key), f(*x);
          return true;
        }
      }
      if (v.qualified_name().empty() && v.cls) f(*v.cls);
      for (const Value* x : v.items) f(*x);
      if (v.kwargs()) f(*v.kwargs());
      if (v.state) f(*v.state);
      for (const Value* x : v.listitems()) f(*x);
      for (const auto& [key, x] : v.entries) f(*key), f(*x);
      return true;
    }
    if (v.is(Kind::PersistentId) && v.cls) f(*v.cls);
    for (const Value* x : v.items) f(*x);
    for (const auto& [key, x] : v.entries) f(*key), f(*x);
    return true;
  }
  void walk(const Value& v, uint32_t depth) {
    if (over()) return;
    ++nodes_;
    text_ += text_of(v);
    if (depth > max_depth_ || v.kind < Kind::List) return;
    if (!on_path_.insert(&v).second) return;
    children(v, [&](const Value& x) {
      if (!over()) walk(x, depth + 1);
    });
    on_path_.erase(&v);
  }
  uint64_t count(const Value& v, uint32_t depth) {
    if (depth > max_depth_ || v.kind < Kind::List) return 1;
    if (auto it = memo_->find(&v); it != memo_->end()) return it->second;
    if (!on_path_.insert(&v).second) return 1;
    uint64_t n = 1;
    children(v, [&](const Value& x) { n = sat_add(n, count(x, depth + 1)); });
    on_path_.erase(&v);
    (*memo_)[&v] = n;
    return n;
  }

  const RenderHook& hook_;
  uint32_t max_depth_;
  uint64_t max_nodes_ = 0, max_text_ = 0, nodes_ = 0, text_ = 0;
  std::unordered_set<const Value*> on_path_;
  std::unordered_map<const Value*, uint64_t>* memo_ = nullptr;
};

class Renderer {
 public:
  Renderer(RenderBudget& b, const RenderHook& hook) : budget_(b), hook_(hook) {}

  // A whole value: rendered when it fits the budget, else the placeholder.
  nlohmann::ordered_json top(const Value& v) {
    Sizer sz(hook_, budget_.max_depth);
    if (sz.fits(v, std::min(budget_.value_nodes, budget_.nodes_left), budget_.value_text)) return render(v, 0);
    std::string what = v.qualified_name();
    if (what.empty()) what = kind_name(v.kind);
    const uint64_t n = sz.total(v);
    ++budget_.placeholders;
    budget_.last_placeholder = what + ", " + std::to_string(n) + " nodes";
    if (budget_.nodes_left > 0) --budget_.nodes_left;
    return nlohmann::ordered_json{{"__too_large__", {{"class", what}, {"nodes", n}}}};
  }

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

  // OmegaConf.to_container(cfg, resolve=False): see omegaconf.cpp.
  std::optional<nlohmann::ordered_json> omegaconf(const Value& v, uint32_t depth) {
    OmegaConfKind k = omegaconf_kind(v);
    if (k == OmegaConfKind::None) return std::nullopt;
    const Value& p = *omegaconf_payload(v);
    if (k == OmegaConfKind::Node) {
      if (auto name = enum_member_name(p)) return nlohmann::ordered_json(*name);
      return render(p, depth + 1);
    }
    if (p.is(Kind::None) || p.is(Kind::Str)) return render(p, depth + 1);
    if (k == OmegaConfKind::ListConfig && p.is(Kind::List)) return array(p.items, depth);
    if (k == OmegaConfKind::DictConfig && p.is(Kind::Dict)) {
      auto o = nlohmann::ordered_json::object();
      for (const auto& [key, x] : p.entries) {
        auto name = enum_member_name(*key);
        o[name ? *name : this->key(*key, depth + 1)] = render(*x, depth + 1);
      }
      return o;
    }
    return std::nullopt;
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
        if (auto j = omegaconf(v, depth)) return std::move(*j);
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

nlohmann::ordered_json to_json(const Value& v, RenderBudget& budget, const RenderHook& hook) {
  Renderer r(budget, hook);
  return r.top(v);
}

nlohmann::ordered_json to_json(const Value& v) {
  RenderBudget b;
  return to_json(v, b);
}

std::string key_text(const Value& key, RenderBudget& budget) {
  RenderHook none;
  Renderer r(budget, none);
  switch (key.kind) {
    case Kind::Str:
    case Kind::Int:
    case Kind::BigInt:
    case Kind::Bool:
    case Kind::None: return r.key(key, 0);
    default: return r.top(key).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  }
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
