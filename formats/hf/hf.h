// Hugging Face sharded safetensors folder (transformers `save_pretrained`, huggingface_hub
// `save_torch_state_dict`).
//
// Layout of the folder:
//   model.safetensors.index.json   (optional) {"metadata": {"total_size": <bytes>, ...}?,
//                                              "weight_map": {"<tensor name>": "<shard file>", ...}}
//   model-00001-of-0000N.safetensors ...   shards, each a complete .safetensors file (see
//                                          formats/safetensors/safetensors.h), or one model.safetensors
//   config.json, generation_config.json, tokenizer files ...   not shown (not tensors)
//
// The view (layout.md section 4) is the union of every shard's tensors at the root, flat, exactly as
// a single .safetensors would show them. Which shards:
//   * with an index: exactly the shard files named in weight_map. Every named shard must exist and
//     parse; every weight_map tensor must be in the shard it names; a tensor present in two shards
//     is refused. A shard's tensors missing from weight_map are still shown (they are in a shard the
//     index names, and transformers loads whole shards). *.safetensors files the index does not name
//     are ignored (a stale shard left behind by an earlier save must not shadow the indexed ones)
//     and reported as a warning.
//   * without an index: every *.safetensors file directly in the folder; a tensor in two of them is
//     refused.
// `__metadata__.json` at the root: the index's "metadata" object when there is an index and it has
// one; without an index, the shards' common `__metadata__` when every shard has the same one.
// Sidecar extra keys: those of a .safetensors tensor ("data_offsets", "source") plus
//   "shard": "<shard file name, relative to the folder>".
#pragma once

#include <string>
#include <vector>

#include "formats/core/tree.h"
#include "formats/detect/checkpoint.h"

namespace nemofs {

inline constexpr const char* kHfIndexName = "model.safetensors.index.json";

// Builds the union view under `dir`. Throws FormatError("hf", ...) / FormatError("safetensors", ...).
void build_hf(Tree& tree, NodeId dir, const FileSet& files, std::vector<std::string>* warnings = nullptr);

}  // namespace nemofs
