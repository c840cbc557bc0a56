// .safetensors (huggingface/safetensors): a JSON header, then every tensor's bytes back to back.
//
// Byte layout:
//   [0, 8)        N: u64 little-endian, the header's byte length (at most 100,000,000)
//   [8, 8+N)      UTF-8 JSON object, optionally padded with JSON whitespace (writers pad with 0x20
//                 to make 8+N a multiple of 8):
//                   {"__metadata__": {str: str}?,
//                    "<name>": {"dtype": "F16", "shape": [d0, ...], "data_offsets": [BEGIN, END]}, ...}
//                 unknown fields inside a tensor entry are ignored, as the reference reader does.
//   [8+N, EOF)    data section; tensor bytes = data[BEGIN, END), C order, little-endian.
//
// Validation, in the reference reader's order (safetensors/src/tensor.rs read_metadata + validate):
// file >= 8 bytes; N <= 100,000,000; 8+N inside the file; header UTF-8; header a JSON object
// (duplicate keys refused at every level, README: "Duplicate keys are disallowed");
// `__metadata__` {str: str}; each entry has a known dtype, a shape of non-negative integers and two
// non-negative data_offsets; then, over entries sorted by data_offsets: first BEGIN == 0, each BEGIN
// == the previous END (no hole, no overlap), END >= BEGIN, numel*bits without overflow and a
// multiple of 8, END-BEGIN == numel*bits/8; finally the last END + 8 + N == file size exactly.
// Each defect has its own message. dtypes are the reference's 22 names (BOOL F4 F6_E2M3 F6_E3M2 U8
// I8 F8_E5M2 F8_E4M3 F8_E8M0 F8_E4M3FNUZ F8_E5M2FNUZ I16 U16 F16 BF16 I32 U32 F32 C64 F64 I64 U64);
// an F4/F6 shape counts logical elements (4 or 6 bits each).
//
// Tree (layout.md section 4): one tensor file + sidecar per tensor at `dir`, the file a SubSource of
// the source (zero-copy); `__metadata__.json` when the header has `__metadata__`. Sidecar extra keys:
//   "data_offsets": [BEGIN, END]   exactly as in the header (relative to 8+N)
//   "source": "safetensors"
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "formats/core/byte_source.h"
#include "formats/core/tensor.h"
#include "formats/core/tree.h"

namespace nemofs {

struct SafetensorsTensor {
  std::string name;
  std::string dtype;
  std::vector<uint64_t> shape;
  uint64_t begin = 0, end = 0;  // relative to data_start
  uint64_t nbytes = 0;
};

struct SafetensorsHeader {
  uint64_t header_len = 0;                  // N
  uint64_t data_start = 0;                  // 8 + N
  std::optional<nlohmann::json> metadata;   // `__metadata__` when present ({str: str})
  std::vector<SafetensorsTensor> tensors;   // sorted by data_offsets (then name)
};

// Reads and validates the whole header against the source's size. Throws FormatError("safetensors", ...).
SafetensorsHeader parse_safetensors(const ByteSource& src);

// The sidecar metadata of one tensor (dtype, shape, nbytes and the documented extras).
TensorMeta safetensors_meta(const SafetensorsTensor& t);

// Adds every tensor (+ sidecar) and `__metadata__.json` under `dir`.
void build_safetensors(Tree& tree, NodeId dir, const SourcePtr& src);

}  // namespace nemofs
