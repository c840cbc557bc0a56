// The on-disk gzip index: one file per compressed file, so that a second mount skips the first pass.
//
// Index file (one per compressed file, in $XDG_CACHE_HOME/nemofs or ~/.cache/nemofs, named
// gzip-<dev hex>-<inode hex>.idx; every integer little-endian):
//   0   8  magic "NEMOFSGZ"
//   8   4  version = 1, or 2 when the compressed file has trailing bytes (formats/gzip/index.h)
//   12  4  block_size (4096 .. 64 MiB)
//   16  8  key: st_dev               (the key fields 16..56 identify the compressed file the
//   24  8  key: st_ino                index describes; any difference = stale)
//   32  8  key: compressed size
//   40  8  key: st_mtime in ns
//   48  4  key: CRC-32 of its first min(64 KiB, size) bytes
//   52  4  key: CRC-32 of its last min(64 KiB, size) bytes (holds the last member's trailer)
//   56  8  uncompressed size
//   64  4  member count
//   68  4  P = access point count
//   72  8  B = block count
//   80  8  W = total bytes of stored windows
//   [version 2 only: 88 8 trailing_at = compressed offset of the trailing bytes; the rest of the file
//    then starts 8 bytes later than the offsets below say]
//   88  P * 24 access points: u64 out (uncompressed offset), u64 in (compressed offset of the first
//          whole byte to feed), u32 stored window length, u16 window length (<= 32768),
//          u8 bits (0-7: that many high bits of the byte at in-1 come first), u8 window method
//          (0 = stored as is, 1 = zlib-compressed)
//   ..  B * 4  CRC-32 of each block
//   ..  W      the windows, in point order
//   ..  4      CRC-32 of every byte before it
// A loaded index is trusted only after the checksum, the key and a structural check of every field
// (offsets increasing and inside the files, counts matching the file length) all pass; otherwise
// it is rebuilt. The checksum is not a MAC: an index forged with a valid checksum cannot crash
// nemofs, but could make reads fail with EIO.
// Windows (W) are ~0.75% of the uncompressed size, the bulk of the index: when the index is backed
// by its file (loaded from it, or just stored to it), only the points and block CRCs stay in
// memory, plus a CRC-32 per stored window taken at load; a window is pread from the file (kept open
// from load time, so a file replaced since does not matter) when an inflate starts at its point. A
// file truncated or rewritten in place since fails that read with EIO. With no index file
// (cache_dir "" or the cache folder not writable) the windows stay in memory.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "formats/core/io.h"
#include "formats/gzip/index.h"

namespace nemofs {

// Identity of the compressed file an index belongs to.
struct GzipFileKey {
  // dev, ino, size (the size the source was opened with) and mtime_ns: the index file stores
  // these, and compares only these (not ctime_ns, not sample_hash).
  FileIdentity file;
  uint32_t head_crc = 0, tail_crc = 0;  // CRC-32 of the first and of the last min(64 KiB, size) bytes
  bool operator==(const GzipFileKey& o) const {
    return file.dev == o.file.dev && file.ino == o.file.ino && file.size == o.file.size &&
           file.mtime_ns == o.file.mtime_ns && head_crc == o.head_crc && tail_crc == o.tail_crc;
  }
};

// An index file opened for its windows: the descriptor stays open for the index's lifetime.
class GzipIndexFile {
 public:
  GzipIndexFile(UniqueFd fd, std::string path);
  GzipIndexFile(const GzipIndexFile&) = delete;
  GzipIndexFile& operator=(const GzipIndexFile&) = delete;
  int fd() const { return fd_.get(); }
  const std::string& path() const { return path_; }
  // Exactly n bytes at off; SysError(EIO) when the file is shorter now (truncated since loaded).
  void read(uint64_t off, void* buf, size_t n) const;

 private:
  UniqueFd fd_;
  std::string path_;
};

std::string serialize_gzip_index(const GzipIndex& idx, const GzipFileKey& key);
// Parses an index file; nullopt (and why) when the checksum, key or any structural check fails.
// `expect` = nullptr skips the key comparison (fuzzers); offsets are bounded by the key's size.
std::optional<GzipIndex> parse_gzip_index(std::string_view bytes, const GzipFileKey* expect, std::string* why);
// The same checks on an open index file, read with pread: the windows are checksummed in passing
// but not kept (the index reads them from `file` when needed). At most the points and block CRCs
// are allocated, after their counts are checked against the file's size.
std::optional<GzipIndex> load_gzip_index_file(std::shared_ptr<const GzipIndexFile> file, const GzipFileKey* expect,
                                              std::string* why);

// Key of the file behind `compressed` (fstat of its descriptor when it is a FileSource, else stat
// of `path`). Throws SysError when neither can be stat'ed.
GzipFileKey gzip_file_key(const ByteSource& compressed, const std::string& path);
// The folder index files go to (see GzipOptions::cache_dir); "" when there is none.
std::string gzip_cache_dir(const GzipOptions& opt);
// Stores `idx` as the cached index of the file behind `compressed` (key taken now), where
// open_gzip will find it: a writer that has just checked a file it wrote saves the next mount a
// pass. Returns "" when stored, else why not (never throws for I/O).
std::string store_gzip_index(const GzipIndex& idx, const ByteSource& compressed, const std::string& path,
                             const GzipOptions& opt = {});

}  // namespace nemofs
