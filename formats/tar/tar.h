// tar index: where each member's header blocks and data lie, without extracting anything.
//
// Byte layout (POSIX.1-2001 pax / ustar, plus the GNU extensions old Pythons wrote):
//   The archive is a sequence of 512-byte blocks. Each entry = one header block, then its data
//   padded with zeros to a multiple of 512. The archive ends with two all-zero blocks (readers
//   also accept one, or a clean EOF, as CPython's tarfile does); writers then pad to 10240 bytes.
//   Header block fields (offset, length): name 0,100 | mode 100,8 | uid 108,8 | gid 116,8 |
//   size 124,12 | mtime 136,12 | chksum 148,8 | typeflag 156,1 | linkname 157,100 |
//   magic 257,6 ("ustar\0" POSIX, "ustar " GNU) | version 263,2 | uname 265,32 | gname 297,32 |
//   devmajor 329,8 | devminor 337,8 | prefix 345,155 (POSIX: path = prefix + "/" + name).
//   Numbers are octal ASCII or, when the first byte has bit 7 set, base-256 big-endian (GNU; 0xff
//   first byte = negative: refused, except for mtime). Octal fields are read as every reader reads
//   them: leading spaces skipped, the field ends at its first NUL (an empty or NUL-led field is 0),
//   digits may be followed by spaces only. chksum = sum of the header's bytes with the chksum field
//   taken as 8 spaces (unsigned, or signed as historic Unix tars computed it: GNU tar accepts both).
//   A v7 / pre-POSIX header has no magic (zeros at 257): it is recognised by its checksum alone.
//   mtime: negative (base-256 0xff..., pax "-5") is shown as 0; beyond kMaxTarMtime as kMaxTarMtime.
//   typeflag: '0'/'\0'/'7' file, '1' hard link, '2' symlink, '5' directory, '3' '4' '6' devices and
//   fifos; 'x' pax extended header for the next entry, 'g' pax global header; 'L' / 'K' GNU long
//   name / long link name for the next entry (data = the name, NUL terminated); 'S' GNU sparse.
//   pax data: records "<len> <key>=<value>\n" (len counts the whole record in bytes); `path`,
//   `linkpath`, `size` (members >= 8 GiB carry size here, ustar size is then 0), `mtime`
//   (may be fractional), `uid`, `gid` override the ustar fields.
//
// Sparse members (a file with holes stores only its data regions, back to back; the map says where
// each region lies in the logical file; holes read as zeros). Four encodings, as GNU tar writes them:
//   old GNU, typeflag 'S' (--format=gnu|oldgnu -S): header 386: 4 x (offset 12, numbytes 12) octal,
//     482 isextended (1 byte), 483 realsize 12. When isextended, the next blocks are extension
//     blocks: 21 x (offset 12, numbytes 12) at 0, isextended at 504. The list ends at the first
//     entry whose offset or numbytes field starts with NUL. Data follows the last extension block;
//     size 124 = stored data bytes.
//   pax 0.0: records GNU.sparse.size (logical size), GNU.sparse.numblocks, then that many
//     GNU.sparse.offset / GNU.sparse.numbytes records, in order.
//   pax 0.1: GNU.sparse.size, GNU.sparse.numblocks, GNU.sparse.map = "off,len,off,len,...",
//     GNU.sparse.name (the real name; the ustar name is "./GNUSparseFile.<pid>/<name>").
//   pax 1.0: GNU.sparse.major=1, GNU.sparse.minor=0, GNU.sparse.name, GNU.sparse.realsize; the map
//     opens the member's data: decimal numbers, each ending in '\n': the region count N, then N
//     (offset, length) pairs; padded with NULs to a 512 boundary. The data regions follow; the
//     member's size field (ustar or pax `size`) counts map blocks + data.
//   A map whose regions go backwards or overlap, run past the logical size, or whose data run past
//   the stored bytes is refused. Zero-length regions (GNU tar ends a file that ends in a hole with
//   (realsize, 0)) are accepted and dropped.

#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "formats/core/byte_source.h"

namespace nemofs {

// Largest mtime shown (seconds): its nanoseconds still fit an int64 with a fraction added.
constexpr int64_t kMaxTarMtime = INT64_MAX / 1000000000 - 1;

// One data region of a sparse member: `length` bytes at `offset` of the logical file.
struct SparseRegion {
  uint64_t offset = 0;
  uint64_t length = 0;
};

enum class TarType : uint8_t { File, Dir, Symlink, Hardlink, Other };

// What few members have (links, pax mtimes, sparse maps), kept beside the entry so that the
// common member (a plain file or folder) costs only TarEntry itself: an index of 300,000 members
// is held for the life of a mount (issue 19: ~120 bytes a member, not ~210 plus vector doubling).
struct TarEntryRare {
  std::string linkname;
  std::string mtime_text;             // pax mtime string when present (keeps fractional seconds)
  std::vector<SparseRegion> regions;  // sparse: non-empty data regions, ascending, data back to back
};

struct TarEntry {
  std::string name;            // full name after pax/GNU/prefix resolution, exactly as stored
  uint64_t header_offset = 0;  // first byte of this entry's first header block (incl. pax/L blocks)
  uint64_t data_offset = 0;    // first data byte
  uint64_t size = 0;           // data bytes of the member as shown (a sparse member: its logical size)
  uint64_t end_offset = 0;     // data_offset + stored_size rounded up to 512
  uint64_t stored_size = 0;    // data bytes in the archive from data_offset (== size unless sparse)
  int64_t mtime = 0;           // whole seconds
  uint64_t uid = 0, gid = 0;
  uint32_t mode = 0;
  TarType type = TarType::File;
  char typeflag = '0';
  bool sparse = false;         // a GNU sparse member (any encoding)
  bool mtime_clamped = false;  // the stored mtime was negative or past kMaxTarMtime
  std::shared_ptr<const TarEntryRare> rare;  // null when every field of it would be empty

  const std::string& linkname() const { return rare ? rare->linkname : empty_rare().linkname; }
  const std::string& mtime_text() const { return rare ? rare->mtime_text : empty_rare().mtime_text; }
  const std::vector<SparseRegion>& regions() const { return rare ? rare->regions : empty_rare().regions; }

 private:
  static const TarEntryRare& empty_rare();
};

struct TarIndex {
  // In archive order, metadata-only entries ('x','g','L','K') folded in. A deque: growing it
  // never holds two copies of every entry (a vector's doubling did, at the peak of a mount).
  std::deque<TarEntry> entries;
  uint64_t end_of_entries = 0;    // offset of the first end-of-archive zero block (or EOF)
  bool end_marker = false;        // an end-of-archive zero block was seen (not just EOF)
};

// Reads every header, validates checksums, sizes and names, and refuses hostile input with a
// FormatError("tar", offset, what). Data ranges are checked to lie inside the source.
TarIndex index_tar(const ByteSource& src);
// The same, handing each entry to `each` as soon as it is read (in archive order) instead of
// keeping it: a caller that turns entries into something else (a mount's tree) never holds the
// whole index. `idx` gets end_of_entries and end_marker; its entries are left alone.
void index_tar(const ByteSource& src, TarIndex& idx, const std::function<void(TarEntry&&)>& each);

// Parses an octal or base-256 numeric header field; exposed for the fuzzers and unit tests.
uint64_t parse_tar_number(const unsigned char* field, size_t len, uint64_t at, const char* what);

// True when a 512-byte block is a tar header: its checksum field matches the unsigned or signed sum.
bool tar_checksum_ok(const unsigned char* block);

// The sparse map parsers, exposed for the fuzzers and unit tests. Each returns the regions as
// listed (zero-length ones included) or throws FormatError(at, ...).
//   old GNU: `header` is the 'S' header block; `ext` the extension blocks that follow (512 bytes
//   each, as many as the isextended chain asks; `ext_needed` is set to how many it asked for when
//   more are needed than given).
std::vector<SparseRegion> parse_sparse_oldgnu(const unsigned char* header, const std::string& ext, uint64_t at,
                                              size_t* ext_needed);
//   pax 0.1: the value of GNU.sparse.map.
std::vector<SparseRegion> parse_sparse_map01(const std::string& map, uint64_t at);
//   pax 1.0: the start of the member's data; `*map_bytes` = the bytes the map takes (whole blocks).
//   Throws when `data` ends before the map does.
std::vector<SparseRegion> parse_sparse_map10(const std::string& data, uint64_t at, uint64_t* map_bytes);
// Checks a map against the logical size and the stored bytes (the refusals named above) and
// returns it without zero-length regions. `name` names the member in messages.
std::vector<SparseRegion> check_sparse_map(const std::vector<SparseRegion>& map, uint64_t logical_size,
                                           uint64_t stored, const std::string& name, uint64_t at);

}  // namespace nemofs
