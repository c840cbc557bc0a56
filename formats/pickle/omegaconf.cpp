// OmegaConf configs (DictConfig, ListConfig and their value nodes) as the plain data
// OmegaConf.to_container(cfg, resolve=False) gives, and as the YAML OmegaConf.to_yaml writes.
//
// How OmegaConf 2.x pickles (BaseContainer/Node.__getstate__; NEWOBJ + BUILD): an Object of class
// omegaconf.dictconfig.DictConfig / omegaconf.listconfig.ListConfig whose BUILD state is a dict
// {"_metadata": ContainerMetadata, "_parent": ..., "_content": C}, C being a dict key -> node
// (DictConfig), a list of nodes (ListConfig), None (a None config), or a str ("???" missing, or
// an interpolation "${...}"); a value node (omegaconf.nodes.AnyNode, StringNode, IntegerNode,
// FloatNode, BooleanNode, EnumNode, BytesNode, PathNode, ValueNode) has state
// {"_metadata": Metadata, "_parent": ..., "_val": V}. Enum members pickle (Python >= 3.11) as
// getattr(EnumClass, "NAME"), which the machine keeps as the Global "module.EnumClass.NAME":
// to_yaml (enum_to_str=True) writes NAME, and so does the JSON. _metadata and _parent are not
// shown (to_container drops them). Nothing is resolved: interpolations stay strings.
//
// YAML: a port of the PyYAML 6 emitter (emitter.py: block mappings and sequences, empty ones as
// {} / [], scalar style choice, plain/single/double-quoted writers with folding at 80 columns)
// with yaml.Dumper's representers (None -> null, bool, int, float repr lower-cased with ".0"
// before a bare exponent, .nan/.inf) and OmegaConfDumper's str representer (single quotes for a
// str that Python's bool/int()/float() would read as a bool or number). Values OmegaConf would
// write with a Python tag (bytes, paths, unknown objects) make to_yaml return nullopt.
#include <algorithm>
#include <charconv>
#include <cstdio>
#include <cmath>
#include <regex>
#include <unordered_set>

#include "formats/core/errors.h"
#include "formats/core/utf8.h"
#include "formats/pickle/internal.h"
#include "formats/pickle/pickle.h"

namespace nemofs::pickle {

namespace {

bool state_has(const Value& v, std::string_view field) {
  if (!v.state || !v.state->is(Kind::Dict)) return false;
  return v.state->get(field) != nullptr;
}

}  // namespace

OmegaConfKind omegaconf_kind(const Value& v) {
  if (!v.is(Kind::Object) || !v.cls || !v.cls->is(Kind::Global)) return OmegaConfKind::None;
  const Value& c = *v.cls;
  std::string_view m = c.str, n = c.name();
  if (m == "omegaconf.dictconfig" && n == "DictConfig")
    return state_has(v, "_content") ? OmegaConfKind::DictConfig : OmegaConfKind::None;
  if (m == "omegaconf.listconfig" && n == "ListConfig")
    return state_has(v, "_content") ? OmegaConfKind::ListConfig : OmegaConfKind::None;
  if (m == "omegaconf.nodes" &&
      (n == "AnyNode" || n == "StringNode" || n == "IntegerNode" || n == "FloatNode" || n == "BooleanNode" ||
       n == "EnumNode" || n == "BytesNode" || n == "PathNode" || n == "ValueNode"))
    return state_has(v, "_val") ? OmegaConfKind::Node : OmegaConfKind::None;
  return OmegaConfKind::None;
}

const Value* omegaconf_payload(const Value& v) {
  switch (omegaconf_kind(v)) {
    case OmegaConfKind::DictConfig:
    case OmegaConfKind::ListConfig: return v.state->get("_content");
    case OmegaConfKind::Node: return v.state->get("_val");
    case OmegaConfKind::None: break;
  }
  return nullptr;
}

std::optional<std::string> enum_member_name(const Value& v) {
  if (!v.is(Kind::Global)) return std::nullopt;
  std::string_view n = v.name();
  size_t dot = n.rfind('.');
  if (dot == std::string_view::npos || dot + 1 == n.size()) return std::nullopt;
  return std::string(n.substr(dot + 1));
}

namespace {

// ------------------------------------------------------------------------------------------------
// The data to_container(cfg, resolve=False, enum_to_str=True) gives, as a small tree.

struct YEntry;
struct YNode {
  enum class T : uint8_t { Null, Bool, Int, Float, Str, Map, Seq } t = T::Null;
  std::string text;  // Int/BigInt: decimal; Float: PyYAML's text; Str: UTF-8; Bool: true/false
  // (A vector of a struct declared here, not of std::pair<YNode, YNode>: pair of an incomplete
  // type is refused by clang with libstdc++.)
  std::vector<YEntry> map;
  std::vector<YNode> seq;
};
struct YEntry {
  YNode first, second;
};

// Python's repr() of a finite double, as PyYAML's represent_float writes it (lower case, ".0"
// inserted before a bare exponent).
std::string py_float(double d) {
  if (d == 0) return std::signbit(d) ? "-0.0" : "0.0";
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::scientific);
  std::string s(buf, r.ptr);
  bool neg = s[0] == '-';
  if (neg) s.erase(0, 1);
  size_t e = s.find('e');
  std::string digits = s.substr(0, e);
  int exp = std::stoi(s.substr(e + 1));
  digits.erase(std::remove(digits.begin(), digits.end(), '.'), digits.end());
  while (digits.size() > 1 && digits.back() == '0') digits.pop_back();
  int decpt = exp + 1;
  std::string out;
  if (decpt > -4 && decpt <= 16) {
    if (decpt <= 0) {
      out = "0." + std::string(static_cast<size_t>(-decpt), '0') + digits;
    } else if (static_cast<size_t>(decpt) >= digits.size()) {
      out = digits + std::string(static_cast<size_t>(decpt) - digits.size(), '0') + ".0";
    } else {
      out = digits.substr(0, static_cast<size_t>(decpt)) + "." + digits.substr(static_cast<size_t>(decpt));
    }
  } else {
    out = digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    else out += ".0";  // PyYAML: '.' not in value and 'e' in value -> '.0e'
    int x = decpt - 1;
    char eb[16];
    std::snprintf(eb, sizeof eb, "e%c%02d", x < 0 ? '-' : '+', x < 0 ? -x : x);
    out += eb;
  }
  return neg ? "-" + out : out;
}

class Plain {
 public:
  explicit Plain(RenderBudget& b) : budget_(b) {}

  // false: something to_yaml would not write as plain YAML.
  bool convert(const Value& v, YNode& out, uint32_t depth, bool in_node = false) {
    if (budget_.nodes_left == 0)
      throw FormatError(detail::kFmt, "value too large to render (shared references expand beyond the node budget)");
    --budget_.nodes_left;
    if (depth > budget_.max_depth) return false;
    using T = YNode::T;
    if (OmegaConfKind k = omegaconf_kind(v); k != OmegaConfKind::None) {
      const Value* p = omegaconf_payload(v);
      if (k == OmegaConfKind::Node) return convert(*p, out, depth + 1, true);
      if (!on_path_.insert(&v).second) return false;
      bool ok = false;
      if (p->is(Kind::None) || p->is(Kind::Str)) ok = convert(*p, out, depth + 1);
      else if (k == OmegaConfKind::DictConfig && p->is(Kind::Dict)) ok = map(p->entries, out, depth, true);
      else if (k == OmegaConfKind::ListConfig && p->is(Kind::List)) ok = seq(p->items, out, depth);
      on_path_.erase(&v);
      return ok;
    }
    switch (v.kind) {
      case Kind::None: out.t = T::Null; return true;
      case Kind::Bool: out.t = T::Bool; out.text = v.b ? "true" : "false"; return true;
      case Kind::Int: out.t = T::Int; out.text = std::to_string(v.i); return true;
      case Kind::BigInt: out.t = T::Int; out.text = v.str.str(); return true;
      case Kind::Float:
        out.t = T::Float;
        out.text = std::isnan(v.f) ? ".nan" : std::isinf(v.f) ? (v.f > 0 ? ".inf" : "-.inf") : py_float(v.f);
        return true;
      case Kind::Str: out.t = T::Str; out.text = v.str.str(); return true;
      case Kind::Global:
        if (!in_node) return false;
        if (auto n = enum_member_name(v)) {
          out.t = T::Str;
          out.text = *n;
          return true;
        }
        return false;
      case Kind::Dict:
      case Kind::List:
      case Kind::Tuple: {
        if (!on_path_.insert(&v).second) return false;
        bool ok = v.is(Kind::Dict) ? map(v.entries, out, depth, false) : seq(v.items, out, depth);
        on_path_.erase(&v);
        return ok;
      }
      default: return false;
    }
  }

 private:
  bool map(const Seq<Item>& entries, YNode& out, uint32_t depth, bool config) {
    out.t = YNode::T::Map;
    for (const auto& [k, x] : entries) {
      YNode key, val;
      if (k->is(Kind::Global) && config) {
        auto n = enum_member_name(*k);
        if (!n) return false;
        key.t = YNode::T::Str;
        key.text = *n;
      } else if (k->kind > Kind::Str || !convert(*k, key, depth + 1)) {
        return false;
      }
      if (!convert(*x, val, depth + 1)) return false;
      // A later equal key replaces the earlier one in a Python dict.
      bool replaced = false;
      for (auto& e : out.map)
        if (e.first.t == key.t && e.first.text == key.text) {
          e.second = std::move(val);
          replaced = true;
          break;
        }
      if (!replaced) out.map.push_back(YEntry{std::move(key), std::move(val)});
    }
    return true;
  }
  bool seq(const Seq<Value*>& items, YNode& out, uint32_t depth) {
    out.t = YNode::T::Seq;
    for (const Value* x : items) {
      out.seq.emplace_back();
      if (!convert(*x, out.seq.back(), depth + 1)) return false;
    }
    return true;
  }

  RenderBudget& budget_;
  std::unordered_set<const Value*> on_path_;
};

// ------------------------------------------------------------------------------------------------
// Python's str -> number tests used by OmegaConfDumper.str_representer.

bool py_space(uint32_t c) {
  return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f) || c == 0x85 || c == 0xa0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f ||
         c == 0x205f || c == 0x3000;
}

std::u32string py_strip(const std::u32string& s) {
  size_t a = 0, b = s.size();
  while (a < b && py_space(s[a])) ++a;
  while (b > a && py_space(s[b - 1])) --b;
  return s.substr(a, b - a);
}

bool dig(uint32_t c) { return c >= '0' && c <= '9'; }

// digits with single underscores between them, starting at i; advances i; false if none.
bool digit_run(const std::u32string& s, size_t& i) {
  if (i >= s.size() || !dig(s[i])) return false;
  while (i < s.size()) {
    if (dig(s[i])) ++i;
    else if (s[i] == '_' && i + 1 < s.size() && dig(s[i + 1])) i += 2;
    else break;
  }
  return true;
}

bool py_is_int(const std::u32string& raw) {
  std::u32string s = py_strip(raw);
  size_t i = 0;
  if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
  return digit_run(s, i) && i == s.size();
}

bool py_is_float(const std::u32string& raw) {
  std::u32string s = py_strip(raw);
  size_t i = 0;
  if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
  std::string rest;
  for (size_t k = i; k < s.size(); ++k) rest += s[k] < 128 ? static_cast<char>(std::tolower(static_cast<int>(s[k]))) : '\x01';
  if (rest == "inf" || rest == "infinity" || rest == "nan") return true;
  bool mant = digit_run(s, i);
  if (i < s.size() && s[i] == '.') {
    ++i;
    mant = digit_run(s, i) || mant;
  }
  if (!mant) return false;
  if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
    ++i;
    if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
    if (!digit_run(s, i)) return false;
  }
  return i == s.size();
}

bool yaml_is_bool(const std::string& s) {
  static const char* kB[] = {"y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "true", "True",
                             "TRUE", "false", "False", "FALSE", "on", "On", "ON", "off", "Off", "OFF"};
  for (const char* b : kB)
    if (s == b) return true;
  return false;
}

// PyYAML's implicit resolvers: would this text, written plain, read back as something else than str?
bool resolves_to_non_str(const std::string& s) {
  static const std::regex kBool("yes|Yes|YES|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF");
  static const std::regex kFloat(
      "[-+]?(?:[0-9][0-9_]*)\\.[0-9_]*(?:[eE][-+][0-9]+)?|\\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?"
      "|[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\\.[0-9_]*|[-+]?\\.(?:inf|Inf|INF)|\\.(?:nan|NaN|NAN)");
  static const std::regex kInt(
      "[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+|[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+");
  static const std::regex kNull("~|null|Null|NULL|");
  static const std::regex kTimestamp(
      "[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]"
      "|[0-9][0-9][0-9][0-9]-[0-9][0-9]?-[0-9][0-9]?(?:[Tt]|[ \\t]+)[0-9][0-9]?:[0-9][0-9]:[0-9][0-9](?:\\.[0-9]*)?"
      "(?:[ \\t]*(?:Z|[-+][0-9][0-9]?(?::[0-9][0-9])?))?");
  if (s.size() > 256) return false;  // none of these can match text that long
  for (const std::regex* r : {&kBool, &kFloat, &kInt, &kNull, &kTimestamp})
    if (std::regex_match(s, *r)) return true;
  return s == "<<" || s == "=";
}

// ------------------------------------------------------------------------------------------------
// The PyYAML emitter, for block collections of scalars.

struct Analysis {
  bool empty = false, multiline = false, allow_block_plain = true, allow_single_quoted = true;
};

bool is_break(uint32_t c) { return c == '\n' || c == 0x85 || c == 0x2028 || c == 0x2029; }
bool is_ws_or_end(uint32_t c) { return c == 0 || c == ' ' || c == '\t' || c == '\r' || is_break(c); }

Analysis analyze(const std::u32string& s) {
  Analysis a;
  if (s.empty()) {
    a.empty = true;
    return a;
  }
  bool block_ind = false, line_breaks = false, special = false;
  bool leading_space = false, leading_break = false, trailing_space = false, trailing_break = false;
  bool break_space = false, space_break = false;
  auto starts = [&](const char* p) { return s.size() >= 3 && s[0] == uint32_t(p[0]) && s[1] == uint32_t(p[1]) && s[2] == uint32_t(p[2]); };
  if (starts("---") || starts("...")) block_ind = true;
  bool preceded_ws = true;
  bool followed_ws = s.size() == 1 || is_ws_or_end(s[1]);
  bool prev_space = false, prev_break = false;
  for (size_t i = 0; i < s.size(); ++i) {
    uint32_t ch = s[i];
    if (i == 0) {
      if (std::u32string_view(U"#,[]{}&*!|>'\"%@`").find(ch) != std::u32string_view::npos) block_ind = true;
      if ((ch == '?' || ch == ':') && followed_ws) block_ind = true;
      if (ch == '-' && followed_ws) block_ind = true;
    } else {
      if (ch == ':' && followed_ws) block_ind = true;
      if (ch == '#' && preceded_ws) block_ind = true;
    }
    if (is_break(ch)) line_breaks = true;
    if (!(ch == '\n' || (ch >= 0x20 && ch <= 0x7e))) {
      bool printable = (ch == 0x85 || (ch >= 0xa0 && ch <= 0xd7ff) || (ch >= 0xe000 && ch <= 0xfffd) ||
                        (ch >= 0x10000 && ch < 0x10ffff)) && ch != 0xfeff;
      if (!printable) special = true;
    }
    if (ch == ' ') {
      if (i == 0) leading_space = true;
      if (i == s.size() - 1) trailing_space = true;
      if (prev_break) break_space = true;
      prev_space = true;
      prev_break = false;
    } else if (is_break(ch)) {
      if (i == 0) leading_break = true;
      if (i == s.size() - 1) trailing_break = true;
      if (prev_space) space_break = true;
      prev_space = false;
      prev_break = true;
    } else {
      prev_space = prev_break = false;
    }
    preceded_ws = is_ws_or_end(ch);
    followed_ws = i + 2 >= s.size() || is_ws_or_end(s[i + 2]);
  }
  if (leading_space || leading_break || trailing_space || trailing_break) a.allow_block_plain = false;
  if (break_space) a.allow_block_plain = a.allow_single_quoted = false;
  if (space_break || special) a.allow_block_plain = a.allow_single_quoted = false;
  if (line_breaks) a.allow_block_plain = false;
  if (block_ind) a.allow_block_plain = false;
  a.multiline = line_breaks;
  return a;
}

class Emitter {
 public:
  std::string out;

  void document(const YNode& root) {
    node(root, false, false);
    write_indent();  // document end
  }

 private:
  static constexpr int kBestIndent = 2, kBestWidth = 80;
  int column_ = 0;
  bool whitespace_ = true, indention_ = true;
  int indent_ = -1;  // None
  std::vector<int> indents_;

  void put(const std::u32string& s) {
    for (uint32_t c : s) append_utf8(out, c);
    column_ += static_cast<int>(s.size());
  }
  void put(std::string_view ascii) {
    out.append(ascii);
    column_ += static_cast<int>(ascii.size());
  }
  void increase_indent(bool flow, bool indentless = false) {
    indents_.push_back(indent_);
    if (indent_ < 0) indent_ = flow ? kBestIndent : 0;
    else if (!indentless) indent_ += kBestIndent;
  }
  void pop_indent() {
    indent_ = indents_.back();
    indents_.pop_back();
  }
  void write_indicator(std::string_view ind, bool need_ws, bool ws = false, bool indention = false) {
    if (!whitespace_ && need_ws) put(" ");
    put(ind);
    whitespace_ = ws;
    indention_ = indention_ && indention;
  }
  void write_line_break() {
    out += '\n';
    whitespace_ = indention_ = true;
    column_ = 0;
  }
  void write_indent() {
    int indent = indent_ < 0 ? 0 : indent_;
    if (!indention_ || column_ > indent || (column_ == indent && !whitespace_)) write_line_break();
    if (column_ < indent) {
      whitespace_ = true;
      out.append(static_cast<size_t>(indent - column_), ' ');
      column_ = indent;
    }
  }

  static std::u32string decode(const std::string& s) {
    std::vector<uint32_t> cps;
    decode_utf8(s, Utf8Check::WellFormed, cps);  // checked before (to_yaml)
    return std::u32string(cps.begin(), cps.end());
  }

  // Scalar text and the style OmegaConf's representers ask for: str with quotes when it looks
  // like a bool or a number; every other scalar plain (implicit).
  void scalar(const YNode& n, bool simple_key) {
    increase_indent(true);
    std::u32string text = decode(n.text);
    if (n.t == YNode::T::Null) text = U"null";
    Analysis a = analyze(text);
    char style;
    bool quoted_request = false, implicit_plain = true;
    if (n.t == YNode::T::Str || n.t == YNode::T::Null) {
      if (n.t == YNode::T::Str) {
        quoted_request = yaml_is_bool(n.text) || py_is_int(text) || py_is_float(text);
        implicit_plain = !resolves_to_non_str(n.text);
      }
    }
    style = '"';
    if (!quoted_request && implicit_plain && !(simple_key && (a.empty || a.multiline)) && a.allow_block_plain)
      style = 0;
    else if (a.allow_single_quoted && !(simple_key && a.multiline))
      style = '\'';
    bool split = !simple_key;
    if (style == 0) write_plain(text, split);
    else if (style == '\'') write_single_quoted(text, split);
    else write_double_quoted(text, split);
    pop_indent();
  }

  void node(const YNode& n, bool mapping_ctx, bool simple_key) {
    using T = YNode::T;
    if (n.t == T::Seq) {
      if (n.seq.empty()) {
        write_indicator("[", true, true);
        increase_indent(true);
        pop_indent();
        write_indicator("]", false);
        return;
      }
      increase_indent(false, mapping_ctx && !indention_);
      for (const YNode& x : n.seq) {
        write_indent();
        write_indicator("-", true, false, true);
        node(x, false, false);
      }
      pop_indent();
      return;
    }
    if (n.t == T::Map) {
      if (n.map.empty()) {
        write_indicator("{", true, true);
        increase_indent(true);
        pop_indent();
        write_indicator("}", false);
        return;
      }
      increase_indent(false);
      for (const auto& [k, v] : n.map) {
        write_indent();
        if (simple_key_ok(k)) {
          node(k, true, true);
          write_indicator(":", false);
        } else {
          write_indicator("?", true, false, true);
          node(k, true, false);
          write_indent();
          write_indicator(":", true, false, true);
        }
        node(v, true, false);
      }
      pop_indent();
      return;
    }
    scalar(n, simple_key);
  }

  bool simple_key_ok(const YNode& k) {
    if (k.t == YNode::T::Map || k.t == YNode::T::Seq) return false;  // keys are scalars here
    std::u32string text = k.t == YNode::T::Null ? U"null" : decode(k.text);
    Analysis a = analyze(text);
    return text.size() < 128 && !a.empty && !a.multiline;
  }

  void write_plain(const std::u32string& text, bool split) {
    if (text.empty()) return;
    if (!whitespace_) put(" ");
    whitespace_ = indention_ = false;
    bool spaces = false, breaks = false;
    size_t start = 0, end = 0;
    while (end <= text.size()) {
      uint32_t ch = end < text.size() ? text[end] : 0;
      bool none = end == text.size();
      if (spaces) {
        if (none || ch != ' ') {
          if (start + 1 == end && column_ > kBestWidth && split) {
            write_indent();
            whitespace_ = indention_ = false;
          } else {
            put(text.substr(start, end - start));
          }
          start = end;
        }
      } else if (breaks) {
        if (none || !is_break(ch)) {
          if (text[start] == '\n') write_line_break();
          for (size_t k = start; k < end; ++k) {
            if (text[k] == '\n') write_line_break();
            else {
              std::u32string br(1, text[k]);
              for (uint32_t c : br) append_utf8(out, c);
              whitespace_ = indention_ = true;
              column_ = 0;
            }
          }
          write_indent();
          whitespace_ = indention_ = false;
          start = end;
        }
      } else {
        if (none || ch == ' ' || is_break(ch)) {
          put(text.substr(start, end - start));
          start = end;
        }
      }
      if (!none) {
        spaces = ch == ' ';
        breaks = is_break(ch);
      }
      ++end;
    }
  }

  void write_single_quoted(const std::u32string& text, bool split) {
    write_indicator("'", true);
    bool spaces = false, breaks = false;
    size_t start = 0, end = 0;
    while (end <= text.size()) {
      bool none = end == text.size();
      uint32_t ch = none ? 0 : text[end];
      if (spaces) {
        if (none || ch != ' ') {
          if (start + 1 == end && column_ > kBestWidth && split && start != 0 && end != text.size())
            write_indent();
          else
            put(text.substr(start, end - start));
          start = end;
        }
      } else if (breaks) {
        if (none || !is_break(ch)) {
          if (text[start] == '\n') write_line_break();
          for (size_t k = start; k < end; ++k) {
            if (text[k] == '\n') {
              write_line_break();
            } else {
              append_utf8(out, text[k]);
              whitespace_ = indention_ = true;
              column_ = 0;
            }
          }
          write_indent();
          start = end;
        }
      } else {
        if (none || ch == ' ' || is_break(ch) || ch == '\'') {
          if (start < end) {
            put(text.substr(start, end - start));
            start = end;
          }
        }
      }
      if (!none && ch == '\'') {
        put("''");
        start = end + 1;
      }
      if (!none) {
        spaces = ch == ' ';
        breaks = is_break(ch);
      }
      ++end;
    }
    write_indicator("'", false);
  }

  void write_double_quoted(const std::u32string& text, bool split) {
    write_indicator("\"", true);
    size_t start = 0, end = 0;
    while (end <= text.size()) {
      bool none = end == text.size();
      uint32_t ch = none ? 0 : text[end];
      bool plain_ch = !none && ch != '"' && ch != '\\' && ch != 0x85 && ch != 0x2028 && ch != 0x2029 &&
                      ch != 0xfeff &&
                      ((ch >= 0x20 && ch <= 0x7e) || (ch >= 0xa0 && ch <= 0xd7ff) || (ch >= 0xe000 && ch <= 0xfffd));
      if (none || !plain_ch) {
        if (start < end) {
          put(text.substr(start, end - start));
          start = end;
        }
        if (!none) {
          std::string esc;
          switch (ch) {
            case 0: esc = "\\0"; break;
            case 7: esc = "\\a"; break;
            case 8: esc = "\\b"; break;
            case 9: esc = "\\t"; break;
            case 10: esc = "\\n"; break;
            case 11: esc = "\\v"; break;
            case 12: esc = "\\f"; break;
            case 13: esc = "\\r"; break;
            case 27: esc = "\\e"; break;
            case '"': esc = "\\\""; break;
            case '\\': esc = "\\\\"; break;
            case 0x85: esc = "\\N"; break;
            case 0xa0: esc = "\\_"; break;
            case 0x2028: esc = "\\L"; break;
            case 0x2029: esc = "\\P"; break;
            default: {
              char b[16];
              if (ch <= 0xff) std::snprintf(b, sizeof b, "\\x%02X", ch);
              else if (ch <= 0xffff) std::snprintf(b, sizeof b, "\\u%04X", ch);
              else std::snprintf(b, sizeof b, "\\U%08X", ch);
              esc = b;
            }
          }
          put(esc);
          start = end + 1;
        }
      }
      if (end > 0 && end + 1 < text.size() && (ch == ' ' || start >= end) &&
          column_ + static_cast<int>(end - start) > kBestWidth && split) {
        std::u32string data = text.substr(start, end - start) + U"\\";
        if (start < end) start = end;
        put(data);
        write_indent();
        whitespace_ = indention_ = false;
        if (text[start] == ' ') put("\\");
      }
      ++end;
    }
    write_indicator("\"", false);
  }
};

bool all_utf8(const YNode& n) {
  if (n.t == YNode::T::Str && find_invalid_utf8(n.text)) return false;
  for (const auto& [k, v] : n.map)
    if (!all_utf8(k) || !all_utf8(v)) return false;
  for (const auto& x : n.seq)
    if (!all_utf8(x)) return false;
  return true;
}

bool holds_config(const Value& v, uint32_t depth, std::unordered_set<const Value*>& seen) {
  OmegaConfKind k = omegaconf_kind(v);
  if (k == OmegaConfKind::DictConfig || k == OmegaConfKind::ListConfig) return true;
  if (depth > 1000 || !seen.insert(&v).second) return false;
  if (v.is(Kind::Dict)) {
    for (const auto& [key, x] : v.entries)
      if (holds_config(*x, depth + 1, seen)) return true;
  } else if (v.is(Kind::List) || v.is(Kind::Tuple)) {
    for (const Value* x : v.items)
      if (holds_config(*x, depth + 1, seen)) return true;
  }
  return false;
}

}  // namespace

bool holds_omegaconf(const Value& v) {
  std::unordered_set<const Value*> seen;
  return holds_config(v, 0, seen);
}

std::optional<std::string> to_yaml(const Value& v, RenderBudget& budget) {
  YNode root;
  Plain p(budget);
  if (!p.convert(v, root, 0)) return std::nullopt;
  if (root.t != YNode::T::Map && root.t != YNode::T::Seq) return std::nullopt;
  if (!all_utf8(root)) return std::nullopt;
  Emitter e;
  e.document(root);
  return e.out;
}

}  // namespace nemofs::pickle
