#include "formats/safetensors/safetensors.h"

#include <algorithm>
#include <array>
#include <memory>
#include <optional>
#include <set>
#include <string_view>

#include "formats/core/checked.h"
#include "formats/core/errors.h"
#include "formats/core/strict_json.h"

namespace nemofs {
namespace {

constexpr const char* kFmt = "safetensors";
constexpr uint64_t kMaxHeader = 100'000'000;

// The reference's Dtype enum. dtype_by_name also knows nemofs-internal names (C128, C32, F4_X2)
// that no safetensors writer produces and the reference refuses.
constexpr std::array<std::string_view, 22> kReferenceDTypes{
    "BOOL", "F4",  "F6_E2M3", "F6_E3M2", "U8",  "I8",  "F8_E5M2", "F8_E4M3", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ",
    "I16",  "U16", "F16",     "BF16",    "I32", "U32", "F32",     "C64",     "F64",     "I64",         "U64"};

std::string squote(const std::string& s) { return "'" + s + "'"; }

// The header's tensor list and __metadata__, built straight from the parse events of the header
// text (sax_strict_json): no JSON tree of the whole header is made, so a header near the 100 MB
// limit is held once, as text, while it is read (plus its longest string once, moved out of the
// lexer into __metadata__). A defect of an entry or of __metadata__ is kept rather than thrown, so
// that malformed text is reported first, as the whole-tree parse did, and of several defects the
// one of the first key in byte order is reported (the order that tree's walk had); within an entry
// the checks run in the order below (dtype, shape, data_offsets), whatever the order of its fields.
class HeaderSax final : public nlohmann::json_sax<nlohmann::json> {
 public:
  explicit HeaderSax(SafetensorsHeader& h) : h_(h) {}

  // After a complete parse: the kept defect, if any.
  void finish() {
    if (!top_type_.empty())
      throw FormatError(kFmt, 8, "header is not a JSON object (it is a JSON " + top_type_ + ")");
    if (error_) throw FormatError(kFmt, 8, *error_);
  }

  bool null() override {
    place(Ty::Null);
    if (capture_) capture_->null();
    return scalar_done();
  }
  bool boolean(bool v) override {
    place(Ty::Bool);
    if (capture_) capture_->boolean(v);
    return scalar_done();
  }
  bool number_integer(number_integer_t v) override {
    place(Ty::Int);
    if (capture_) capture_->number_integer(v);
    return scalar_done();
  }
  bool number_unsigned(number_unsigned_t v) override {
    place(Ty::Unsigned, v);
    if (capture_) capture_->number_unsigned(v);
    return scalar_done();
  }
  bool number_float(number_float_t v, const string_t& text) override {
    place(Ty::Float);
    if (capture_) capture_->number_float(v, text);
    return scalar_done();
  }
  bool string(string_t& v) override {
    place(Ty::String, 0, &v);
    if (capture_) capture_->string(v);
    return scalar_done();
  }
  bool binary(binary_t&) override {
    place(Ty::Binary);
    return scalar_done();
  }
  bool start_object(std::size_t) override { return open(Ty::Object); }
  bool start_array(std::size_t) override { return open(Ty::Array); }
  bool key(string_t& k) override {
    if (capture_) capture_->key(k);
    if (in_.size() == 1) top_key_ = std::move(k);
    else if (in_.size() == 2) member_ = std::move(k);
    return true;
  }
  bool end_object() override { return close(true); }
  bool end_array() override { return close(false); }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) override { return false; }

 private:
  enum class Ty { Null, Bool, Int, Unsigned, Float, String, Binary, Object, Array };
  enum class In { None, Top, Meta, Entry, Shape, Offsets, Skip };
  enum class Field { Absent, Wrong, Ok };
  struct Entry {
    Field dtype = Field::Absent, shape = Field::Absent, offsets = Field::Absent;
    std::string dtype_name;
    std::vector<uint64_t> dims;
    std::optional<std::string> bad_dim;  // dump of the first shape entry that is not a non-negative integer
    uint64_t off[2] = {0, 0};
    size_t noff = 0;
  };

  static const char* type_name(Ty t) {
    switch (t) {
      case Ty::Null: return "null";
      case Ty::Bool: return "boolean";
      case Ty::String: return "string";
      case Ty::Binary: return "binary";
      case Ty::Object: return "object";
      case Ty::Array: return "array";
      default: return "number";
    }
  }

  // Keeps the defect of the first key in byte order.
  void defect(const std::string& key, std::string msg) {
    if (!error_ || key < error_key_) {
      error_key_ = key;
      error_ = std::move(msg);
    }
  }
  void entry_defect(const std::string& what) { defect(top_key_, "tensor " + squote(top_key_) + ": " + what); }

  // A value starts (a scalar, or a container whose contents follow) inside the innermost open
  // container `in_.back()`; returns what the new container's contents are.
  In place(Ty t, uint64_t u = 0, string_t* str = nullptr) {
    const In where = in_.empty() ? In::None : in_.back();
    switch (where) {
      case In::None:
        if (t == Ty::Object) return In::Top;
        top_type_ = type_name(t);
        return In::Skip;
      case In::Top:
        if (top_key_ == "__metadata__") {
          if (t == Ty::Object) {
            meta_ = nlohmann::json::object();
            meta_bad_.reset();
            return In::Meta;
          }
          defect(top_key_, "__metadata__ is not a JSON object");
          return In::Skip;
        }
        if (t == Ty::Object) {
          entry_ = Entry();
          return In::Entry;
        }
        entry_defect("entry is not a JSON object");
        return In::Skip;
      case In::Meta:
        if (t == Ty::String) {
          meta_[member_] = std::move(*str);
        } else if (!meta_bad_ || member_ < *meta_bad_) {
          meta_bad_ = member_;
        }
        return In::Skip;
      case In::Entry:
        if (member_ == "dtype") {
          entry_.dtype = t == Ty::String ? Field::Ok : Field::Wrong;
          if (str) entry_.dtype_name = std::move(*str);
        } else if (member_ == "shape") {
          entry_.shape = t == Ty::Array ? Field::Ok : Field::Wrong;
          if (t == Ty::Array) return In::Shape;
        } else if (member_ == "data_offsets") {
          entry_.offsets = t == Ty::Array ? Field::Ok : Field::Wrong;
          if (t == Ty::Array) return In::Offsets;
        }
        return In::Skip;  // unknown fields are ignored, as the reference reader does
      case In::Shape:
        if (entry_.bad_dim) return In::Skip;
        if (t == Ty::Unsigned) {
          entry_.dims.push_back(u);
          return In::Skip;
        }
        // The message shows the value as JSON: built by nlohmann's own tree builder, once.
        dim_ = nlohmann::json();
        capture_ = std::make_unique<nlohmann::detail::json_sax_dom_parser<nlohmann::json>>(dim_, false);
        capture_depth_ = in_.size();
        return In::Skip;
      case In::Offsets:
        if (t != Ty::Unsigned || entry_.noff >= 2) entry_.offsets = Field::Wrong;
        else entry_.off[entry_.noff] = u;
        ++entry_.noff;
        return In::Skip;
      case In::Skip:
        return In::Skip;
    }
    return In::Skip;
  }

  bool scalar_done() {
    if (capture_ && in_.size() == capture_depth_) end_capture();
    return true;
  }
  bool open(Ty t) {
    const In c = place(t);
    if (capture_) {
      if (t == Ty::Object) capture_->start_object(static_cast<std::size_t>(-1));
      else capture_->start_array(static_cast<std::size_t>(-1));
    }
    in_.push_back(c);
    return true;
  }
  bool close(bool object) {
    const In c = in_.back();
    in_.pop_back();
    if (capture_) {
      if (object) capture_->end_object();
      else capture_->end_array();
      if (in_.size() == capture_depth_) end_capture();
    }
    if (c == In::Meta) {
      if (meta_bad_) defect(top_key_, "__metadata__ value of " + squote(*meta_bad_) + " is not a string");
      else h_.metadata = std::move(meta_);
    } else if (c == In::Offsets) {
      if (entry_.noff != 2) entry_.offsets = Field::Wrong;
    } else if (c == In::Entry) {
      finish_entry();
    }
    return true;
  }

  void end_capture() {
    entry_.bad_dim = dim_.dump();
    capture_.reset();
  }

  void finish_entry() {
    Entry& e = entry_;
    if (e.dtype == Field::Absent) return entry_defect("no \"dtype\"");
    if (e.dtype == Field::Wrong) return entry_defect("\"dtype\" is not a string");
    if (std::find(kReferenceDTypes.begin(), kReferenceDTypes.end(), e.dtype_name) == kReferenceDTypes.end() ||
        !dtype_by_name(e.dtype_name))
      return entry_defect("unknown dtype " + squote(e.dtype_name));
    if (e.shape == Field::Absent) return entry_defect("no \"shape\"");
    if (e.shape == Field::Wrong) return entry_defect("\"shape\" is not an array");
    if (e.bad_dim) return entry_defect("shape entry " + *e.bad_dim + " is not a non-negative integer");
    if (e.offsets == Field::Absent) return entry_defect("no \"data_offsets\"");
    if (e.offsets == Field::Wrong) return entry_defect("\"data_offsets\" is not a pair of non-negative integers");
    if (error_) return;  // a defect is reported anyway: keep nothing more
    SafetensorsTensor t;
    t.name = top_key_;
    t.dtype = std::move(e.dtype_name);
    t.shape = std::move(e.dims);
    t.begin = e.off[0];
    t.end = e.off[1];
    h_.tensors.push_back(std::move(t));
  }

  SafetensorsHeader& h_;
  std::vector<In> in_;  // one per open container
  std::string top_key_, member_;
  std::string top_type_;  // set when the header is not an object
  nlohmann::json meta_;
  std::optional<std::string> meta_bad_;
  Entry entry_;
  std::unique_ptr<nlohmann::detail::json_sax_dom_parser<nlohmann::json>> capture_;
  size_t capture_depth_ = 0;
  nlohmann::json dim_;
  std::optional<std::string> error_;
  std::string error_key_;
};

}  // namespace

SafetensorsHeader parse_safetensors(const ByteSource& src) {
  SafetensorsHeader h;
  const uint64_t file_size = src.size();
  if (file_size < 8)
    throw FormatError(kFmt, 0, "file is " + std::to_string(file_size) + " bytes, too small for the 8-byte header length");
  unsigned char lenbuf[8];
  if (src.read_at(0, lenbuf, 8) != 8) throw FormatError(kFmt, 0, "truncated header length");
  h.header_len = load_le<uint64_t>(lenbuf);
  if (h.header_len > kMaxHeader)
    throw FormatError(kFmt, 0, "header length " + std::to_string(h.header_len) + " exceeds the limit of " +
                                   std::to_string(kMaxHeader) + " bytes");
  auto start = try_add(8, h.header_len);
  if (!start || *start > file_size)
    throw FormatError(kFmt, 0, "header length " + std::to_string(h.header_len) + " runs past the end of the file (" +
                                   std::to_string(file_size) + " bytes)");
  h.data_start = *start;

  // The header is read in blocks twice (UTF-8 first, as its defect is reported before any other),
  // never held whole.
  if (auto bad = find_invalid_utf8(src, 8, h.header_len)) throw FormatError(kFmt, 8 + *bad, "header is not valid UTF-8");
  HeaderSax sax(h);
  sax_strict_json(src, 8, h.header_len, sax, kFmt, 8);
  sax.finish();

  // By data_offsets, then name (names are unique: duplicate keys are refused).
  std::sort(h.tensors.begin(), h.tensors.end(), [](const SafetensorsTensor& a, const SafetensorsTensor& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end != b.end ? a.end < b.end : a.name < b.name;
  });
  uint64_t expected = 0;
  for (size_t i = 0; i < h.tensors.size(); ++i) {
    auto& t = h.tensors[i];
    auto fail = [&](const std::string& what) -> FormatError {
      return FormatError(kFmt, 8, "tensor " + squote(t.name) + ": " + what);
    };
    std::string range = "data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) + "]";
    if (t.begin != expected) {
      if (i == 0) throw fail(range + " leave a hole at the start of the data section (first BEGIN must be 0)");
      if (t.begin > expected)
        throw fail(range + " leave a hole after " + squote(h.tensors[i - 1].name) + ", which ends at " + std::to_string(expected));
      throw fail(range + " overlap " + squote(h.tensors[i - 1].name) + ", which ends at " + std::to_string(expected));
    }
    if (t.end < t.begin) throw fail(range + " end before they begin");
    expected = t.end;
    uint64_t numel = 1;
    for (uint64_t d : t.shape) {
      auto m = try_mul(numel, d);
      if (!m) throw fail("element count of shape overflows 64 bits");
      numel = *m;
    }
    auto bits = try_mul(numel, dtype_by_name(t.dtype)->bits);
    if (!bits) throw fail("bit size of shape overflows 64 bits");
    if (*bits % 8 != 0) throw fail(std::to_string(numel) + " elements of " + t.dtype + " do not fill whole bytes");
    t.nbytes = *bits / 8;
    if (t.end - t.begin != t.nbytes)
      throw fail(range + " span " + std::to_string(t.end - t.begin) + " bytes but dtype and shape need " +
                 std::to_string(t.nbytes));
  }
  // expected <= 2^64-1 and data_start <= 1e8+8: the sum cannot overflow unnoticed with try_add.
  auto data_end = try_add(h.data_start, expected);
  if (!data_end || *data_end > file_size)
    throw FormatError(kFmt, h.data_start, "tensors need " + std::to_string(expected) + " data bytes but the file holds only " +
                                              std::to_string(file_size - h.data_start));
  if (*data_end < file_size)
    throw FormatError(kFmt, *data_end, std::to_string(file_size - *data_end) + " trailing bytes after the last tensor");
  return h;
}

TensorMeta safetensors_meta(const SafetensorsTensor& t) {
  TensorMeta m;
  m.dtype = t.dtype;
  m.shape = t.shape;
  m.nbytes = t.nbytes;
  m.extra["data_offsets"] = {t.begin, t.end};
  m.extra["source"] = "safetensors";
  return m;
}

void build_safetensors(Tree& tree, NodeId dir, const SourcePtr& src) {
  SafetensorsHeader h = parse_safetensors(*src);
  // A tensor named "a.json" next to a tensor "a" (or "__metadata__.json" next to __metadata__)
  // would need two files of one name; refuse rather than hide one.
  std::set<std::string> names;
  auto claim = [&](const std::string& file, const std::string& why) {
    if (!names.insert(file).second)
      throw FormatError(kFmt, 8, "two files would be named " + squote(file) + " (" + why + ")");
  };
  if (h.metadata) claim("__metadata__.json", "__metadata__");
  for (const auto& t : h.tensors) {
    std::string f = escape_key(t.name);
    claim(f, "tensor " + squote(t.name));
    claim(f + ".json", "sidecar of tensor " + squote(t.name));
  }
  for (const auto& t : h.tensors)
    add_tensor(tree, dir, t.name, make_sub(src, h.data_start + t.begin, t.nbytes, t.name), safetensors_meta(t));
  if (h.metadata) add_json(tree, dir, "__metadata__", *h.metadata);
}

}  // namespace nemofs
