// Tensors as files: dtype vocabulary, file-name escaping, and the sidecar contract.
//
// layout.md section 2: every tensor is a regular file with its raw C-contiguous bytes plus a
// sidecar `<file>.json` = {"dtype": <safetensors name>, "shape": [...], "nbytes": N, ...extra}.
// File names are keys with '%' -> %25, '/' -> %2F, NUL -> %00, and a key of "." or ".." with its
// dots as %2E. Non-tensor values become `<escaped key>.json` holding their JSON rendering.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "formats/core/tree.h"

namespace nemofs {

struct DTypeInfo {
  const char* name;   // safetensors spelling: "F32", "BF16", ...
  uint32_t bits;      // bits per element (F4 = 4, F6_* = 6)
};

// The safetensors dtype of that name, or nullopt.
std::optional<DTypeInfo> dtype_by_name(std::string_view name);
// Maps a torch dtype attribute name ("float32", "bfloat16", "float8_e4m3fn", "uint16", ...) to the
// safetensors-style name; nullopt for dtypes nemofs cannot show as raw bytes.
std::optional<DTypeInfo> dtype_from_torch(std::string_view torch_name);

struct TensorMeta {
  std::string dtype;                  // safetensors-style name
  std::vector<uint64_t> shape;
  uint64_t nbytes = 0;
  nlohmann::json extra = nlohmann::json::object();  // documented extra sidecar keys
};

// numel * bits / 8 with overflow and sub-byte checks; throws FormatError(format, at, ...).
uint64_t tensor_nbytes(const DTypeInfo& dt, const std::vector<uint64_t>& shape, const char* format,
                       std::optional<uint64_t> at);

std::string escape_key(std::string_view key);
std::string unescape_key(std::string_view name);

// The sidecar document for a tensor (what `<file>.json` holds).
nlohmann::json sidecar_json(const TensorMeta& meta);
// Renders a JSON value as a file body: pretty-printed, trailing newline, UTF-8 kept.
std::string json_file_body(const nlohmann::json& value);

// Adds `<escaped key>` (the bytes, whose size must equal meta.nbytes) and its sidecar.
NodeId add_tensor(Tree& tree, NodeId dir, std::string_view key, SourcePtr bytes, const TensorMeta& meta);
// Adds `<escaped key>.json`.
NodeId add_json(Tree& tree, NodeId dir, std::string_view key, const nlohmann::json& value);

}  // namespace nemofs
