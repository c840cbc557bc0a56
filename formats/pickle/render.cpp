// to_json: the rendering contract of pickle.h's header comment.
#include <charconv>
#include <cmath>
#include <string>
#include <unordered_set>

#include "formats/core/errors.h"
#include "formats/pickle/internal.h"
#include "formats/pickle/pickle.h"

namespace nemofs::pickle {
namespace {

using detail::kFmt;
using detail::kind_name;

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
