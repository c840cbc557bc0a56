// Folders of checkpoints (SEMANTICS section 9): a real folder that is not itself one checkpoint
// (a NeMo 2.0 checkpoint directory, a Lightning experiment folder, any folder a training run
// leaves) is shown as it is, with a `<name>.tensors/` view beside every checkpoint inside.
//
// This file answers, FUSE-free, "what does one folder of such a mount list": its own entries
// (regular files, folders, symbolic links; sockets, fifos and devices are not shown) and the view
// entries, each decided by a cheap sniff (512 bytes of a file, the names directly inside a folder),
// never by indexing. Both the folder mount (fs/backends/folder_backend) and `nemofs inspect` list
// through here, so inspect stays the mount's oracle.
#pragma once

#include <sys/stat.h>

#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "formats/detect/checkpoint.h"

namespace nemofs {

constexpr const char* kViewSuffix = ".tensors";

struct FolderEntry {
  enum class Kind : uint8_t { File, Dir, Symlink, View };
  std::string name;
  Kind kind = Kind::File;
  // lstat of the entry. For a View: stat of its checkpoint (links followed).
  struct stat st {};
  // File, Dir, Symlink: the checkpoint format the sniff found (Unknown: not a checkpoint, no view).
  // View: its checkpoint's format.
  Format format = Format::Unknown;
  // View: the name of the entry it shows.
  std::string of;
};

// Sniffs one entry: `path` with `st` its stat (links followed). A regular file: sniff() of its
// first 512 bytes (a gzip stream only when it inflates to a tar header); a folder: sniff_dir_path.
// Unknown for anything else, an empty file, or a file that cannot be read.
Format sniff_folder_entry(const std::string& path, const struct stat& st);

// Sniffs with a cache, e.g. keyed by path and FileIdentity.
using SniffFn = std::function<Format(const std::string& path, const struct stat& st)>;

// The entries of real folder `dir` (absolute path) as a folder mount lists them, sorted by name:
// every shown entry, and after each checkpoint its view `<name>.tensors` (a regular file or a
// link to one that sniffs as a checkpoint; a real folder, not a link, whose own entries mark a DCP
// or Hugging Face checkpoint). A view whose name a real entry already has is left out, with a
// warning appended to `warnings`. Throws SysError when `dir` cannot be listed.
std::vector<FolderEntry> list_folder(const std::string& dir, const SniffFn& sniff, std::vector<std::string>* warnings);

// Whether `path` is a folder that is not itself one checkpoint (sniff_dir_path is Unknown): the
// sources that mount as a folder of checkpoints. False for a folder that cannot be listed (the
// checkpoint opener then reports why).
bool is_plain_folder(const std::string& path);

// What a folder of checkpoints given as a set of objects shows (a remote prefix or repository that
// is neither a DCP nor a Hugging Face folder: SEMANTICS sections 9 and 11), built whole now rather
// than on first access, since its objects are fixed once listed and a listing cannot be sniffed
// for free: every object is a file, and beside each checkpoint a `<name>.tensors/` view built by
// the code that mounts it alone. Only files named like checkpoints (checkpoint_object_name) are
// read (their first bytes, then their index), so logs and configs cost nothing; folders are views
// when their own file names say so (sniff_dir_names). Views are built `threads` at a time and
// grafted in tree order; with `safetensors_views` each gets its -o safetensors file. A key that is
// no relative path or that names both a file and a folder, and a view that cannot be built, are
// left out with a warning; a SysError (the source failed, not the file) or bad_alloc from any view
// is thrown. Format::Folder; the result keeps `files` alive.
Checkpoint open_folder_files(const std::shared_ptr<const FileSet>& files, bool safetensors_views, unsigned threads);

// Names of the files open_folder_files looks into: what torch, Lightning, NeMo, safetensors and
// transformers name checkpoint files (*.nemo *.ckpt *.pt *.pth *.bin *.safetensors).
bool checkpoint_object_name(std::string_view name);

}  // namespace nemofs
