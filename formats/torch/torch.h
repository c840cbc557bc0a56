// torch.save files (zip and legacy) and Lightning checkpoints as the object tree of layout.md
// section 3.
//
// Byte layout, zip (torch >= 1.6; formats.md 2.2-2.6): a stored zip (formats/zip) whose entries
// all live under one root folder (whatever the first entry's prefix is: "archive", the file stem):
//   <root>/data.pkl            pickle of the object; storages appear as persistent ids
//                              ('storage', <torch.XStorage | torch.UntypedStorage>, key, location, numel)
//   <root>/byteorder           "little" | "big" (absent: little)
//   <root>/data/<key>          raw bytes of storage <key>: numel elements of the storage class's
//                              dtype (UntypedStorage: numel bytes, dtype from _rebuild_tensor_v3)
//   <root>/version, .data/version, .format_version, .storage_alignment, .data/serialization_id
// Byte layout, legacy (torch < 1.6 or _use_new_zipfile_serialization=False; formats.md 2.7): five
// concatenated protocol-2 pickles, then the storages:
//   pickle(magic 0x1950a86a20f9469cfc6c)  pickle(1001)  pickle(sys_info{little_endian, ...})
//   pickle(obj; persistent ids ('storage', type, key, location, numel, view_metadata|None))
//   pickle(sorted list of storage keys)
//   for each key in that list: i64 numel (sys_info byte order) + numel * element_size bytes
//   view_metadata (view_key, offset, size) in elements makes view_key a slice of key.
//
// A tensor is an Object made by an allowlisted rebuild function (formats/pickle):
//   _rebuild_tensor(storage, offset, size, stride)
//   _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])
//   _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype[, metadata])
//   _rebuild_parameter(tensor, ...), _rebuild_parameter_with_state(tensor, ...) -> the tensor
//   torch._tensor._rebuild_from_type_v2(func, type, args, state) -> func(*args)
// Quantized, sparse, nested, meta and wrapper-subclass tensors are not shown as tensor files: they
// render as inert objects in their `.json` (and are named in the warnings).
//
// Tree (layout.md section 3): the root object's items are the root folder's entries (a root that
// is a tensor is the file `tensor`, any other non-container root is `value.json`). A dict, list
// or tuple with a tensor somewhere below it (through dicts, lists, tuples) is a folder, and so is
// an instance of a dict/list subclass (an inert Object filled by SETITEMS/APPENDS, e.g.
// AttributeDict) holding a tensor: its items are shown, its class and state are not; a tensor
// is a file; anything else is `<key>.json` (pickle::to_json, tensors nested inside such values
// render as {"__tensor__": {dtype, shape, storage}}). str keys are used as they are, int keys
// in decimal, list/tuple items 0, 1, ...; other keys by pickle::key_text; then escape_key. Two
// entries that land on the same file name: the first wins, the other is named in the warnings.
//
// Tensor bytes: every tensor file holds t.contiguous() bytes. A C-contiguous tensor (strides of
// size-1 dims ignored) is a SubSource of its storage record, so it is zero-copy and file_range()
// works through any nesting (a torch zip inside a .nemo tar member). Any other layout (transposed,
// sliced with steps, stride 0, channels-last) is served by a StridedSource that computes only the
// elements overlapping each read. Storages of a big-endian file are byte-swapped per element to
// little-endian (what torch.load gives on every common host).
//
// Sidecar extra keys (besides dtype, shape, nbytes):
//   "source": "torch-zip" | "torch-legacy"
//   "storage": the storage record ("data/<key>" in a zip; the legacy key otherwise)
//   "storage_offset": offset of element 0 in the storage, in elements
//   "stride": strides of the stored form, in elements
//   "contiguous": whether the file is a plain byte range of the storage (zero-copy)
//   "torch_dtype": the torch dtype name ("float32", "bfloat16", "float8_e4m3fn", ...)
//   "stored_byteorder": "big" only when the bytes were swapped from a big-endian file
//   "neg": true / "conj": true when the tensor carries torch's lazy negation/conjugation bit:
//     the file holds the STORED bytes; the logical value is their negation / conjugate.
//
// Limits: the object tree may expand (through shared references) to at most
// max(65536, 8 * number of pickle values) entries and JSON renderings share one node budget.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "formats/core/byte_source.h"
#include "formats/core/tensor.h"
#include "formats/core/tree.h"
#include "formats/pickle/pickle.h"

namespace nemofs::torch {

// The bytes of one storage and the dtype it was saved with.
struct Storage {
  std::string name;       // sidecar "storage" value
  SourcePtr bytes;        // exactly the storage's bytes (numel * element size)
  std::string dtype;      // torch dtype name from the storage class; "" for UntypedStorage
};

struct TensorInfo {
  std::string torch_dtype;
  DTypeInfo dtype{};
  std::vector<uint64_t> shape;
  std::vector<uint64_t> stride;
  uint64_t storage_offset = 0;
  const Storage* storage = nullptr;
  bool neg = false, conj = false;
};

// A loaded torch.save file: the unpickled object and its storages.
class TorchFile {
 public:
  pickle::Document doc;
  std::string source;  // "torch-zip" | "torch-legacy"
  bool big_endian = false;
  std::vector<std::string> warnings;

  // The tensor a value denotes, or nullopt when it is not a (showable) tensor. Throws FormatError
  // when it is a tensor whose metadata or storage is malformed or out of bounds. Not thread-safe.
  std::optional<TensorInfo> tensor(const pickle::Value& v) const;
  // The tensor's contiguous bytes (zero-copy when possible) and its sidecar.
  SourcePtr tensor_bytes(const TensorInfo& t) const;
  TensorMeta tensor_meta(const TensorInfo& t) const;

  // Resolves a storage persistent id for a tensor of `dtype` (zip: reads the record's local
  // header on first use; legacy: precomputed). Throws FormatError.
  std::function<const Storage*(const pickle::Value& pid, const std::string& dtype)> resolve;

 private:
  std::optional<TensorInfo> tensor_from(pickle::Tag tag, const std::vector<pickle::Value*>& args, int depth) const;
};

// Parse a torch.save zip / legacy stream (no tensor bytes are read). Throw FormatError.
std::shared_ptr<TorchFile> load_torch_zip(const SourcePtr& src);
std::shared_ptr<TorchFile> load_torch_legacy(const SourcePtr& src);

// Adds the object tree of `f` under `dir`. Throws FormatError; appends to f's warnings.
void build_torch_tree(Tree& tree, NodeId dir, TorchFile& f);

// A strided view of `storage` as its contiguous bytes: elements of `elem_size` bytes at storage
// element index storage_offset + sum(i_k * stride_k). swap_unit > 1 byte-swaps each group of that
// many bytes (big-endian storages). Returns a SubSource when the view is C-contiguous and needs no
// swap. The caller has checked that every index is inside the storage.
SourcePtr strided_view(SourcePtr storage, uint64_t elem_size, std::vector<uint64_t> shape,
                       std::vector<uint64_t> stride, uint64_t storage_offset, uint32_t swap_unit, std::string what);

}  // namespace nemofs::torch
