#include "formats/core/tensor.h"

#include <array>

#include "formats/core/checked.h"
#include "formats/core/errors.h"

namespace nemofs {
namespace {

struct TorchName {
  const char* torch;
  const char* st;
};

constexpr std::array<DTypeInfo, 25> kDTypes{{
    {"BOOL", 8},        {"F4", 4},          {"F6_E2M3", 6},      {"F6_E3M2", 6},     {"U8", 8},
    {"I8", 8},          {"F8_E5M2", 8},     {"F8_E4M3", 8},      {"F8_E8M0", 8},     {"F8_E4M3FNUZ", 8},
    {"F8_E5M2FNUZ", 8}, {"I16", 16},        {"U16", 16},         {"F16", 16},        {"BF16", 16},
    {"I32", 32},        {"U32", 32},        {"F32", 32},         {"C64", 64},        {"F64", 64},
    {"I64", 64},        {"U64", 64},        {"C128", 128},       {"C32", 32},        {"F4_X2", 8},
}};

constexpr std::array<TorchName, 27> kTorch{{
    {"float64", "F64"},       {"double", "F64"},        {"float32", "F32"},
    {"float", "F32"},         {"float16", "F16"},       {"half", "F16"},
    {"bfloat16", "BF16"},     {"int64", "I64"},         {"long", "I64"},
    {"int32", "I32"},         {"int", "I32"},           {"int16", "I16"},
    {"short", "I16"},         {"int8", "I8"},           {"uint8", "U8"},
    {"bool", "BOOL"},         {"uint16", "U16"},        {"uint32", "U32"},
    {"uint64", "U64"},        {"float8_e4m3fn", "F8_E4M3"}, {"float8_e5m2", "F8_E5M2"},
    {"float8_e4m3fnuz", "F8_E4M3FNUZ"}, {"float8_e5m2fnuz", "F8_E5M2FNUZ"}, {"float8_e8m0fnu", "F8_E8M0"},
    {"complex64", "C64"},     {"complex128", "C128"},   {"complex32", "C32"},
}};

}  // namespace

std::optional<DTypeInfo> dtype_by_name(std::string_view name) {
  for (const auto& d : kDTypes)
    if (name == d.name) return d;
  return std::nullopt;
}

std::optional<DTypeInfo> dtype_from_torch(std::string_view torch_name) {
  if (torch_name == "float4_e2m1fn_x2") return DTypeInfo{"F4_X2", 8};
  for (const auto& t : kTorch)
    if (torch_name == t.torch) return dtype_by_name(t.st);
  return std::nullopt;
}

uint64_t tensor_nbytes(const DTypeInfo& dt, const std::vector<uint64_t>& shape, const char* format,
                       std::optional<uint64_t> at) {
  uint64_t numel = 1;
  for (uint64_t d : shape) numel = checked_mul(numel, d, format, at, "tensor element count");
  uint64_t bits = checked_mul(numel, dt.bits, format, at, "tensor bit size");
  if (bits % 8 != 0)
    throw FormatError(format, at, std::string("tensor of dtype ") + dt.name + " does not fill whole bytes");
  return bits / 8;
}

std::string escape_key(std::string_view key) {
  if (key.empty()) return "%EMPTY";
  if (key == ".") return "%2E";
  if (key == "..") return "%2E%2E";
  std::string out;
  out.reserve(key.size());
  for (char c : key) {
    if (c == '%') out += "%25";
    else if (c == '/') out += "%2F";
    else if (c == '\0') out += "%00";
    else out += c;
  }
  return out;
}

std::string unescape_key(std::string_view name) {
  if (name == "%EMPTY") return "";
  std::string out;
  for (size_t i = 0; i < name.size(); ++i) {
    if (name[i] == '%' && i + 2 < name.size()) {
      auto hex = name.substr(i + 1, 2);
      if (hex == "25") { out += '%'; i += 2; continue; }
      if (hex == "2F") { out += '/'; i += 2; continue; }
      if (hex == "2E") { out += '.'; i += 2; continue; }
      if (hex == "00") { out += '\0'; i += 2; continue; }
    }
    out += name[i];
  }
  return out;
}

nlohmann::json sidecar_json(const TensorMeta& meta) {
  nlohmann::json j = nlohmann::json::object();
  j["dtype"] = meta.dtype;
  j["shape"] = meta.shape;
  j["nbytes"] = meta.nbytes;
  for (auto it = meta.extra.begin(); it != meta.extra.end(); ++it) j[it.key()] = it.value();
  return j;
}

std::string json_file_body(const nlohmann::json& value) {
  return value.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

NodeId add_tensor(Tree& tree, NodeId dir, std::string_view key, SourcePtr bytes, const TensorMeta& meta) {
  if (bytes->size() != meta.nbytes)
    throw FormatError("tensor", "tensor '" + std::string(key) + "' has " + std::to_string(bytes->size()) +
                                    " bytes but dtype and shape say " + std::to_string(meta.nbytes));
  std::string name = escape_key(key);
  NodeId id = tree.add_file(dir, name, std::move(bytes));
  tree.add_file(dir, name + ".json",
                std::make_shared<MemorySource>(json_file_body(sidecar_json(meta)), name + ".json"));
  return id;
}

namespace {

// Counts what a serialization would write.
struct CountingOutput final : nlohmann::detail::output_adapter_protocol<char> {
  size_t n = 0;
  void write_character(char) override { ++n; }
  void write_characters(const char*, std::size_t len) override { n += len; }
};

// json_file_body's bytes, sized by a first pass that writes nothing: a large value (a safetensors
// __metadata__ near 100 MB) is then held once as text, not through a growing string's doublings.
std::string sized_json_file_body(const nlohmann::json& value) {
  using Serializer = nlohmann::detail::serializer<nlohmann::json>;
  constexpr auto kReplace = nlohmann::json::error_handler_t::replace;
  auto counter = std::make_shared<CountingOutput>();
  Serializer(counter, ' ', kReplace).dump(value, true, false, 2);
  std::string out;
  out.reserve(counter->n + 1);
  Serializer(nlohmann::detail::output_adapter<char>(out), ' ', kReplace).dump(value, true, false, 2);
  out += '\n';
  return out;
}

}  // namespace

NodeId add_json(Tree& tree, NodeId dir, std::string_view key, const nlohmann::json& value) {
  std::string name = escape_key(key) + ".json";
  return tree.add_file(dir, name, std::make_shared<MemorySource>(sized_json_file_body(value), name));
}

}  // namespace nemofs
