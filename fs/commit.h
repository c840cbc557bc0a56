// Commit: writes the new archive beside the target, checks it, syncs it and renames it into place.
//
// The new archive is a list of pieces (CommitItem): an unchanged member is one range of the old
// archive (its original header blocks, data and padding, copied by the kernel with
// copy_file_range; holes stay holes), a changed or new member is a header in the archive's own
// style (formats/tar/tar_writer.h) followed by its bytes from wherever they lie (an overlay file
// or the old archive) and zero padding. Pieces go through an ArchiveSink: FileSink for a plain tar,
// GzipSink for a gzip .nemo (the plan is the same; offsets are those of the uncompressed stream).
//
// gzip output: the tar stream is cut into 1 MiB chunks, each compressed on its own by libdeflate
// (level 6) into one gzip member, on up to 4 threads; the file is those members back to back (a
// multi-member gzip file: RFC 1952, what `gzip -t`, zlib, CPython's gzip/tarfile and pigz/bgzip
// readers all accept). Independent chunks let the work run in parallel, make every chunk start a
// random-access point of the new file's seek index (no window needed), and cost ~0.1% of size.
// Unchanged members are read from the old archive's uncompressed stream (GzipSource: every block
// is checked against the CRCs of the old archive's index) and recompressed.
//
// Steps: write to `<target>.nemofs-tmp-XXXXXX` in the target's folder (locked with flock so a
// second mount cannot take it), fchown/fchmod like the original, fsync, re-index with index_tar
// and compare every member's name, type, size and header bytes with the plan, compare the bytes of
// every rewritten member with their source, call `before_rename` (the journal records the result's
// identity), rename over the target, fsync the folder. Any failure removes the temporary file and
// throws CommitError; the target is then untouched. For gzip, the check first inflates the whole
// result once (build_gzip_index: every member's CRC-32 and length against its trailer, which
// libdeflate computed from the bytes it was given), then re-indexes the tar stream through that
// index; the index is stored in the gzip index cache under the result's identity, so the next
// mount of the committed archive does not inflate it again.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "formats/core/byte_source.h"
#include "formats/gzip/gzip_writer.h"
#include "formats/tar/tar.h"
#include "formats/tar/tar_writer.h"
#include "fs/overlay.h"

namespace nemofs {

class CommitError : public std::runtime_error {
 public:
  CommitError(const std::string& what, int err = EIO) : std::runtime_error(what), err_(err) {}
  int err() const { return err_; }

 private:
  int err_;
};

struct CommitItem {
  enum class Kind { Verbatim, Member } kind = Kind::Verbatim;
  std::string label;  // normalised path, for messages
  // Verbatim: [from, to) of the old archive; `entry` is the member it holds (for the check).
  uint64_t from = 0, to = 0;
  TarEntry entry;
  // Member: `header` (tar_header(member, style)), then `member.size` bytes of `data_fd` at
  // `data_off` (or, when data_fd < 0, of `data_src` from 0: a member of a gzip archive that was
  // renamed but not edited), then zero padding.
  TarMember member;
  std::string header;
  int data_fd = -1;
  uint64_t data_off = 0;
  SourcePtr data_src;
};

// Where the archive's bytes go. Offsets are those of the uncompressed tar stream.
class ArchiveSink {
 public:
  virtual ~ArchiveSink() = default;
  virtual void bytes(const char* p, size_t n) = 0;
  // `len` bytes of `fd` at `off`.
  virtual void range(int fd, uint64_t off, uint64_t len) = 0;
  // `len` bytes of `src` at `off`: range() when they lie in a file, else read through a buffer.
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
  FileSink(int fd, std::function<void(uint64_t)> progress, WriteBehind wb = {})
      : fd_(fd), progress_(std::move(progress)), wb_(wb) {}
  void bytes(const char* p, size_t n) override;
  void range(int fd, uint64_t off, uint64_t len) override;
  void finish() override;

 private:
  void copy_data(int fd, uint64_t off, uint64_t len);
  void write_behind();  // after offset_ moved on
  int fd_;
  std::function<void(uint64_t)> progress_;
  WriteBehind wb_;
  std::unique_ptr<char[]> buf_;  // for copying where copy_file_range cannot
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

enum class Compression { None, Gzip };

struct CommitRequest {
  int archive_fd = -1;        // the old archive (source of verbatim ranges)
  std::string archive_path;   // its path: owner and mode are taken from it
  std::string target_path;    // where the result is renamed to (the archive, or -o output=)
  // The old archive's tar stream when it is not archive_fd's bytes as they are (a gzip archive's
  // GzipSource): verbatim ranges and header checks read through it.
  SourcePtr archive;
  Compression compression = Compression::None;  // of the result
  int gzip_level = 6;
  unsigned gzip_threads = 0;  // 0 = the CPUs available, at most 4
  // gzip results: where the new archive's seek index goes (GzipOptions::cache_dir; "" = nowhere).
  std::optional<std::string> gzip_cache_dir;
  std::vector<CommitItem> items;
  std::function<void(uint64_t done, uint64_t total)> progress;
  // Called after the result is synced and checked, just before the rename. May throw to abort.
  std::function<void(const ArchiveIdentity& result)> before_rename;
};

struct CommitResult {
  int fd = -1;            // the result, open and flock'ed (the caller owns it)
  uint64_t bytes = 0;     // size of the result (on disk: compressed for gzip)
  uint64_t tar_bytes = 0;  // size of its tar stream
  ArchiveIdentity identity;
};

// Throws CommitError with a one-line message.
CommitResult write_archive(const CommitRequest& req);

// Removes `<target>.nemofs-tmp-*` left by a crashed commit (those nobody holds locked).
void remove_stale_temporaries(const std::string& target_path);

// The YAML check: nullopt when `bytes` parse, else "label:line:column: problem" (1-based).
std::optional<std::string> check_yaml(const std::string& label, const std::string& bytes);

// Editor and OS junk that is not committed unless asked: vim swap files (.*.sw?), vim's write
// probe 4913, backup files (*~), .DS_Store, AppleDouble files (._*). `name` is a base name.
bool is_junk_name(const std::string& name);

}  // namespace nemofs
