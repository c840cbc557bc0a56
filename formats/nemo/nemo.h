// .nemo (NeMo 1.x): a tar archive whose members are shown as files, plus `<member>.tensors/`.
//
// Byte layout: see formats/tar/tar.h. NeMo writes `tarfile.open(path, "w:")` + `tar.add(dir,
// arcname=".")`, so members are "./model_config.yaml", "./<32hex>_tokenizer.model",
// "./model_weights.ckpt" (a torch.save zip) or "./model_weights/" (a torch_dist checkpoint),
// each preceded by a pax header. Names are normalised by dropping leading "./" (and "."
// components); ".." components and absolute names are refused; "." is the root. When the same
// normalised name occurs twice, the last occurrence wins (tar append semantics, CPython's rule).
// Symbolic and hard links are not shown (NeMo's own _safe_extract refuses them).
//
// Member bytes are SubSources of the archive: never extracted, never copied.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "formats/core/tree.h"
#include "formats/tar/tar.h"

namespace nemofs {

struct NemoArchive {
  SourcePtr archive;
  TarIndex index;
  std::map<std::string, size_t> member_of_path;  // normalised path -> index.entries position (files and dirs)
  std::vector<std::string> warnings;             // views that could not be built, skipped links
};

// Normalised member path ("" for the root), or nullopt for entries that must be refused.
// Throws FormatError for '..' components and absolute names.
std::string normalize_member_name(const std::string& raw, uint64_t at);

// Indexes the archive and fills `tree` with its members and their checkpoint views.
NemoArchive build_nemo(Tree& tree, const SourcePtr& archive);

// Adds the `<member>.tensors/` views for every file or folder of `tree` that is a checkpoint.
// `files_under(dir_path)` lists the file set of a folder. Failures become warnings.
void add_checkpoint_views(Tree& tree, std::vector<std::string>& warnings);

}  // namespace nemofs
