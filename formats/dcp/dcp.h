// PyTorch Distributed Checkpoint folders (DCP: FSDP2 / tensor parallel, Lightning
// ModelParallelStrategy, Megatron/NeMo `torch_dist`) as the object tree of layout.md sections 2-4.
//
// Byte layout (formats.md sections 5 and 6):
//   <dir>/.metadata          pickle (protocol 4/5) of torch.distributed.checkpoint.metadata.Metadata
//                            (or Megatron's MCoreMetadata subclass); dataclasses pickle as
//                            STACK_GLOBAL(module, cls) () NEWOBJ + BUILD(state dict):
//     Metadata.state_dict_metadata  {fqn: TensorStorageMetadata | BytesStorageMetadata}
//       TensorStorageMetadata  properties: TensorProperties (state: a TUPLE (dtype, layout,
//                              requires_grad, memory_format enum, pin_memory); old files: a dict),
//                              size: torch.Size (global shape),
//                              chunks: [ChunkStorageMetadata(offsets: torch.Size, sizes: torch.Size)]
//       BytesStorageMetadata   no state
//     Metadata.storage_data   {MetadataIndex(fqn, offset: torch.Size | absent, index): _StorageInfo(
//                              relative_path: str, offset: int, length: int,
//                              [transform_descriptors: [str]])}; a tensor chunk is found by
//                              (fqn, chunk offsets), a bytes entry by (fqn, no offset)
//     Metadata.planner_data   {fqn: tuple path of str (dict keys) / int (list indices)} (may be
//                              absent, None, or lack keys: such entries stay flat at the root)
//     Metadata.mcore_data     (MCoreMetadata) {key: {'nd_reformulated_orig_global_shape': tuple}}
//   <dir>/<relative_path>    data files (`__<rank>_<n>.distcp`, any name): items back to back,
//                            each at [offset, offset + length):
//     tensor chunk  a complete torch.save zip (offsets relative to the item) of one tensor whose
//                   shape is the chunk's sizes (possibly strided), dtype the entry's dtype
//     bytes entry   a complete torch.save zip of any object (Megatron ShardedObject: a list)
//     transform_descriptors (e.g. "stream.zstd/1"): the item is compressed -> refused, by name
//     an item that is not a zip (SerializationFormat.SAFETENSORS files) -> refused, by name
//   <dir>/meta.pt            Lightning ModelParallelStrategy / FSDP: torch.save of the rest of the
//                            trainer checkpoint (epoch, global_step, loops, ...)
//   <dir>/common.pt          Megatron torch_dist (<= core v0.18): torch.save of the common state
//   <dir>/metadata.json      Megatron: {"sharded_backend": "torch_dist", ...} (not shown)
//
// Tree: each entry is placed at its planner_data path (else at its flat key); a container
// (dict path element: str, list element: int) holding a tensor somewhere below is a folder whose
// entries are named by key / decimal index and escaped (escape_key: Megatron keys contain '/');
// a container without tensors, and every bytes entry without tensors, is `<name>.json` (a
// container of leaves renders as a JSON object, or an array when all its keys are list indices).
// A bytes entry whose object holds tensors becomes a folder built by the torch layer. meta.pt and
// common.pt are merged into the root (as Lightning and Megatron do when loading); a name the DCP
// entries already use is kept for the DCP entry.
//
// Tensors are ShardedTensorSources (sharded.h) over the chunks; nothing is read from a .distcp at
// mount time except for bytes entries. Checked at mount: every chunk has a storage entry, its file
// exists inside the folder, [offset, offset + length) lies in the file and can hold the chunk's
// bytes; chunks tile the global shape exactly (no hole, no overlap, nothing outside); replicas
// with identical boxes are dropped. When the checkpoint has at most kEagerChunkLimit chunks, every
// chunk's embedded zip is also opened at mount (dtype and shape must match .metadata), so those
// defects are mount errors; larger checkpoints check each chunk on its first read (EIO).
//
// Sidecar extra keys (besides dtype, shape, nbytes):
//   "source": "dcp"
//   "fqn": the flat DCP key (e.g. "optim.state.0.weight.exp_avg")
//   "torch_dtype": torch dtype name ("float32", "bfloat16", ...)
//   "chunks": [{"offsets": [...], "sizes": [...], "file": relative path, "offset": item offset,
//               "length": item length}]  (non-empty chunks, in .metadata order)
//   "mcore_nd_reformulated_orig_global_shape": [...] when MCoreMetadata records one (the file then
//               holds the reformulated global tensor, as torch's own DCP reader returns it)
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "formats/core/byte_source.h"
#include "formats/core/tree.h"
#include "formats/dcp/sharded.h"

namespace nemofs {
class FileSet;
}

namespace nemofs::dcp {

struct StorageInfo {
  std::string file;      // relative_path
  uint64_t offset = 0;
  uint64_t length = 0;
  std::vector<std::string> transforms;  // transform_descriptors
};

struct PathElem {
  bool is_index = false;
  int64_t index = 0;
  std::string key;
};

struct Chunk {
  Box box;
  StorageInfo storage;
};

struct Entry {
  std::string fqn;
  bool is_tensor = false;
  std::string torch_dtype;          // tensors
  std::vector<uint64_t> shape;      // tensors: global shape
  std::vector<Chunk> chunks;        // tensors: as listed (replicas dropped)
  StorageInfo storage;              // bytes entries
  std::vector<PathElem> path;       // planner_data path; empty = flat key
  std::optional<nlohmann::json> mcore_orig_shape;
};

struct Metadata {
  std::vector<Entry> entries;  // state_dict_metadata order
  std::string version;         // "" when absent
  size_t compacted = 0;        // chunk / storage objects read as compact records (0: all as Values)
};

constexpr size_t kEagerChunkLimit = 4096;
// Tensors with more chunks than this list only "chunk_count" in their sidecar.
constexpr size_t kSidecarChunkLimit = 1024;

// Parses a .metadata pickle. Throws FormatError("dcp", ...) for anything that is not a DCP
// Metadata (wrong class, missing fields, a chunk without a storage entry, bad dtype).
// ChunkStorageMetadata, MetadataIndex and _StorageInfo instances are turned into compact records
// while the pickle is read (pickle::Compactor: ~1.5 KiB of Values a chunk are never all held);
// `compact` = false reads them as plain Values (tests compare the two).
Metadata parse_metadata(const ByteSource& src, bool compact = true);

// The sidecar (`<tensor>.json` body) of a tensor entry whose dtype is `dtype` (safetensors name,
// elements of elem_bytes) and size nbytes: the keys listed in the header comment.
std::string sidecar_text(const Entry& e, const char* dtype, uint64_t elem_bytes, uint64_t nbytes);

// Builds the tree of a DCP folder under `dir`. Throws FormatError / SysError.
void build_dcp(Tree& tree, NodeId dir, const FileSet& files);

}  // namespace nemofs::dcp
