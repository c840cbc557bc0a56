// Format detection and the one entry point that turns a path into the tree a mount shows.
//
// Detection is by content (layout.md section 1), never by extension alone:
//   gzip magic 1f 8b                      -> gzip-compressed .nemo
//   "ustar" at byte 257                   -> .nemo (plain tar)
//   "PK\x03\x04" at byte 0                -> torch.save zip / Lightning .ckpt
//   80 02 8a 0a 6c fc 9c 46 f9 20 6a a8 50 19 (pickle of torch's magic number) -> legacy torch.save
//   u64 LE N, then (after JSON whitespace) '{' -> .safetensors
//   a directory with .metadata            -> distributed checkpoint (DCP / torch_dist / Lightning)
//   a directory with model.safetensors.index.json, or *.safetensors (and no *.nemo/.ckpt/.pt/.pth)
//                                         -> Hugging Face folder
// Both `nemofs inspect` and the FUSE mount call open_checkpoint(), so inspect is the mount's oracle.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "formats/core/byte_source.h"
#include "formats/core/tree.h"

namespace nemofs {

// Folder: a folder that is not itself one checkpoint (formats/detect/folder.h), mounted as it is.
enum class Format { Unknown, Safetensors, Tar, GzipTar, TorchZip, TorchLegacy, Dcp, HfDir, Folder };

const char* format_name(Format f);

// A set of files addressed by relative path: a real folder, or a folder inside an archive.
class FileSet {
 public:
  virtual ~FileSet() = default;
  // Relative paths of every regular file below the root ('/'-separated), sorted.
  virtual std::vector<std::string> list() const = 0;
  // The bytes of one file, or nullptr when it does not exist.
  virtual SourcePtr open(const std::string& rel) const = 0;
  virtual std::string describe() const = 0;
};

// A real directory on disk.
class DirFileSet final : public FileSet {
 public:
  explicit DirFileSet(std::string root);
  std::vector<std::string> list() const override;
  SourcePtr open(const std::string& rel) const override;
  std::string describe() const override { return root_; }

 private:
  std::string root_;
};

Format sniff(const ByteSource& src);
Format sniff_dir(const FileSet& dir);
// The folder rule on names alone: `names` are the regular files directly inside a folder. Dcp for
// `.metadata`, HfDir for `model.safetensors.index.json`, or for `*.safetensors` files with no
// `*.nemo`, `*.ckpt`, `*.pt` or `*.pth` beside them, else Unknown. Shared by
// sniff_dir, the `.nemo` member views and folder mounts, so all three agree on what a checkpoint
// folder is.
Format sniff_dir_names(const std::vector<std::string>& names);
// sniff_dir of a real folder from its own entries only (one readdir, no walk below it).
Format sniff_dir_path(const std::string& path);

struct Checkpoint {
  Format format = Format::Unknown;
  Tree tree;
  bool writable_candidate = false;  // a .nemo, plain or gzip tar, opened writable (the writable overlay may attach)
  std::shared_ptr<void> keepalive;  // format-specific state (NemoArchive for .nemo) that must outlive the tree
  std::vector<std::string> warnings;  // things not shown, views that could not be built
};

// Opens a file or directory and builds its validated tree. Throws FormatError / SysError.
// `writable`: the caller may mount it writable, so a .nemo keeps its whole tar index (fs/edit
// needs it); without it (inspect, `-o ro`, views) the index is not kept (issue 19: memory) and
// the checkpoint is never a writable_candidate.
Checkpoint open_checkpoint(const std::string& path, bool writable = true);

// The same for a file's bytes from elsewhere (a remote object) and for a set of files that is not a
// folder on disk (a remote prefix or repository: a DCP or Hugging Face folder). Never writable.
Checkpoint open_checkpoint_source(const SourcePtr& src);
Checkpoint open_checkpoint_files(const FileSet& files);

// The checkpoint view of a nested file (a member of a .nemo), or nullopt when it is not a
// checkpoint nemofs knows. A member that looks like a checkpoint but is corrupt throws.
std::optional<Tree> nested_file_view(const SourcePtr& src);
// The checkpoint view of a nested folder (e.g. model_weights/ inside a .nemo), or nullopt.
std::optional<Tree> nested_dir_view(const FileSet& dir);

}  // namespace nemofs
