#include "fs/edit/commit.h"

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

#include "formats/core/byte_source.h"
#include "formats/core/errors.h"
#include "formats/core/io.h"
#include "formats/gzip/gzip_index.h"

namespace nemofs {

void remove_stale_temporaries(const std::string& target_path) {
  std::string dir = io::dir_of(target_path), prefix = io::base_of(target_path) + ".nemofs-tmp-";
  DIR* d = ::opendir(dir.c_str());
  if (!d) return;
  std::vector<std::string> names;
  while (dirent* e = ::readdir(d))
    if (std::strncmp(e->d_name, prefix.c_str(), prefix.size()) == 0) names.emplace_back(e->d_name);
  ::closedir(d);
  for (const auto& n : names) {
    std::string p = dir + "/" + n;
    UniqueFd fd(::open(p.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
    if (!fd) continue;
    // Unlocked: no commit is writing it (a live commit holds its temporary locked).
    if (::flock(fd.get(), LOCK_EX | LOCK_NB) == 0) io::unlink(p);
  }
}

namespace {

// The bytes of a descriptor (the old archive, an overlay file) without taking it over.
class FdSource final : public ByteSource {
 public:
  explicit FdSource(int fd) : fd_(fd), size_(FileIdentity::of_fd(fd).size) {}
  uint64_t size() const override { return size_; }
  size_t read_at(uint64_t off, void* buf, size_t len) const override { return io::pread_full(fd_, buf, len, off); }

 private:
  int fd_;
  uint64_t size_ = 0;
};

// Compares `len` bytes of two sources.
bool same_bytes(const ByteSource& a, uint64_t aoff, const ByteSource& b, uint64_t boff, uint64_t len) {
  constexpr size_t kBuf = 1 << 20;
  std::unique_ptr<char[]> x(new char[kBuf]), y(new char[kBuf]);
  while (len) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(len, kBuf));
    if (a.read_at(aoff, x.get(), n) != n || b.read_at(boff, y.get(), n) != n) return false;
    if (std::memcmp(x.get(), y.get(), n) != 0) return false;
    aoff += n;
    boff += n;
    len -= n;
  }
  return true;
}

[[noreturn]] void check_failed(const std::string& what) {
  throw SysError(EIO, "check of the new archive failed: " + what);
}

// `out` = the new archive's tar stream, `old` = the old one's. Every item must lie where the plan
// put it: an alignment pad is folded into the entry after it (index_tar reads a pax global header
// as part of the next member's headers), so that entry starts at the pad.
void verify(const ByteSource& out, const ByteSource& old, const std::vector<CommitItem>& items, uint64_t expected_size) {
  if (out.size() != expected_size)
    check_failed("size " + std::to_string(out.size()) + ", expected " + std::to_string(expected_size));
  TarIndex idx;
  try {
    idx = index_tar(out);
  } catch (const FormatError& e) {
    check_failed(e.what());
  }
  if (idx.entries.size() != items.size())
    check_failed(std::to_string(idx.entries.size()) + " members, expected " + std::to_string(items.size()));
  auto bad = [](const std::string& label, const std::string& what) {
    return SysError(EIO, "check of the new archive failed at '" + label + "': " + what);
  };
  uint64_t pos = 0;
  for (size_t i = 0; i < items.size(); ++i) {
    const CommitItem& it = items[i];
    const TarEntry& got = idx.entries[i];
    const uint64_t own = pos + it.pad.size();  // the item's own first header block
    if (got.header_offset != pos) throw bad(it.label, "member is not where the plan put it");
    if (!it.pad.empty() && !same_bytes(out, pos, MemorySource(it.pad), 0, it.pad.size()))
      throw bad(it.label, "alignment padding differs from the plan");
    if (it.kind == CommitItem::Kind::Verbatim) {
      const TarEntry& want = it.entry;
      if (got.name != want.name || got.size != want.size || got.typeflag != want.typeflag)
        throw bad(it.label, "member differs from the original");
      const uint64_t hlen = want.data_offset - it.from;
      if (got.data_offset != own + hlen || !same_bytes(out, own, old, it.from, hlen))
        throw bad(it.label, "header blocks differ from the original");
      pos = own + (it.to - it.from);
    } else {
      if (got.size != it.member.size || (got.type == TarType::Dir) != it.member.dir)
        throw bad(it.label, "size or type differs from the plan");
      std::string h(it.header.size(), '\0');
      if (got.data_offset != own + h.size() || out.read_at(own, h.data(), h.size()) != h.size() || h != it.header)
        throw bad(it.label, "header blocks differ from the plan");
      if (it.member.size) {
        bool same = it.data_fd >= 0 ? same_bytes(out, got.data_offset, FdSource(it.data_fd), it.data_off, it.member.size)
                                    : same_bytes(out, got.data_offset, *it.data_src, 0, it.member.size);
        if (!same) throw bad(it.label, "bytes differ from the edited file");
      }
      pos = got.data_offset + it.member.size + tar_padding(it.member.size);
    }
  }
}

// The block size that sharing needs offsets to be congruent modulo: the new file's st_blksize
// when it is a sane power of two, else 4096.
uint64_t share_block(int fd) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) return 4096;
  const uint64_t b = static_cast<uint64_t>(st.st_blksize);
  if (b < 512 || b > (1u << 20) || (b & (b - 1))) return 4096;
  return b;
}

}  // namespace

uint64_t align_for_sharing(std::vector<CommitItem>& items, const ByteSource& old, int archive_fd, uint64_t block) {
  uint64_t pos = 0, added = 0;
  for (CommitItem& it : items) {
    it.pad.clear();
    uint64_t src = 0, dst = 0, run = 0;
    if (it.kind == CommitItem::Kind::Verbatim) {
      // A pad of an earlier commit is not carried: this one decides afresh.
      const uint64_t p = tar_pad_at(old, it.from);
      if (p && it.from + p < it.entry.data_offset) it.from += p;
      src = it.from;
      dst = pos;
      run = it.to - it.from;
    } else if (it.data_fd == archive_fd && archive_fd >= 0 && it.member.size) {
      src = it.data_off;  // renamed, not edited: its data is a range of the old archive
      dst = pos + it.header.size();
      run = it.member.size;
    }
    if (run >= kMinShareRun && block > 512 && block % 512 == 0) {
      uint64_t need = (src % block + block - dst % block) % block;
      if (need) {
        if (need < 1024) need += block;
        it.pad = tar_pad(need);
        added += need;
      }
    }
    pos += it.pad.size() + (it.kind == CommitItem::Kind::Verbatim
                                ? it.to - it.from
                                : it.header.size() + it.member.size + tar_padding(it.member.size));
  }
  return added;
}

CommitResult write_archive(const CommitRequest& req) {
  struct stat orig {};
  if (::fstat(req.archive_fd, &orig) != 0) throw_sys(errno, req.archive_path);

  const std::string dir = io::dir_of(req.target_path);
  std::string tmp;
  UniqueFd fd = io::create_temp(dir + "/" + io::base_of(req.target_path) + ".nemofs-tmp-", tmp);
  try {
    if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) throw_sys(errno, tmp + ": lock");
    // Owner first (chown may clear set-id bits), then mode. A user who is not root keeps their own.
    if (::fchown(fd.get(), orig.st_uid, orig.st_gid) != 0 && errno != EPERM) throw_sys(errno, tmp + ": chown");
    if (::fchmod(fd.get(), orig.st_mode & 07777) != 0) throw_sys(errno, tmp + ": chmod");

    const bool gzip = req.compression == Compression::Gzip;
    std::unique_ptr<FdSource> old_fd;
    if (!req.archive) old_fd = std::make_unique<FdSource>(req.archive_fd);
    const ByteSource& old = req.archive ? *req.archive : *old_fd;
    const uint64_t block = share_block(fd.get());
    std::vector<CommitItem> items = req.items;
    if (!gzip) align_for_sharing(items, old, req.archive_fd, block);
    uint64_t total = 0;
    for (const auto& it : items) {
      total += it.pad.size();
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
    std::unique_ptr<ArchiveSink> sink;
    GzipSink* gz_sink = nullptr;
    if (gzip) {
      unsigned threads = req.gzip_threads ? req.gzip_threads : ChunkedGzipWriter::available_threads(4);
      auto g = std::make_unique<GzipSink>(fd.get(), req.gzip_level, threads, progress);
      gz_sink = g.get();
      sink = std::move(g);
    } else {
      sink = std::make_unique<FileSink>(fd.get(), progress, WriteBehind{}, block);
    }
    static const char zeros[10240] = {};
    for (const auto& it : items) {
      sink->bytes(it.pad.data(), it.pad.size());
      if (it.kind == CommitItem::Kind::Verbatim) {
        if (req.archive) sink->source(*req.archive, it.from, it.to - it.from);
        else sink->range(req.archive_fd, it.from, it.to - it.from);
      } else {
        sink->bytes(it.header.data(), it.header.size());
        if (it.member.size) {
          if (it.data_fd >= 0) sink->range(it.data_fd, it.data_off, it.member.size);
          else if (it.data_src) sink->source(*it.data_src, 0, it.member.size);
          else throw SysError(EIO, "internal: no bytes for member '" + it.label + "'");
        }
        sink->bytes(zeros, tar_padding(it.member.size));
      }
    }
    sink->bytes(zeros, tar_end_size(sink->offset()));
    sink->finish();
    if (sink->offset() != total)
      throw SysError(EIO, "internal: wrote " + std::to_string(sink->offset()) + " bytes, planned " + std::to_string(total));
    if (req.progress) req.progress(total, total);
    io::fsync(fd.get(), "syncing the new archive");

    auto file = std::make_shared<FileSource>(tmp);
    uint64_t on_disk = total;
    uint64_t shared = 0;
    if (!gzip) {
      verify(*file, old, items, total);
      // Measured while the old archive still holds its extents (before the rename drops it).
      shared = io::shared_extent_bytes(fd.get(), total);
    } else {
      on_disk = gz_sink->compressed_size();
      if (file->size() != on_disk)
        check_failed("size " + std::to_string(file->size()) + ", expected " + std::to_string(on_disk));
      // One full pass: every member inflates to its trailer's CRC-32 and length, i.e. to exactly
      // the bytes the compressor was given. It yields the seek index the tar check reads through.
      GzipOptions go;
      go.progress = false;
      go.cache_dir = req.gzip_cache_dir;
      std::shared_ptr<const GzipIndex> gidx;
      try {
        gidx = std::make_shared<const GzipIndex>(build_gzip_index(*file, go, tmp));
      } catch (const FormatError& e) {
        check_failed(e.what());
      }
      if (gidx->trailing_at) check_failed("bytes after the last gzip member at byte " + std::to_string(gidx->trailing_at));
      GzipSource stream(file, gidx, 8u << 20);
      verify(stream, old, items, total);
      // The next mount (and a mount that stays up) finds the index: a rename keeps the inode and
      // the mtime, so the key still matches the file once it is in place. Failing to store it
      // only costs that mount a pass.
      (void)store_gzip_index(*gidx, *file, tmp, go);
    }

    CommitResult res;
    res.bytes = on_disk;
    res.shared = shared;
    res.tar_bytes = total;
    res.identity = archive_identity(fd.get());
    if (req.before_rename) req.before_rename(res.identity);
    io::rename(tmp, req.target_path);
    res.fd = std::move(fd);
    try {
      io::fsync_dir(dir);
    } catch (const SysError&) {
      // The rename happened; a failing folder sync only weakens durability against a power cut.
    }
    return res;
  } catch (const SysError&) {
    ::unlink(tmp.c_str());
    throw;
  } catch (const std::exception& e) {
    ::unlink(tmp.c_str());
    throw SysError(EIO, e.what());
  }
}

}  // namespace nemofs
