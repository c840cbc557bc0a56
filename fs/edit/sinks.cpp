#include "fs/edit/sinks.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <memory>
#include <vector>

#include "formats/core/errors.h"
#include "formats/core/io.h"

namespace nemofs {

namespace {
constexpr const char* kWriting = "writing the new archive";
}  // namespace

void FileSink::bytes(const char* p, size_t n) {
  io::pwrite_full(fd_, p, n, offset_, kWriting);
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
    throw_sys(err, kWriting);
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
  while (len) {
    // One step of write-behind at a time, so that writeback starts as each step is copied.
    uint64_t want = std::min(len, std::max<uint64_t>(wb_.step, 1 << 20));
    // Calls that start on a 2 MiB boundary of the new file: copy_file_range on a filesystem
    // without reflink splices through a 64 KiB pipe, and the page cache gives each piece folios
    // as large as its alignment allows. A member starting at, say, 505344 (as the bench's .nemo
    // does) made every piece straddle two 64 KiB folio slots: 1.2 s instead of 0.8 s for 2 GiB.
    constexpr uint64_t kAlign = 2 << 20;
    if (offset_ % kAlign) want = std::min(want, kAlign - offset_ % kAlign);
    // An unaligned head up to the next block first: a copy_file_range call that starts off a block
    // cannot share (the kernel copies the whole call), one that starts on it can.
    if (block_ && offset_ % block_) want = std::min(want, block_ - offset_ % block_);
    uint64_t n = io::copy_range(fd, off, fd_, offset_, want, "copying into the new archive");
    if (n != want) throw SysError(EIO, "a source file is shorter than expected (changed during the commit?)");
    off += n;
    offset_ += n;
    len -= n;
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
  io::ftruncate(fd_, offset_, "sizing the new archive");
}

void FileSink::zeros(uint64_t n) {
  offset_ += n;  // a hole of the new file (finish() sizes it)
  if (progress_) progress_(offset_);
}

void ArchiveSink::zeros(uint64_t n) {
  static const char kZeros[64 << 10] = {};
  while (n) {
    size_t want = static_cast<size_t>(std::min<uint64_t>(n, sizeof kZeros));
    bytes(kZeros, want);
    n -= want;
  }
}

void ArchiveSink::source(const ByteSource& src, uint64_t off, uint64_t len) {
  if (len == 0) return;
  if (auto fr = src.file_range(off, len)) {
    range(fr->fd, fr->offset, len);
    return;
  }
  std::vector<Piece> pieces;
  src.pieces(off, len, pieces);
  std::unique_ptr<char[]> buf;
  for (const auto& p : pieces) {
    if (p.zero) {
      zeros(p.len);
    } else if (p.file) {
      range(p.file->fd, p.file->offset, p.len);
    } else {
      if (!buf) buf.reset(new char[1 << 20]);
      uint64_t o = off, left = p.len;
      while (left) {
        size_t want = static_cast<size_t>(std::min<uint64_t>(left, 1 << 20));
        if (src.read_at(o, buf.get(), want) != want) throw SysError(EIO, src.describe() + ": shorter than expected");
        bytes(buf.get(), want);
        o += want;
        left -= want;
      }
    }
    off += p.len;
  }
}

GzipSink::GzipSink(int fd, int level, unsigned threads, std::function<void(uint64_t)> progress)
    : fd_(fd),
      progress_(std::move(progress)),
      w_([this](const char* p, size_t n) { io::pwrite_full(fd_, p, n, w_.out_bytes(), kWriting); },
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
    io::pread_exact(fd, dst, want, off, "reading a member for the new archive");
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
    if (src.read_at(off, dst, want) != want) throw SysError(EIO, src.describe() + ": shorter than expected");
    w_.filled(want);
    off += want;
    len -= want;
    offset_ += want;
    if (progress_) progress_(offset_);
  }
}

void GzipSink::finish() {
  w_.finish();
  io::ftruncate(fd_, w_.out_bytes(), "sizing the new archive");
}

}  // namespace nemofs
