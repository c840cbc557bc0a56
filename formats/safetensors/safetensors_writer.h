// Writing .safetensors: a whole checkpoint (or one folder of its tree) as one safetensors file,
// laid out exactly as the reference writer (huggingface/safetensors `serialize`, which
// `safetensors.torch.save_file` calls) lays out the same tensors, and served as a ByteSource whose
// tensor bytes are the tree's own sources (never copied into memory).
//
// Byte layout of the file this writes (the reference's `prepare` + `serialize`):
//   [0, 8)        N: u64 little-endian, the length of the padded header
//   [8, 8+N)      compact JSON (no whitespace), then 0x20 spaces up to a multiple of 8 bytes:
//                   {"__metadata__":{"format":"pt"},
//                    "<key>":{"dtype":"F32","shape":[d0,...],"data_offsets":[BEGIN,END]},...}
//                 `__metadata__` first (its pairs in the order given), then the tensors in data
//                 order; inside an entry the fields are dtype, shape, data_offsets. Strings are
//                 escaped as serde_json writes them: `"` and `\` backslashed, \b \t \n \f \r, other
//                 bytes below 0x20 as \u00xx (lower-case hex), everything else (UTF-8) as it is.
//   [8+N, EOF)    the tensors' bytes back to back, no gaps, in data order: descending position
//                 of the dtype in the reference's Dtype enum (BOOL F4 F6_E2M3 F6_E3M2 U8 I8 F8_E5M2
//                 F8_E4M3 F8_E8M0 F8_E4M3FNUZ F8_E5M2FNUZ I16 U16 F16 BF16 I32 U32 F32 C64 F64 I64
//                 U64, so U64 first and BOOL last: wider dtypes first keep every tensor aligned),
//                 then key by bytes (Rust's String order).
// nemofs's F4_X2 (torch float4_e2m1fn_x2, two 4-bit values a byte, shape in bytes) is written as
// the reference's torch binding writes it: F4, last dimension doubled, the same bytes.
// Refused (FormatError "safetensors-export"): a dtype outside that enum (nemofs's C128, C32: the
// reference maps neither), a 0-d F4_X2, a key that is not UTF-8, two tensors with one key, bytes
// that do not match dtype and shape, a header over the reference reader's limit of 100,000,000
// bytes.
//
// From a Tree (layout.md section 2): a tensor is a file with a sidecar `<file>.json` giving dtype,
// shape and nbytes (the rule `nemofs inspect` uses); its key is its path below the chosen folder,
// each component unescaped (formats/core/tensor.h unescape_key: the original key) and joined with
// '.'. Other files (sidecars, JSON values, archive members) are not tensors and are left out.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "formats/core/byte_source.h"
#include "formats/core/tree.h"

namespace nemofs {

struct SafetensorsInput {
  std::string key;
  std::string dtype;              // safetensors name
  std::vector<uint64_t> shape;
  SourcePtr data;                 // exactly the tensor's bytes
  std::string origin;             // where it came from (a tree path), for messages
};

using SafetensorsMetadata = std::vector<std::pair<std::string, std::string>>;

// The metadata transformers writes and checks: {"format": "pt"}.
SafetensorsMetadata default_safetensors_metadata();

// The file: header then tensor sources. Reads, file_range() and pieces() pass through to the
// tensors' sources, so file spans are spliced / copy_file_range'd.
class SafetensorsImage final : public ByteSource {
 public:
  uint64_t size() const override { return header_.size() + data_size_; }
  size_t read_at(uint64_t off, void* buf, size_t len) const override;
  std::optional<FileRange> file_range(uint64_t off, uint64_t len) const override;
  void pieces(uint64_t off, uint64_t len, std::vector<Piece>& out) const override;
  std::string describe() const override { return what_; }

  const std::string& header() const { return header_; }     // the first 8 + N bytes
  const std::vector<SafetensorsInput>& tensors() const { return tensors_; }  // data order
  uint64_t data_start() const { return header_.size(); }
  void set_description(std::string what) { what_ = std::move(what); }

 private:
  friend std::shared_ptr<SafetensorsImage> make_safetensors(std::vector<SafetensorsInput>, const SafetensorsMetadata&);
  // The tensor whose bytes hold data offset `d` (the first non-empty one starting at or after).
  size_t tensor_at(uint64_t d) const;
  std::string header_;
  std::vector<SafetensorsInput> tensors_;
  std::vector<uint64_t> starts_;  // data offset of each tensor
  uint64_t data_size_ = 0;
  std::string what_ = "<safetensors>";
};

// Lays the tensors out. Throws FormatError("safetensors-export", ...) as listed above.
std::shared_ptr<SafetensorsImage> make_safetensors(std::vector<SafetensorsInput> tensors,
                                                   const SafetensorsMetadata& metadata);

// The tensors below `dir` (itself included when it is a file... never: `dir` must be a folder),
// keyed as described above. Throws FormatError("safetensors-export", ...) when two paths give one
// key (naming both), or a sidecar is unreadable.
std::vector<SafetensorsInput> tree_tensors(const Tree& tree, NodeId dir);

// The key a tensor file at `rel` ('/'-separated, relative to the chosen folder) gets.
std::string export_key(const std::string& rel);

// The folder `nemofs export` writes without --select: for a .nemo (`nemo`), its weights member's
// `<member>.tensors/` view (the only view, else `model_weights.ckpt.tensors` or
// `model_weights.tensors` at the root); for every other checkpoint the root. Throws
// FormatError("safetensors-export", ...) naming the candidates when there is none or no clear one.
NodeId default_export_dir(const Tree& tree, bool nemo);
// --select PATH: a folder of the tree ('/'-separated as a mount shows it; "", "." and "/" are the
// root; leading and trailing '/' ignored). Throws FormatError when it is missing or not a folder.
NodeId select_export_dir(const Tree& tree, const std::string& path);

// `<member>.tensors/` views of a .nemo tree (folders named `X.tensors` beside an entry `X`),
// in tree order.
std::vector<NodeId> tensor_views(const Tree& tree);

// The `-o safetensors` view: adds `model.safetensors` (the file `nemofs export` writes for `dir`)
// to `dir`. When `dir` already has an entry of that name, that entry stays and a warning is added;
// when the tensors cannot be exported (a key collision, a dtype safetensors lacks), a warning
// is added and nothing else changes.
void add_safetensors_view(Tree& tree, NodeId dir, std::vector<std::string>& warnings);
// Every `-o safetensors` view of one checkpoint's tree, as a mount of it alone shows them: for a
// .nemo (`nemo`), one in each `<member>.tensors/` view; for every other checkpoint, one at the root.
// Used by single mounts at mount time and by folder mounts when a checkpoint's view is indexed.
void add_safetensors_views(Tree& tree, bool nemo, std::vector<std::string>& warnings);

}  // namespace nemofs
