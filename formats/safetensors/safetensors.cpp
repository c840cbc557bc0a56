#include "formats/safetensors/safetensors.h"

#include <algorithm>
#include <array>
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

SafetensorsTensor parse_entry(const std::string& name, const nlohmann::json& v) {
  auto fail = [&](const std::string& what) -> FormatError {
    return FormatError(kFmt, 8, "tensor " + squote(name) + ": " + what);
  };
  if (!v.is_object()) throw fail("entry is not a JSON object");
  SafetensorsTensor t;
  t.name = name;

  auto dt = v.find("dtype");
  if (dt == v.end()) throw fail("no \"dtype\"");
  if (!dt->is_string()) throw fail("\"dtype\" is not a string");
  t.dtype = dt->get<std::string>();
  if (std::find(kReferenceDTypes.begin(), kReferenceDTypes.end(), t.dtype) == kReferenceDTypes.end() ||
      !dtype_by_name(t.dtype))
    throw fail("unknown dtype " + squote(t.dtype));

  auto sh = v.find("shape");
  if (sh == v.end()) throw fail("no \"shape\"");
  if (!sh->is_array()) throw fail("\"shape\" is not an array");
  for (const auto& d : *sh) {
    if (!d.is_number_unsigned()) throw fail("shape entry " + d.dump() + " is not a non-negative integer");
    t.shape.push_back(d.get<uint64_t>());
  }

  auto off = v.find("data_offsets");
  if (off == v.end()) throw fail("no \"data_offsets\"");
  if (!off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() || !(*off)[1].is_number_unsigned())
    throw fail("\"data_offsets\" is not a pair of non-negative integers");
  t.begin = (*off)[0].get<uint64_t>();
  t.end = (*off)[1].get<uint64_t>();
  return t;
}

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

  nlohmann::json doc;
  {
    // The text goes as soon as it is parsed: a header near the 100 MB limit is held once, not twice.
    std::string text = read_exact(src, 8, static_cast<size_t>(h.header_len), kFmt);
    if (auto bad = find_invalid_utf8(text))
      throw FormatError(kFmt, 8 + *bad, "header is not valid UTF-8");
    doc = parse_strict_json(text, kFmt, 8);
  }
  if (!doc.is_object()) throw FormatError(kFmt, 8, "header is not a JSON object (it is a JSON " + std::string(doc.type_name()) + ")");

  for (auto it = doc.begin(); it != doc.end(); ++it) {
    if (it.key() == "__metadata__") {
      auto& m = it.value();
      if (!m.is_object()) throw FormatError(kFmt, 8, "__metadata__ is not a JSON object");
      for (auto mi = m.begin(); mi != m.end(); ++mi)
        if (!mi.value().is_string())
          throw FormatError(kFmt, 8, "__metadata__ value of " + squote(mi.key()) + " is not a string");
      h.metadata = std::move(m);
      continue;
    }
    h.tensors.push_back(parse_entry(it.key(), it.value()));
  }

  std::stable_sort(h.tensors.begin(), h.tensors.end(), [](const SafetensorsTensor& a, const SafetensorsTensor& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
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
