#include "formats/detect/checkpoint.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <filesystem>

#include "formats/core/checked.h"
#include "formats/core/errors.h"
#include "formats/dcp/dcp.h"
#include "formats/hf/hf.h"
#include "formats/gzip/gzip_index.h"
#include "formats/nemo/nemo.h"
#include "formats/safetensors/safetensors.h"
#include "formats/tar/tar.h"
#include "formats/torch/torch.h"

namespace nemofs {

const char* format_name(Format f) {
  switch (f) {
    case Format::Safetensors: return "safetensors";
    case Format::Tar: return "nemo";
    case Format::GzipTar: return "nemo-gzip";
    case Format::TorchZip: return "torch-zip";
    case Format::TorchLegacy: return "torch-legacy";
    case Format::Dcp: return "dcp";
    case Format::HfDir: return "hf-safetensors-dir";
    case Format::Folder: return "folder";
    case Format::Unknown: break;
  }
  return "unknown";
}

DirFileSet::DirFileSet(std::string root) : root_(std::move(root)) {}

std::vector<std::string> DirFileSet::list() const {
  std::vector<std::string> out;
  namespace fs = std::filesystem;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(root_, ec); !ec && it != fs::recursive_directory_iterator();
       it.increment(ec)) {
    if (it->is_regular_file(ec)) out.push_back(fs::relative(it->path(), root_, ec).generic_string());
  }
  if (ec) throw SysError(ec.value(), root_ + ": cannot list: " + ec.message());
  std::sort(out.begin(), out.end());
  return out;
}

SourcePtr DirFileSet::open(const std::string& rel) const {
  std::string p = root_ + "/" + rel;
  struct stat st {};
  if (::stat(p.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return nullptr;
  return std::make_shared<FileSource>(p);
}

namespace {
const unsigned char kLegacyMagic[] = {0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19};
}

Format sniff(const ByteSource& src) {
  unsigned char head[512] = {};
  size_t n = src.read_at(0, head, sizeof head);
  if (n >= 2 && head[0] == 0x1f && head[1] == 0x8b) return Format::GzipTar;
  if (n >= 4 && std::memcmp(head, "PK\x03\x04", 4) == 0) return Format::TorchZip;
  if (n >= sizeof kLegacyMagic && std::memcmp(head, kLegacyMagic, sizeof kLegacyMagic) == 0) return Format::TorchLegacy;
  if (n >= 8) {
    uint64_t len = load_le<uint64_t>(head);
    if (len >= 2 && len <= 100'000'000 && try_add(len, 8).value_or(UINT64_MAX) <= src.size()) {
      for (size_t i = 8; i < n; ++i) {
        unsigned char c = head[i];
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r') continue;
        if (c == '{') return Format::Safetensors;
        break;
      }
    }
  }
  // A tar: `ustar` magic, or (v7 / pre-POSIX, no magic) a header whose checksum holds.
  if (n >= 263 && std::memcmp(head + 257, "ustar", 5) == 0) return Format::Tar;
  if (n == 512 && tar_checksum_ok(head)) return Format::Tar;
  return Format::Unknown;
}

Format sniff_dir_names(const std::vector<std::string>& names) {
  auto ends = [](const std::string& f, std::string_view suffix) {
    return f.size() > suffix.size() && f.compare(f.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  bool metadata = false, index = false, st = false, other = false;
  for (const auto& f : names) {
    if (f.find('/') != std::string::npos) continue;
    if (f == ".metadata") metadata = true;
    if (f == "model.safetensors.index.json") index = true;
    if (ends(f, ".safetensors")) st = true;
    // Other checkpoints beside loose .safetensors files make a folder of checkpoints (a run's
    // output, a Trainer checkpoint with optimizer.pt), not one Hugging Face model.
    if (ends(f, ".nemo") || ends(f, ".ckpt") || ends(f, ".pt") || ends(f, ".pth")) other = true;
  }
  if (metadata) return Format::Dcp;
  if (index || (st && !other)) return Format::HfDir;
  return Format::Unknown;
}

Format sniff_dir(const FileSet& dir) { return sniff_dir_names(dir.list()); }

Format sniff_dir_path(const std::string& path) {
  std::vector<std::string> names;
  std::unique_ptr<DIR, int (*)(DIR*)> d(::opendir(path.c_str()), ::closedir);
  if (!d) throw SysError(errno, path + ": cannot list: " + std::strerror(errno));
  while (const dirent* e = ::readdir(d.get())) {
    unsigned char type = e->d_type;
    // Symbolic links count as what they point to, as DirFileSet sees them (a Hugging Face cache
    // snapshot is a folder of links to blobs).
    if (type == DT_UNKNOWN || type == DT_LNK) {
      struct stat st {};
      if (::fstatat(::dirfd(d.get()), e->d_name, &st, 0) != 0) continue;
      type = S_ISREG(st.st_mode) ? DT_REG : DT_UNKNOWN;
    }
    if (type == DT_REG) names.emplace_back(e->d_name);
  }
  return sniff_dir_names(names);
}

namespace {

[[noreturn]] void not_yet(Format f, const std::string& what) {
  (void)what;
  throw FormatError(format_name(f), "this checkpoint format is not supported yet");
}

void build_file(Format f, Tree& tree, NodeId dir, const SourcePtr& src, bool nested,
                std::vector<std::string>* warnings = nullptr, std::shared_ptr<void>* keep = nullptr,
                bool keep_tar_index = true) {
  switch (f) {
    case Format::Tar:
      if (nested) throw FormatError("nemo", "a tar archive inside a checkpoint is not shown as tensors");
      {
        auto nemo = std::make_shared<NemoArchive>(build_nemo(tree, src, keep_tar_index));
        if (warnings) *warnings = nemo->warnings;
        if (keep) *keep = nemo;
      }
      return;
    case Format::Safetensors:
      build_safetensors(tree, dir, src);
      return;
    case Format::TorchZip:
    case Format::TorchLegacy: {
      auto file = f == Format::TorchZip ? torch::load_torch_zip(src) : torch::load_torch_legacy(src);
      torch::build_torch_tree(tree, dir, *file);
      if (warnings) warnings->insert(warnings->end(), file->warnings.begin(), file->warnings.end());
      return;
    }
    case Format::GzipTar: {
      if (nested) throw FormatError("nemo", "a gzip-compressed archive inside a checkpoint is not shown as tensors");
      // Members are SubSources of the uncompressed stream, so their `.tensors/` views compose as for
      // a plain .nemo; the NemoArchive keeps the GzipSource (and through it the file) alive.
      const auto* file = dynamic_cast<const FileSource*>(src.get());
      // A remote object has no path, but a cache identity: its index is cached by that.
      auto gz = open_gzip(src, file ? file->path() : src->cache_identity() ? src->describe() : std::string());
      auto nemo = std::make_shared<NemoArchive>(build_nemo(tree, gz, keep_tar_index));
      // Bytes after the last gzip member (index.h): `gzip -d` and `tar xzf` read on with a warning;
      // so does a mount, but only when the tar inside ended with its end-of-archive blocks. Without
      // them the archive may be cut short and the bytes after it part of what is missing.
      std::string trailing;
      if (const uint64_t t = gz->index().trailing_at) {
        if (!nemo->index.end_marker)
          throw FormatError("gzip", t, "bytes that are not gzip data follow the last gzip member, and the tar inside has no end-of-archive blocks (truncated or damaged archive)");
        trailing = src->describe() + ": " + std::to_string(gz->index().compressed_size - t) +
                   " bytes after the last gzip member (at byte " + std::to_string(t) + ") ignored";
      }
      if (warnings) {
        *warnings = nemo->warnings;
        if (!trailing.empty()) warnings->push_back(trailing);
        if (!gz->cache_note().empty()) warnings->push_back(gz->cache_note());
      }
      if (keep) *keep = nemo;
      return;
    }
    default:
      not_yet(f, src->describe());
  }
}

void build_dir(Format f, Tree& tree, NodeId dir, const FileSet& files, std::vector<std::string>* warnings = nullptr) {
  switch (f) {
    case Format::HfDir:
      build_hf(tree, dir, files, warnings);
      return;
    case Format::Dcp:
      dcp::build_dcp(tree, dir, files);
      return;
    default:
      not_yet(f, files.describe());
  }
}

}  // namespace

Checkpoint open_checkpoint(const std::string& path, bool writable) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) throw SysError(errno, path + ": " + std::strerror(errno));
  Checkpoint cp;
  if (S_ISDIR(st.st_mode)) {
    DirFileSet dir(path);
    cp.format = sniff_dir_path(path);
    if (cp.format == Format::Unknown)
      throw FormatError("detect", "not a checkpoint folder (no .metadata, model.safetensors.index.json or *.safetensors)");
    build_dir(cp.format, cp.tree, Tree::kRoot, dir, &cp.warnings);
    return cp;
  }
  auto src = std::make_shared<FileSource>(path);
  cp.format = sniff(*src);
  if (cp.format == Format::Unknown)
    throw FormatError("detect", std::optional<uint64_t>(0), "not a checkpoint nemofs knows (not a tar/.nemo, safetensors, torch zip, legacy torch file or gzip .nemo)");
  cp.keepalive = src;
  build_file(cp.format, cp.tree, Tree::kRoot, src, false, &cp.warnings, &cp.keepalive, writable);
  cp.writable_candidate = writable && (cp.format == Format::Tar || cp.format == Format::GzipTar);
  return cp;
}

Checkpoint open_checkpoint_source(const SourcePtr& src) {
  Checkpoint cp;
  cp.format = sniff(*src);
  if (cp.format == Format::Unknown)
    throw FormatError("detect", std::optional<uint64_t>(0), "not a checkpoint nemofs knows (not a tar/.nemo, safetensors, torch zip, legacy torch file or gzip .nemo)");
  cp.keepalive = std::const_pointer_cast<ByteSource>(src);
  build_file(cp.format, cp.tree, Tree::kRoot, src, false, &cp.warnings, &cp.keepalive, /*keep_tar_index=*/false);
  return cp;
}

Checkpoint open_checkpoint_files(const FileSet& files) {
  Checkpoint cp;
  cp.format = sniff_dir(files);
  if (cp.format == Format::Unknown)
    throw FormatError("detect", "not a checkpoint folder (no .metadata, model.safetensors.index.json or *.safetensors)");
  build_dir(cp.format, cp.tree, Tree::kRoot, files, &cp.warnings);
  return cp;
}

std::optional<Tree> nested_file_view(const SourcePtr& src) {
  Format f = sniff(*src);
  if (f != Format::Safetensors && f != Format::TorchZip && f != Format::TorchLegacy) return std::nullopt;
  Tree t;
  build_file(f, t, Tree::kRoot, src, true);
  return t;
}

std::optional<Tree> nested_dir_view(const FileSet& dir) {
  Format f = sniff_dir(dir);
  if (f != Format::Dcp && f != Format::HfDir) return std::nullopt;
  Tree t;
  build_dir(f, t, Tree::kRoot, dir);
  return t;
}

}  // namespace nemofs
