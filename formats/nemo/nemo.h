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

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "formats/core/tree.h"
#include "formats/detect/checkpoint.h"
#include "formats/tar/tar.h"

namespace nemofs {

struct NemoArchive {
  static constexpr uint32_t kNoEntry = UINT32_MAX;
  SourcePtr archive;
  TarIndex index;
  // Tree node -> the index.entries position of the header it shows (files and folders; the last
  // header of a path wins); kNoEntry for the root, implied folders and the `.tensors/` views.
  // 4 bytes a member where a map by path cost ~90 (issue 19).
  std::vector<uint32_t> entry_of_node;
  std::vector<std::string> warnings;  // views that could not be built, skipped links

  // The entry shown at a normalised path, if a header of the archive made it.
  std::optional<size_t> entry_of(const Tree& tree, std::string_view path) const;
  // Every node a header made: f(normalised path, index.entries position), parents first.
  template <typename F>
  void for_each_member(const Tree& tree, F&& f) const {
    tree.walk([&](NodeId id, const Node&) {
      if (id < entry_of_node.size() && entry_of_node[id] != kNoEntry) f(tree.path_of(id), size_t{entry_of_node[id]});
    });
  }
};

// Normalised member path ("" for the root), or nullopt for entries that must be refused.
// Throws FormatError for '..' components and absolute names.
std::string normalize_member_name(const std::string& raw, uint64_t at);

// Indexes the archive and fills `tree` with its members and their checkpoint views. Without
// `keep_index` (a read-only mount, inspect) the result's index has no entries and entry_of_node
// is empty: only a writable mount (fs/edit) needs them.
NemoArchive build_nemo(Tree& tree, const SourcePtr& archive, bool keep_index = true);

// Adds the `<member>.tensors/` views for every file or folder of `tree` that is a checkpoint.
// Failures become warnings.
void add_checkpoint_views(Tree& tree, std::vector<std::string>& warnings);

// What the views of a tree are made of, shared with the folders of checkpoints built from a set of
// objects (formats/detect/folder.h: open_folder_files).
// The files below folder `dir` of `tree`, as a FileSet (nested_dir_view, open_checkpoint_files);
// it reads the tree, which must outlive it and not change meanwhile.
class TreeFileSet final : public FileSet {
 public:
  TreeFileSet(const Tree& tree, NodeId dir) : tree_(tree), dir_(dir) {}
  std::vector<std::string> list() const override;
  SourcePtr open(const std::string& rel) const override;
  std::string describe() const override;

 private:
  const Tree& tree_;
  NodeId dir_;
};
// Whether folder `dir` of `tree` holds a DCP or Hugging Face checkpoint by the names of the files
// directly in it (sniff_dir_names): the folders that get a view.
bool names_checkpoint_folder(const Tree& tree, NodeId dir);
// Grafts `view` as `<name>.tensors` beside node `of`. When an entry of that name exists, adds the
// warning "`path`: no .tensors view: `entry` named '...' already exists" instead and returns false.
bool graft_view(Tree& tree, NodeId of, const Tree& view, std::vector<std::string>& warnings, const char* entry);

}  // namespace nemofs
