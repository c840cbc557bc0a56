#include "fs/commit.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <optional>

#include <yaml-cpp/yaml.h>

#include "formats/core/byte_source.h"
#include "formats/core/errors.h"

namespace nemofs {
namespace {

constexpr uint64_t kChunk = 256ull << 20;

[[noreturn]] void fail(const std::string& what, int err) {
  if (err == ENOSPC || err == EDQUOT)
    throw CommitError(what + ": no space left on the device for the new archive", err);
  throw CommitError(what + ": " + std::strerror(err), err);
}

void pwrite_all(int fd, const char* p, size_t n, uint64_t off, const char* what) {
  while (n) {
    ssize_t w = ::pwrite(fd, p, n, static_cast<off_t>(off));
    if (w < 0) {
      if (errno == EINTR) continue;
      fail(what, errno);
    }
    p += w;
    n -= static_cast<size_t>(w);
    off += static_cast<uint64_t>(w);
  }
}

size_t pread_full(int fd, char* p, size_t n, uint64_t off) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = ::pread(fd, p + got, n - got, static_cast<off_t>(off + got));
    if (r < 0) {
      if (errno == EINTR) continue;
      fail("read", errno);
    }
    if (r == 0) break;
    got += static_cast<size_t>(r);
  }
  return got;
}

}  // namespace

bool is_junk_name(const std::string& n) {
  if (n.empty()) return false;
  if (n == "4913" || n == ".DS_Store") return true;
  if (n.back() == '~') return true;
  if (n.size() > 2 && n[0] == '.' && n[1] == '_') return true;
  // vim swap files: ".<name>.swp", ".swo", ... ".swa" (and ".sw?" generally)
  if (n[0] == '.' && n.size() >= 5) {
    std::string tail = n.substr(n.size() - 4);
    if (tail[0] == '.' && tail[1] == 's' && tail[2] == 'w' && std::isalpha(static_cast<unsigned char>(tail[3])))
      return true;
  }
  return false;
}

std::optional<std::string> check_yaml(const std::string& label, const std::string& bytes) {
  try {
    (void)YAML::LoadAll(bytes);
    return std::nullopt;
  } catch (const YAML::Exception& e) {
    std::string where = label;
    if (!e.mark.is_null()) where += ":" + std::to_string(e.mark.line + 1) + ":" + std::to_string(e.mark.column + 1);
    return where + ": " + (e.msg.empty() ? std::string(e.what()) : e.msg);
  }
}

void FileSink::bytes(const char* p, size_t n) {
  pwrite_all(fd_, p, n, offset_, "writing the new archive");
  offset_ += n;
}

void FileSink::copy_data(int fd, uint64_t off, uint64_t len) {
  while (len) {
    size_t want = static_cast<size_t>(std::min(len, kChunk));
    loff_t in = static_cast<loff_t>(off), out = static_cast<loff_t>(offset_);
    ssize_t n = ::copy_file_range(fd, &in, fd_, &out, want, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EXDEV || errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP)) {
      // Filesystems without copy_file_range between these files: copy through a buffer.
      std::unique_ptr<char[]> buf(new char[1 << 20]);
      size_t piece = std::min<size_t>(want, 1 << 20);
      size_t got = pread_full(fd, buf.get(), piece, off);
      if (got != piece) throw CommitError("a source file is shorter than expected", EIO);
      pwrite_all(fd_, buf.get(), piece, offset_, "writing the new archive");
      n = static_cast<ssize_t>(piece);
    } else if (n < 0) {
      fail("copying into the new archive", errno);
    } else if (n == 0) {
      throw CommitError("a source file is shorter than expected (changed during the commit?)", EIO);
    }
    off += static_cast<uint64_t>(n);
    offset_ += static_cast<uint64_t>(n);
    len -= static_cast<uint64_t>(n);
    if (progress_) progress_(offset_);
  }
}

void FileSink::range(int fd, uint64_t off, uint64_t len) {
  const uint64_t end = off + len;
  uint64_t pos = off;
  while (pos < end) {
    off_t data = ::lseek(fd, static_cast<off_t>(pos), SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) data = static_cast<off_t>(end);  // only a hole remains
      else data = static_cast<off_t>(pos);                 // no hole support: copy everything
    }
    uint64_t d = std::min<uint64_t>(static_cast<uint64_t>(data), end);
    if (d > pos) {  // a hole: leave it unwritten in the new file (zeros, byte-identical)
      offset_ += d - pos;
      pos = d;
      if (progress_) progress_(offset_);
      if (pos == end) break;
    }
    off_t hole = ::lseek(fd, static_cast<off_t>(pos), SEEK_HOLE);
    uint64_t h = hole < 0 ? end : std::min<uint64_t>(static_cast<uint64_t>(hole), end);
    if (h <= pos) h = end;
    copy_data(fd, pos, h - pos);
    pos = h;
  }
}

void FileSink::finish() {
  // Trailing holes were skipped, not written: give the file its full size.
  if (::ftruncate(fd_, static_cast<off_t>(offset_)) != 0) fail("sizing the new archive", errno);
}

void remove_stale_temporaries(const std::string& target_path) {
  std::string dir = dir_of(target_path), prefix = base_of(target_path) + ".nemofs-tmp-";
  DIR* d = ::opendir(dir.c_str());
  if (!d) return;
  std::vector<std::string> names;
  while (dirent* e = ::readdir(d))
    if (std::strncmp(e->d_name, prefix.c_str(), prefix.size()) == 0) names.emplace_back(e->d_name);
  ::closedir(d);
  for (const auto& n : names) {
    std::string p = dir + "/" + n;
    int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) continue;
    if (::flock(fd, LOCK_EX | LOCK_NB) == 0) ::unlink(p.c_str());
    ::close(fd);
  }
}

namespace {

// Compares `len` bytes of two files.
bool same_bytes(int a, uint64_t aoff, int b, uint64_t boff, uint64_t len) {
  constexpr size_t kBuf = 1 << 20;
  std::unique_ptr<char[]> x(new char[kBuf]), y(new char[kBuf]);
  while (len) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(len, kBuf));
    if (pread_full(a, x.get(), n, aoff) != n || pread_full(b, y.get(), n, boff) != n) return false;
    if (std::memcmp(x.get(), y.get(), n) != 0) return false;
    aoff += n;
    boff += n;
    len -= n;
  }
  return true;
}

void verify(int out_fd, const std::string& out_path, const CommitRequest& req, uint64_t expected_size) {
  auto src = std::make_shared<FileSource>(out_path);
  if (src->size() != expected_size)
    throw CommitError("check of the new archive failed: size " + std::to_string(src->size()) + ", expected " +
                          std::to_string(expected_size),
                      EIO);
  TarIndex idx;
  try {
    idx = index_tar(*src);
  } catch (const FormatError& e) {
    throw CommitError(std::string("check of the new archive failed: ") + e.what(), EIO);
  }
  if (idx.entries.size() != req.items.size())
    throw CommitError("check of the new archive failed: " + std::to_string(idx.entries.size()) + " members, expected " +
                          std::to_string(req.items.size()),
                      EIO);
  auto bad = [](const std::string& label, const std::string& what) {
    return CommitError("check of the new archive failed at '" + label + "': " + what, EIO);
  };
  for (size_t i = 0; i < req.items.size(); ++i) {
    const CommitItem& it = req.items[i];
    const TarEntry& got = idx.entries[i];
    if (it.kind == CommitItem::Kind::Verbatim) {
      const TarEntry& want = it.entry;
      if (got.name != want.name || got.size != want.size || got.typeflag != want.typeflag)
        throw bad(it.label, "member differs from the original");
      uint64_t hlen = want.data_offset - want.header_offset;
      if (got.data_offset - got.header_offset != hlen ||
          !same_bytes(out_fd, got.header_offset, req.archive_fd, want.header_offset, hlen))
        throw bad(it.label, "header blocks differ from the original");
    } else {
      if (got.size != it.member.size || (got.type == TarType::Dir) != it.member.dir)
        throw bad(it.label, "size or type differs from the plan");
      std::string h(it.header.size(), '\0');
      if (got.data_offset - got.header_offset != h.size() || pread_full(out_fd, h.data(), h.size(), got.header_offset) != h.size() ||
          h != it.header)
        throw bad(it.label, "header blocks differ from the plan");
      if (it.member.size && !same_bytes(out_fd, got.data_offset, it.data_fd, it.data_off, it.member.size))
        throw bad(it.label, "bytes differ from the edited file");
    }
  }
}

}  // namespace

CommitResult write_archive(const CommitRequest& req) {
  struct stat orig {};
  if (::fstat(req.archive_fd, &orig) != 0) fail(req.archive_path, errno);

  std::string dir = dir_of(req.target_path);
  std::string tmpl = dir + "/" + base_of(req.target_path) + ".nemofs-tmp-XXXXXX";
  std::vector<char> name(tmpl.begin(), tmpl.end());
  name.push_back('\0');
  int fd = ::mkostemp(name.data(), O_CLOEXEC);
  if (fd < 0) fail("cannot create the new archive in " + dir, errno);
  std::string tmp(name.data());
  try {
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0) fail(tmp + ": lock", errno);
    // Owner first (chown may clear set-id bits), then mode. A user who is not root keeps their own.
    if (::fchown(fd, orig.st_uid, orig.st_gid) != 0 && errno != EPERM) fail(tmp + ": chown", errno);
    if (::fchmod(fd, orig.st_mode & 07777) != 0) fail(tmp + ": chmod", errno);

    uint64_t total = 0;
    for (const auto& it : req.items) {
      if (it.kind == CommitItem::Kind::Verbatim) total += it.to - it.from;
      else total += it.header.size() + it.member.size + tar_padding(it.member.size);
    }
    total += tar_end_size(total);

    uint64_t last_report = 0;
    auto progress = [&](uint64_t done) {
      if (req.progress && (done - last_report >= (16u << 20) || done == total)) {
        last_report = done;
        req.progress(done, total);
      }
    };
    FileSink sink(fd, progress);
    static const char zeros[10240] = {};
    for (const auto& it : req.items) {
      if (it.kind == CommitItem::Kind::Verbatim) {
        sink.range(req.archive_fd, it.from, it.to - it.from);
      } else {
        sink.bytes(it.header.data(), it.header.size());
        if (it.member.size) sink.range(it.data_fd, it.data_off, it.member.size);
        sink.bytes(zeros, tar_padding(it.member.size));
      }
    }
    sink.bytes(zeros, tar_end_size(sink.offset()));
    sink.finish();
    if (sink.offset() != total) throw CommitError("internal: wrote " + std::to_string(sink.offset()) + " bytes, planned " + std::to_string(total), EIO);
    if (req.progress) req.progress(total, total);
    if (::fsync(fd) != 0) fail("syncing the new archive", errno);

    verify(fd, tmp, req, total);

    CommitResult res;
    res.fd = fd;
    res.bytes = total;
    res.identity = ArchiveIdentity::of_fd(fd);
    if (req.before_rename) req.before_rename(res.identity);
    if (::rename(tmp.c_str(), req.target_path.c_str()) != 0) fail("renaming the new archive over " + req.target_path, errno);
    try {
      fsync_dir(dir);
    } catch (const std::exception&) {
      // The rename happened; a failing folder sync only weakens durability against a power cut.
    }
    return res;
  } catch (const CommitError&) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  } catch (const std::exception& e) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw CommitError(e.what(), EIO);
  }
}

}  // namespace nemofs
