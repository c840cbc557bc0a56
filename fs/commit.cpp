#include "fs/commit.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>
#include <sstream>

#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include "formats/core/byte_source.h"
#include "formats/core/errors.h"
#include "formats/gzip/gzip_index.h"

namespace nemofs {
namespace {


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

namespace {

// Records where each document starts; the events themselves are not needed.
class DocumentStarts final : public YAML::EventHandler {
 public:
  void OnDocumentStart(const YAML::Mark& mark) override { last = mark; }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t, const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {}
  void OnMapEnd() override {}
  YAML::Mark last = YAML::Mark::null_mark();
};

}  // namespace

std::optional<std::string> check_yaml(const std::string& label, const std::string& bytes) {
  auto at = [&](const YAML::Mark& m) {
    return m.is_null() ? label : label + ":" + std::to_string(m.line + 1) + ":" + std::to_string(m.column + 1);
  };
  try {
    // yaml-cpp 0.7's LoadAll loops forever, appending null documents, on a token no rule consumes
    // (a 1-byte "," is enough; fixed upstream after 0.8, yaml-cpp PR #1319). Walk the documents
    // first and refuse a document that starts where the previous one did: the parser is stuck.
    std::istringstream in(bytes);
    YAML::Parser parser(in);
    DocumentStarts docs;
    std::optional<int> prev;
    while (parser.HandleNextDocument(docs)) {
      if (prev && *prev == docs.last.pos) return at(docs.last) + ": unexpected character (not valid YAML here)";
      prev = docs.last.pos;
    }
    (void)YAML::LoadAll(bytes);
    return std::nullopt;
  } catch (const YAML::Exception& e) {
    // yaml-cpp quotes the offending input character (e.g. "unknown escape character: " + a raw
    // newline or ESC): escape control bytes so the refusal stays one printable line.
    std::string msg = e.msg.empty() ? std::string(e.what()) : e.msg, out;
    for (unsigned char c : msg) {
      if (c < 0x20 || c == 0x7f) {
        char hex[8];
        std::snprintf(hex, sizeof hex, "\\x%02x", c);
        out += hex;
      } else {
        out += static_cast<char>(c);
      }
    }
    return at(e.mark) + ": " + out;
  }
}

void FileSink::bytes(const char* p, size_t n) {
  pwrite_all(fd_, p, n, offset_, "writing the new archive");
  offset_ += n;
  write_behind();
}

void FileSink::write_behind() {
  if (!write_behind_) return;
  const uint64_t end = offset_ & ~uint64_t{4095};
  // (A length of 0 would mean "to the end of the file": never pass one.)
  if (end <= wb_started_ || end - wb_started_ < wb_.step) return;
  auto off = [](uint64_t v) { return static_cast<off_t>(v); };
  auto failed = [&](int err) {
    // A filesystem without it: the final fsync writes everything, as before.
    if (err == EINVAL || err == ENOSYS || err == EOPNOTSUPP || err == ESPIPE) {
      write_behind_ = false;
      return;
    }
    // A write error seen here is not reported again by the final fsync: it fails the commit now.
    fail("writing the new archive", err);
  };
  if (::sync_file_range(fd_, off(wb_started_), off(end - wb_started_), SYNC_FILE_RANGE_WRITE) != 0)
    return failed(errno);
  wb_started_ = end;
  if (wb_started_ - wb_settled_ < wb_.lag + std::max<uint64_t>(wb_.step, 1)) return;
  const uint64_t settle = wb_started_ - wb_.lag;
  if (::sync_file_range(fd_, off(wb_settled_), off(settle - wb_settled_),
                        SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER) != 0)
    return failed(errno);
  // Clean pages only: nothing unwritten is dropped. Advice, so its failure changes nothing.
  (void)::posix_fadvise(fd_, off(wb_settled_), off(settle - wb_settled_), POSIX_FADV_DONTNEED);
  wb_settled_ = settle;
}

void FileSink::copy_data(int fd, uint64_t off, uint64_t len) {
  constexpr size_t kBufferedPiece = 4 << 20;
  while (len) {
    // One step of write-behind at a time, so that writeback starts as each step is copied.
    uint64_t want64 = std::min(len, std::max<uint64_t>(wb_.step, 1 << 20));
    // Calls that start on a 2 MiB boundary of the new file: copy_file_range on a filesystem
    // without reflink splices through a 64 KiB pipe, and the page cache gives each piece folios
    // as large as its alignment allows. A member starting at, say, 505344 (as the bench's .nemo
    // does) made every piece straddle two 64 KiB folio slots: 1.2 s instead of 0.8 s for 2 GiB.
    constexpr uint64_t kAlign = 2 << 20;
    if (offset_ % kAlign) want64 = std::min(want64, kAlign - offset_ % kAlign);
    size_t want = static_cast<size_t>(want64);
    loff_t in = static_cast<loff_t>(off), out = static_cast<loff_t>(offset_);
    ssize_t n = ::copy_file_range(fd, &in, fd_, &out, want, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EXDEV || errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP)) {
      // Filesystems without copy_file_range between these files (e.g. the output on another
      // filesystem): copy through a buffer, allocated once.
      if (!buf_) buf_.reset(new char[kBufferedPiece]);
      size_t piece = std::min<size_t>(want, kBufferedPiece);
      size_t got = pread_full(fd, buf_.get(), piece, off);
      if (got != piece) throw CommitError("a source file is shorter than expected", EIO);
      pwrite_all(fd_, buf_.get(), piece, offset_, "writing the new archive");
      n = static_cast<ssize_t>(piece);
    } else if (n < 0) {
      fail("copying into the new archive", errno);
    } else if (n == 0) {
      throw CommitError("a source file is shorter than expected (changed during the commit?)", EIO);
    }
    off += static_cast<uint64_t>(n);
    offset_ += static_cast<uint64_t>(n);
    len -= static_cast<uint64_t>(n);
    write_behind();
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

void ArchiveSink::source(const ByteSource& src, uint64_t off, uint64_t len) {
  if (len == 0) return;
  if (auto fr = src.file_range(off, len)) {
    range(fr->fd, fr->offset, len);
    return;
  }
  std::unique_ptr<char[]> buf(new char[1 << 20]);
  while (len) {
    size_t want = static_cast<size_t>(std::min<uint64_t>(len, 1 << 20));
    if (src.read_at(off, buf.get(), want) != want) throw CommitError(src.describe() + ": shorter than expected", EIO);
    bytes(buf.get(), want);
    off += want;
    len -= want;
  }
}

GzipSink::GzipSink(int fd, int level, unsigned threads, std::function<void(uint64_t)> progress)
    : fd_(fd),
      progress_(std::move(progress)),
      w_([this](const char* p, size_t n) {
        pwrite_all(fd_, p, n, w_.out_bytes(), "writing the new archive");
      },
         level, threads) {}

void GzipSink::bytes(const char* p, size_t n) {
  w_.write(p, n);
  offset_ += n;
  if (progress_) progress_(offset_);
}

void GzipSink::range(int fd, uint64_t off, uint64_t len) {
  while (len) {
    size_t room;
    char* dst = w_.room(room);
    size_t want = static_cast<size_t>(std::min<uint64_t>(len, room));
    if (pread_full(fd, dst, want, off) != want)
      throw CommitError("a source file is shorter than expected (changed during the commit?)", EIO);
    w_.filled(want);
    off += want;
    len -= want;
    offset_ += want;
    if (progress_) progress_(offset_);
  }
}

void GzipSink::source(const ByteSource& src, uint64_t off, uint64_t len) {
  while (len) {
    size_t room;
    char* dst = w_.room(room);
    size_t want = static_cast<size_t>(std::min<uint64_t>(len, room));
    if (src.read_at(off, dst, want) != want) throw CommitError(src.describe() + ": shorter than expected", EIO);
    w_.filled(want);
    off += want;
    len -= want;
    offset_ += want;
    if (progress_) progress_(offset_);
  }
}

void GzipSink::finish() {
  w_.finish();
  if (::ftruncate(fd_, static_cast<off_t>(w_.out_bytes())) != 0) fail("sizing the new archive", errno);
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

// The bytes of a descriptor (the old archive, an overlay file) without taking it over.
class FdSource final : public ByteSource {
 public:
  explicit FdSource(int fd) : fd_(fd) {
    struct stat st {};
    if (::fstat(fd, &st) != 0) fail("stat", errno);
    size_ = static_cast<uint64_t>(st.st_size);
  }
  uint64_t size() const override { return size_; }
  size_t read_at(uint64_t off, void* buf, size_t len) const override {
    return pread_full(fd_, static_cast<char*>(buf), len, off);
  }

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
  throw CommitError("check of the new archive failed: " + what, EIO);
}

// `out` = the new archive's tar stream, `old` = the old one's.
void verify(const ByteSource& out, const ByteSource& old, const CommitRequest& req, uint64_t expected_size) {
  if (out.size() != expected_size)
    check_failed("size " + std::to_string(out.size()) + ", expected " + std::to_string(expected_size));
  TarIndex idx;
  try {
    idx = index_tar(out);
  } catch (const FormatError& e) {
    check_failed(e.what());
  }
  if (idx.entries.size() != req.items.size())
    check_failed(std::to_string(idx.entries.size()) + " members, expected " + std::to_string(req.items.size()));
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
      if (got.data_offset - got.header_offset != hlen || !same_bytes(out, got.header_offset, old, want.header_offset, hlen))
        throw bad(it.label, "header blocks differ from the original");
    } else {
      if (got.size != it.member.size || (got.type == TarType::Dir) != it.member.dir)
        throw bad(it.label, "size or type differs from the plan");
      std::string h(it.header.size(), '\0');
      if (got.data_offset - got.header_offset != h.size() || out.read_at(got.header_offset, h.data(), h.size()) != h.size() ||
          h != it.header)
        throw bad(it.label, "header blocks differ from the plan");
      if (it.member.size) {
        bool same = it.data_fd >= 0 ? same_bytes(out, got.data_offset, FdSource(it.data_fd), it.data_off, it.member.size)
                                    : same_bytes(out, got.data_offset, *it.data_src, 0, it.member.size);
        if (!same) throw bad(it.label, "bytes differ from the edited file");
      }
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
    const bool gzip = req.compression == Compression::Gzip;
    std::unique_ptr<ArchiveSink> sink;
    GzipSink* gz_sink = nullptr;
    if (gzip) {
      unsigned threads = req.gzip_threads ? req.gzip_threads : ChunkedGzipWriter::available_threads(4);
      auto g = std::make_unique<GzipSink>(fd, req.gzip_level, threads, progress);
      gz_sink = g.get();
      sink = std::move(g);
    } else {
      sink = std::make_unique<FileSink>(fd, progress);
    }
    static const char zeros[10240] = {};
    for (const auto& it : req.items) {
      if (it.kind == CommitItem::Kind::Verbatim) {
        if (req.archive) sink->source(*req.archive, it.from, it.to - it.from);
        else sink->range(req.archive_fd, it.from, it.to - it.from);
      } else {
        sink->bytes(it.header.data(), it.header.size());
        if (it.member.size) {
          if (it.data_fd >= 0) sink->range(it.data_fd, it.data_off, it.member.size);
          else if (it.data_src) sink->source(*it.data_src, 0, it.member.size);
          else throw CommitError("internal: no bytes for member '" + it.label + "'", EIO);
        }
        sink->bytes(zeros, tar_padding(it.member.size));
      }
    }
    sink->bytes(zeros, tar_end_size(sink->offset()));
    sink->finish();
    if (sink->offset() != total)
      throw CommitError("internal: wrote " + std::to_string(sink->offset()) + " bytes, planned " + std::to_string(total), EIO);
    if (req.progress) req.progress(total, total);
    if (::fsync(fd) != 0) fail("syncing the new archive", errno);

    std::unique_ptr<FdSource> old_fd;
    if (!req.archive) old_fd = std::make_unique<FdSource>(req.archive_fd);
    const ByteSource& old = req.archive ? *req.archive : *old_fd;
    auto file = std::make_shared<FileSource>(tmp);
    uint64_t on_disk = total;
    if (!gzip) {
      verify(*file, old, req, total);
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
      GzipSource stream(file, gidx, 8u << 20);
      verify(stream, old, req, total);
      // The next mount (and a mount that stays up) finds the index: a rename keeps the inode and
      // the mtime, so the key still matches the file once it is in place. Failing to store it
      // only costs that mount a pass.
      (void)store_gzip_index(*gidx, *file, tmp, go);
    }

    CommitResult res;
    res.fd = fd;
    res.bytes = on_disk;
    res.tar_bytes = total;
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
