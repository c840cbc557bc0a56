// ByteSource: the one pread-shaped interface every parser reads through.
//
// A checkpoint is a tree of nodes whose contents are byte sources. Containers compose by views:
// a tar member is a SubSource of the archive, a storage inside a torch zip inside that member is a
// SubSource of the member, and so on. Because views compose, `file_range()` can tell the FUSE edge
// (and the .nemo commit) which range of which real file a span maps to, so bytes are spliced or
// copy_file_range'd by the kernel instead of copied through user space.
//
// Sources are immutable and thread-safe: read_at may be called concurrently (pread semantics).
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "formats/core/io.h"
#include "formats/core/source_guard.h"

namespace nemofs {

// A span of a real, open file descriptor (owned by the source; valid while the source lives, or
// while `hold` does when set). `guard`, when set, tells whether the file still holds the bytes
// that were indexed: whoever copies or splices the span calls guard->check() after taking the
// bytes and before handing them on (source_guard.h).
struct FileRange {
  int fd;
  uint64_t offset;
  const SourceGuard* guard = nullptr;
  // A source that opens and closes files as it goes (a remote object's cache blocks: a bounded set
  // open at once) hands out a reference that keeps `fd` open: whoever takes the span keeps the
  // FileRange (or this) until it is done with fd. Only pieces() hands such spans out, never
  // file_range(), whose callers may keep the descriptor for the life of the source.
  std::shared_ptr<const void> hold = nullptr;
};

// One piece of a span (ByteSource::pieces): `len` bytes that are zeros (a hole: no I/O), or lie in
// a real file (`file`), or neither (read them with read_at).
struct Piece {
  uint64_t len = 0;
  bool zero = false;
  std::optional<FileRange> file;
  // Neither zeros nor a file, but already in memory: `len` bytes at `data`, valid while `hold`
  // lives (a remote object's read-ahead). A taker may use them instead of calling read_at, which
  // gives the same bytes.
  const char* data = nullptr;
  std::shared_ptr<const void> hold = nullptr;
};

class ByteSource {
 public:
  virtual ~ByteSource() = default;
  virtual uint64_t size() const = 0;
  // Copies min(len, size() - off) bytes at `off` into `buf` and returns that count (0 at or past
  // the end). Throws SysError when the operating system fails or the underlying file shrank.
  virtual size_t read_at(uint64_t off, void* buf, size_t len) const = 0;
  // When [off, off + len) is one contiguous span of a real file, where it lies. len must be > 0
  // and the span inside size(); otherwise nullopt.
  virtual std::optional<FileRange> file_range(uint64_t off, uint64_t len) const {
    (void)off;
    (void)len;
    return std::nullopt;
  }
  // Splits [off, off + len) (inside size(), len > 0) into consecutive pieces, appended to `out`,
  // so that a reader can splice file spans and fill holes without reading them. By default, one
  // piece: file_range() or bytes to read.
  virtual void pieces(uint64_t off, uint64_t len, std::vector<Piece>& out) const {
    out.push_back(Piece{len, false, file_range(off, len)});
  }
  // Short description for error messages (a path, "member x of y", ...).
  virtual std::string describe() const { return "<bytes>"; }
  // Throws SysError(EIO) when a source file this source's bytes come from is no longer the one
  // that was indexed (SourceGuard::check: one fstat per file). read_at of a FileSource checks by
  // itself; a source that answers from bytes it keeps (an inflate cache) calls this after a hit,
  // so that a changed file answers EIO from then on whatever is cached; copy-up and the FUSE edge
  // call it (or FileRange::guard) after taking bytes of file_range()s. Every source that reads
  // another one forwards to it; a source of bytes in memory has nothing to check.
  virtual void verify() const {}
  // A stable name of exactly these bytes for caches keyed by a file's identity (the gzip index
  // cache), for a source with no file to stat: a remote object gives a hash of its name and
  // pinned identity. nullopt: none (a file source is keyed by its stat).
  virtual std::optional<uint64_t> cache_identity() const { return std::nullopt; }
};

using SourcePtr = std::shared_ptr<const ByteSource>;

// A real file opened read-only. Its identity (size, inode, times) is taken at open time, before it
// is indexed; every read_at checks it after reading (SourceGuard), so bytes of a file truncated or
// rewritten since are EIO, never short, zeros or foreign. file_range() hands out the guard with
// the span for whoever splices it.
class FileSource final : public ByteSource {
 public:
  explicit FileSource(const std::string& path);  // throws SysError
  FileSource(const FileSource&) = delete;
  FileSource& operator=(const FileSource&) = delete;

  uint64_t size() const override { return size_; }
  size_t read_at(uint64_t off, void* buf, size_t len) const override;
  std::optional<FileRange> file_range(uint64_t off, uint64_t len) const override;
  std::string describe() const override { return path_; }
  void verify() const override { guard_->check(); }
  int fd() const { return fd_.get(); }
  const std::string& path() const { return path_; }
  const SourceGuard& guard() const { return *guard_; }

 private:
  std::string path_;
  UniqueFd fd_;
  uint64_t size_ = 0;
  std::unique_ptr<SourceGuard> guard_;
};

// [offset, offset + length) of a parent source. Construction checks the range lies inside.
class SubSource final : public ByteSource {
 public:
  SubSource(SourcePtr parent, uint64_t offset, uint64_t length, std::string what = {});
  uint64_t size() const override { return length_; }
  size_t read_at(uint64_t off, void* buf, size_t len) const override;
  std::optional<FileRange> file_range(uint64_t off, uint64_t len) const override;
  void pieces(uint64_t off, uint64_t len, std::vector<Piece>& out) const override;
  std::string describe() const override;
  void verify() const override { parent_->verify(); }
  const SourcePtr& parent() const { return parent_; }
  uint64_t offset() const { return offset_; }

 private:
  SourcePtr parent_;
  uint64_t offset_;
  uint64_t length_;
  std::string what_;
};

// Bytes held in memory (JSON sidecars, unit tests, small decoded records).
class MemorySource final : public ByteSource {
 public:
  explicit MemorySource(std::string bytes, std::string what = "<memory>")
      : bytes_(std::move(bytes)), what_(std::move(what)) {}
  uint64_t size() const override { return bytes_.size(); }
  size_t read_at(uint64_t off, void* buf, size_t len) const override;
  std::string describe() const override { return what_; }
  const std::string& bytes() const { return bytes_; }

 private:
  std::string bytes_;
  std::string what_;
};

// The concatenation of several sources (used where one logical file spans pieces).
class ConcatSource final : public ByteSource {
 public:
  explicit ConcatSource(std::vector<SourcePtr> parts);
  uint64_t size() const override { return total_; }
  size_t read_at(uint64_t off, void* buf, size_t len) const override;
  std::optional<FileRange> file_range(uint64_t off, uint64_t len) const override;
  void verify() const override {
    for (const auto& p : parts_) p->verify();
  }

 private:
  std::vector<SourcePtr> parts_;
  std::vector<uint64_t> starts_;
  uint64_t total_ = 0;
};

// A file with holes (a sparse tar member): `extents` are its data regions, ascending and
// disjoint, each `length` bytes at logical `offset`, stored back to back in `data` (extent i at
// data offset = the lengths of extents 0..i-1); everything else reads as zeros without any I/O.
// file_range() answers for spans inside one extent, so data regions are spliced as usual.
class SparseSource final : public ByteSource {
 public:
  struct Extent {
    uint64_t offset = 0;  // logical
    uint64_t length = 0;
  };
  // Throws FormatError when extents overlap, go backwards, pass `size` or need more than `data`.
  SparseSource(SourcePtr data, const std::vector<Extent>& extents, uint64_t size, std::string what = {});
  uint64_t size() const override { return size_; }
  size_t read_at(uint64_t off, void* buf, size_t len) const override;
  std::optional<FileRange> file_range(uint64_t off, uint64_t len) const override;
  void pieces(uint64_t off, uint64_t len, std::vector<Piece>& out) const override;
  std::string describe() const override { return what_.empty() ? "sparse " + data_->describe() : what_; }
  void verify() const override { data_->verify(); }
  size_t extent_count() const { return ext_.size(); }

 private:
  struct Ext {
    uint64_t offset, length, stored;
  };
  // The first extent ending after `off` (ext_.size() if none).
  size_t find(uint64_t off) const;
  SourcePtr data_;
  std::vector<Ext> ext_;
  uint64_t size_;
  std::string what_;
};

// Reads exactly len bytes at off or throws FormatError(format, off, "truncated: ...").
std::string read_exact(const ByteSource& src, uint64_t off, size_t len, const char* format);

inline SourcePtr make_sub(SourcePtr parent, uint64_t offset, uint64_t length, std::string what = {}) {
  return std::make_shared<SubSource>(std::move(parent), offset, length, std::move(what));
}

}  // namespace nemofs
