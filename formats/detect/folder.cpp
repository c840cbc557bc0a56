#include "formats/detect/folder.h"

#include <dirent.h>
#include <fcntl.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>

#include "formats/core/errors.h"
#include "formats/core/io.h"
#include "formats/tar/tar.h"

namespace nemofs {
namespace {

// Whether a gzip stream starts with a tar header: `.gz` logs and data files beside checkpoints are
// common, and each would otherwise get a view that fails on first access. Inflating the first
// block costs one 64 KiB read at most.
bool gzip_holds_tar(int fd) {
  unsigned char in[64 * 1024];
  size_t n = io::pread_full(fd, in, sizeof in, 0, "sniff");
  unsigned char out[512] = {};
  z_stream zs{};
  if (inflateInit2(&zs, 16 + MAX_WBITS) != Z_OK) return false;
  zs.next_in = in;
  zs.avail_in = static_cast<uInt>(n);
  zs.next_out = out;
  zs.avail_out = sizeof out;
  int rc = Z_OK;
  while (zs.avail_out > 0 && rc == Z_OK) rc = inflate(&zs, Z_NO_FLUSH);
  bool full = zs.avail_out == 0;
  inflateEnd(&zs);
  if (!full) return false;
  return std::memcmp(out + 257, "ustar", 5) == 0 || tar_checksum_ok(out);
}

// The first bytes of a file standing for the whole: sniff() bounds a safetensors header by the
// source's size, so that is the real file's.
class HeadSource final : public ByteSource {
 public:
  HeadSource(const unsigned char* head, size_t n, uint64_t size) : head_(head), n_(n), size_(size) {}
  uint64_t size() const override { return size_; }
  size_t read_at(uint64_t off, void* buf, size_t len) const override {
    if (off >= n_) return 0;
    size_t k = std::min<size_t>(len, n_ - static_cast<size_t>(off));
    std::memcpy(buf, head_ + off, k);
    return k;
  }

 private:
  const unsigned char* head_;
  size_t n_;
  uint64_t size_;
};

}  // namespace

Format sniff_folder_entry(const std::string& path, const struct stat& st) {
  try {
    if (S_ISDIR(st.st_mode)) return sniff_dir_path(path);
    if (!S_ISREG(st.st_mode) || st.st_size == 0) return Format::Unknown;
    // O_NONBLOCK: a file swapped for a fifo after the stat must not hang the listing.
    UniqueFd fd = io::open(path, O_RDONLY | O_NONBLOCK);
    unsigned char head[512] = {};
    size_t n = io::pread_full(fd.get(), head, sizeof head, 0, "sniff");
    Format f = sniff(HeadSource(head, n, static_cast<uint64_t>(st.st_size)));
    if (f == Format::GzipTar && !gzip_holds_tar(fd.get())) return Format::Unknown;
    return f;
  } catch (const std::exception&) {
    return Format::Unknown;  // unreadable: shown as a file without a view
  }
}

std::vector<FolderEntry> list_folder(const std::string& dir, const SniffFn& sniff, std::vector<std::string>* warnings) {
  std::unique_ptr<DIR, int (*)(DIR*)> d(::opendir(dir.c_str()), ::closedir);
  if (!d) throw SysError(errno, dir + ": cannot list: " + std::strerror(errno));
  std::vector<FolderEntry> out;
  errno = 0;
  while (const dirent* e = ::readdir(d.get())) {
    std::string name = e->d_name;
    if (name == "." || name == "..") continue;
    FolderEntry fe;
    fe.name = name;
    if (::fstatat(::dirfd(d.get()), e->d_name, &fe.st, AT_SYMLINK_NOFOLLOW) != 0) continue;  // gone meanwhile
    std::string path = dir + "/" + name;
    if (S_ISREG(fe.st.st_mode)) {
      fe.kind = FolderEntry::Kind::File;
      fe.format = sniff(path, fe.st);
    } else if (S_ISDIR(fe.st.st_mode)) {
      fe.kind = FolderEntry::Kind::Dir;
      fe.format = sniff(path, fe.st);
    } else if (S_ISLNK(fe.st.st_mode)) {
      fe.kind = FolderEntry::Kind::Symlink;
      // A link to a checkpoint file gets a view; links to folders do not (a link to an ancestor
      // would make the tree endless).
      struct stat target {};
      if (::stat(path.c_str(), &target) == 0 && S_ISREG(target.st_mode)) fe.format = sniff(path, target);
    } else {
      continue;  // sockets, fifos, devices: not shown
    }
    out.push_back(std::move(fe));
    errno = 0;
  }
  if (errno != 0) throw SysError(errno, dir + ": cannot list: " + std::strerror(errno));
  std::sort(out.begin(), out.end(), [](const FolderEntry& a, const FolderEntry& b) { return a.name < b.name; });
  std::vector<FolderEntry> views;
  for (const auto& fe : out) {
    if (fe.format == Format::Unknown) continue;
    std::string vname = fe.name + kViewSuffix;
    bool taken = std::binary_search(out.begin(), out.end(), vname,
                                    [](const auto& a, const auto& b) {
                                      if constexpr (std::is_same_v<std::decay_t<decltype(a)>, std::string>)
                                        return a < b.name;
                                      else
                                        return a.name < b;
                                    });
    if (taken) {
      if (warnings)
        warnings->push_back(dir + "/" + fe.name + ": no .tensors view: an entry named '" + vname + "' already exists");
      continue;
    }
    FolderEntry v;
    v.name = std::move(vname);
    v.kind = FolderEntry::Kind::View;
    v.format = fe.format;
    v.of = fe.name;
    if (fe.kind == FolderEntry::Kind::Symlink) ::stat((dir + "/" + fe.name).c_str(), &v.st);
    else v.st = fe.st;
    views.push_back(std::move(v));
  }
  if (!views.empty()) {
    out.insert(out.end(), std::make_move_iterator(views.begin()), std::make_move_iterator(views.end()));
    std::sort(out.begin(), out.end(), [](const FolderEntry& a, const FolderEntry& b) { return a.name < b.name; });
  }
  return out;
}

bool is_plain_folder(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) return false;
  try {
    return sniff_dir_path(path) == Format::Unknown;
  } catch (const SysError&) {
    return false;  // unreadable: open_checkpoint reports it
  }
}

}  // namespace nemofs
