// gzip random access: a gzip-compressed .nemo (NeMo < 1.7) served without decompressing it.
//
// Byte layout of a gzip file (RFC 1952): one or more members, back to back. Each member:
//   0  1  ID1 = 0x1f
//   1  1  ID2 = 0x8b
//   2  1  CM  = 8 (deflate; anything else is refused)
//   3  1  FLG: bit0 FTEXT, bit1 FHCRC, bit2 FEXTRA, bit3 FNAME, bit4 FCOMMENT, bits 5-7 reserved (must be 0)
//   4  4  MTIME (LE), 8 1 XFL, 9 1 OS
//   then, in this order, only when their flag is set:
//     FEXTRA:   u16 LE XLEN, then XLEN bytes
//     FNAME:    zero-terminated ISO 8859-1 name      (Python's tarfile "w:gz" writes it)
//     FCOMMENT: zero-terminated comment
//     FHCRC:    u16 LE = low 16 bits of the CRC-32 of every header byte before it
//   then a raw deflate stream (RFC 1951), then the trailer:
//     u32 LE CRC-32 of the member's uncompressed bytes, u32 LE ISIZE = their count mod 2^32.
// After the last member, zero bytes (padding) are skipped silently, as CPython's gzip module does.
// Other bytes after the last complete member (a download with junk appended, a second archive
// concatenated badly) end the stream where `gzip -d` ("trailing garbage ignored") and `tar xzf` end
// it: the index records where they start (GzipIndex::trailing_at) and the reader of the stream
// decides; a .nemo accepts them with a warning only when its tar ended with end-of-archive blocks
// (formats/detect), so a truncated archive is never mistaken for a complete one. Bytes that start
// with the gzip magic are a member and must be one: a damaged last member is refused.
// Concatenated members are one logical stream (`cat a.gz b.gz` decompresses to a + b).
//
// Random access (zran-style): deflate cannot be entered at an arbitrary byte, but it can be
// re-entered at a deflate block boundary given the bit position there and the 32 KiB of output
// before it (the back-reference window). One streaming pass records such access points every few
// MiB (spacing grows when needed so the index stays under ~0.75% of the uncompressed size), and
// a CRC-32 for every fixed-size block of output, so every block inflated later is verified before
// it is served: if the archive changes under a mount, reads fail with EIO instead of returning
// wrong bytes. Member starts need no window (a member cannot refer back into the previous one).
//
// Output is cut into blocks: block k of access point i covers
//   [points[i].out + k * block_size, min(points[i].out + (k+1) * block_size, points[i+1].out))
// (the last point's chunk ends at the uncompressed size), numbered globally in that order.
//
// The index file that persists an index: formats/gzip/index_file.h. Reads served through an index:
// formats/gzip/gzip_source.h. Code outside formats/gzip includes formats/gzip/gzip_index.h.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "formats/core/byte_source.h"

namespace nemofs {

struct GzipOptions {
  uint64_t min_span = 1u << 20;     // least uncompressed distance between access points
  double max_index_ratio = 0.0075;  // stored index bytes / uncompressed bytes (points spread out to stay under)
  uint32_t block_size = 256u << 10;  // CRC and cache granularity (a new index only)
  size_t cache_bytes = 16u << 20;   // inflated blocks kept in memory, per source (see GzipSource)
  // Where index files live: nullopt = $XDG_CACHE_HOME/nemofs or ~/.cache/nemofs; "" = never persist.
  std::optional<std::string> cache_dir;
  bool progress = true;              // progress on stderr during a long first pass (tty only, after ~1 s)
  uint64_t max_uncompressed = 0;     // refuse streams that inflate to more (0 = no limit; fuzzers set one)
};

struct GzipPoint {
  uint64_t out = 0;          // uncompressed offset
  uint64_t in = 0;           // compressed offset of the first whole byte to feed
  uint8_t bits = 0;          // bits of the byte at in-1 to prime first
  uint8_t window_method = 0;  // 0 stored, 1 zlib
  uint16_t window_len = 0;   // uncompressed window bytes (the output just before `out`)
  uint32_t window_stored = 0;  // bytes in `windows`
  uint64_t window_off = 0;   // where in GzipIndex::windows, or in the index file (window_file set)
  uint32_t window_crc = 0;   // CRC-32 of the stored window bytes (checked when read from the file)
  uint64_t first_block = 0;  // global id of this point's first block
};

class GzipIndexFile;  // formats/gzip/index_file.h

struct GzipIndex {
  uint32_t block_size = 256u << 10;
  uint64_t compressed_size = 0;
  uint64_t uncompressed_size = 0;
  uint32_t members = 0;
  // Compressed offset where bytes that are neither a gzip member nor zero padding start; 0 = none
  // (the first member always starts at 0, so 0 cannot be such an offset).
  uint64_t trailing_at = 0;
  std::vector<GzipPoint> points;
  std::vector<uint32_t> block_crcs;
  std::string windows;  // stored windows at each point's window_off (may hold other bytes between)
  // When set, the stored windows are read from this file at window_off instead (windows is empty).
  std::shared_ptr<const GzipIndexFile> window_file;

  // Chunk (point) holding uncompressed offset `off` < uncompressed_size.
  size_t point_of(uint64_t off) const;
  // Global block id holding `off` < uncompressed_size, and a block's [start, end).
  uint64_t block_of(uint64_t off) const;
  std::pair<uint64_t, uint64_t> block_range(uint64_t block) const;
  size_t point_of_block(uint64_t block) const;
  // The window of point i, inflated (throws SysError(EIO) when it does not decode, or when its
  // index file no longer holds it).
  std::string window(size_t i) const;
  // The stored (possibly compressed) bytes of point i's window: in `windows`, or read from the
  // index file into `buf` and checked against the point's CRC (SysError(EIO) when lost or changed).
  const char* stored_window(size_t i, std::string& buf) const;
  // Window bytes held in memory (0 when they are read from the index file).
  uint64_t resident_window_bytes() const { return windows.empty() ? 0 : windows.capacity(); }
};

// Accumulates an index while uncompressed output flows past in order: the first pass (inflating)
// uses it, and so can a writer that deflates a new archive (it may add points after Z_FULL_FLUSH
// with an empty window). Points must be added at increasing offsets.
class GzipIndexRecorder {
 public:
  GzipIndexRecorder(uint32_t block_size, uint64_t min_span, double max_index_ratio);
  void output(const unsigned char* p, size_t n);  // the next uncompressed bytes
  uint64_t out() const { return out_; }
  // A new gzip member starts; member_crc() / member_out() then cover only its bytes (its trailer).
  void member_begin();
  uint32_t member_crc() const;
  uint64_t member_out() const { return member_out_; }
  // Whether spacing and the size budget call for a point with a window of `window_len` bytes at
  // the current output offset.
  bool want_point(size_t window_len) const;
  // A point at the current output offset; `window` = the last window_len output bytes
  // (<= 32768; empty where no back-reference can reach before this point, e.g. a member start).
  void add_point(uint64_t in, uint8_t bits, const unsigned char* window, size_t window_len);
  GzipIndex finish(uint64_t compressed_size, uint32_t members, uint64_t trailing_at = 0);

  // For an index built while its blocks are served (a lazy raw deflate index): the index so far,
  // the end of its last closed block, and how many blocks are closed.
  const GzipIndex& partial() const { return idx_; }
  uint64_t block_start() const { return block_start_; }
  size_t blocks() const { return idx_.block_crcs.size(); }
  // Forgets everything after the last access point (its blocks, the output since), so that
  // recording can resume there with a fresh inflate started at that point.
  void rewind_to_last_point();

 private:
  void close_block();
  void flush_segment();
  GzipIndex idx_;
  uint64_t min_span_;
  double ratio_;
  uint64_t out_ = 0;
  uint64_t block_start_ = 0;
  uint32_t block_crc_ = 0;
  // CRC-32 of the output since the last block start or member start, whichever is later: every
  // byte is checksummed once, then folded into the block's and the member's CRC (crc32_combine).
  uint32_t seg_crc_ = 0;
  uint64_t seg_len_ = 0;
  uint32_t member_crc_ = 0;
  uint64_t member_out_ = 0;
  uint64_t last_point_out_ = 0;
  uint64_t index_bytes_ = 0;
  uint64_t window_estimate_ = 16384;
};

// One streaming pass over a gzip file: validates every member (header, deflate data, CRC-32,
// ISIZE) and records access points. Bad or truncated input throws FormatError("gzip", offset, ...);
// trailing bytes after the last member (not zero padding, not a gzip magic) set trailing_at.
// `label` names the file in progress output.
GzipIndex build_gzip_index(const ByteSource& compressed, const GzipOptions& opt, const std::string& label = {});

// The first byte at or after `off` that is not zero padding (src.size() when only zeros follow).
uint64_t skip_gzip_padding(const ByteSource& src, uint64_t off);

// The gzip member header at `off`: returns the offset of its deflate data. FormatError if invalid.
uint64_t parse_gzip_member_header(const ByteSource& src, uint64_t off);

}  // namespace nemofs
