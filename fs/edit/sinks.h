// Where a commit's bytes go. Offsets are those of the uncompressed tar stream; every write, copy
// and truncate goes through the I/O toolkit (formats/core/io.h), so the crash-point tests reach
// each of them.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>

#include "formats/core/byte_source.h"
#include "formats/gzip/gzip_writer.h"

namespace nemofs {

// Where the archive's bytes go. Offsets are those of the uncompressed tar stream.
class ArchiveSink {
 public:
  virtual ~ArchiveSink() = default;
  virtual void bytes(const char* p, size_t n) = 0;
  // `len` bytes of `fd` at `off`.
  virtual void range(int fd, uint64_t off, uint64_t len) = 0;
  // `n` zero bytes (a hole of a sparse member): written as zeros, or left a hole in a plain file.
  virtual void zeros(uint64_t n);
  // `len` bytes of `src` at `off`: range() where they lie in a file, zeros() for its holes, else
  // read through a buffer.
  virtual void source(const ByteSource& src, uint64_t off, uint64_t len);
  virtual void finish() = 0;
  uint64_t offset() const { return offset_; }

 protected:
  uint64_t offset_ = 0;
};

// A plain tar file: pwrite for bytes, copy_file_range for ranges, holes of the source kept as
// holes (SEEK_DATA/SEEK_HOLE), ftruncate to the final size at finish.
//
// Write-behind: the commit ends in an fsync of the whole file anyway, so writeback is started on
// every 32 MiB as soon as it is written (sync_file_range) instead of all at the fsync, and the disk
// writes overlap the copying. Pages more than 128 MiB behind are waited for and dropped from the
// page cache: the copy then reuses the same few hundred MiB of memory instead of taking 2 GiB of
// fresh pages for a 2 GiB archive (on a VM, first-touching fresh memory alone can cost more than
// the copy). The final fsync is unchanged; it finds little left to write.
struct WriteBehind {
  uint64_t step = 32ull << 20;  // writeback is started on this much at a time (and copied at a time)
  uint64_t lag = 128ull << 20;  // what lies this far behind is waited for and dropped
};

class FileSink final : public ArchiveSink {
 public:
  // `block`: the filesystem block; copies of ranges are cut at its multiples in the new file, so a
  // range whose source offset is congruent (fs/edit/commit.h) reaches copy_file_range in aligned
  // pieces that a reflink filesystem shares instead of copying.
  FileSink(int fd, std::function<void(uint64_t)> progress, WriteBehind wb = {}, uint64_t block = 4096)
      : fd_(fd), progress_(std::move(progress)), wb_(wb), block_(block) {}
  void bytes(const char* p, size_t n) override;
  void range(int fd, uint64_t off, uint64_t len) override;
  void zeros(uint64_t n) override;
  void finish() override;

 private:
  void copy_data(int fd, uint64_t off, uint64_t len);
  void write_behind();  // after offset_ moved on
  int fd_;
  std::function<void(uint64_t)> progress_;
  WriteBehind wb_;
  uint64_t block_;
  bool write_behind_ = true;
  uint64_t wb_started_ = 0;  // writeback started on [0, wb_started_)
  uint64_t wb_settled_ = 0;  // [0, wb_settled_) is on disk and out of the page cache
};

// A gzip file of independently compressed chunks (formats/gzip/gzip_writer.h): bytes, ranges and
// sources are read straight into the current chunk; full chunks are compressed by worker threads
// and written in order.
class GzipSink final : public ArchiveSink {
 public:
  GzipSink(int fd, int level, unsigned threads, std::function<void(uint64_t)> progress);
  void bytes(const char* p, size_t n) override;
  void range(int fd, uint64_t off, uint64_t len) override;
  void source(const ByteSource& src, uint64_t off, uint64_t len) override;
  void finish() override;
  uint64_t compressed_size() const { return w_.out_bytes(); }

 private:
  int fd_;
  std::function<void(uint64_t)> progress_;
  ChunkedGzipWriter w_;
};

}  // namespace nemofs
