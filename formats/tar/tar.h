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
//   Numbers are octal ASCII (NUL/space terminated) or, when the first byte has bit 7 set,
//   base-256 big-endian (GNU; 0xff first byte = negative, refused). chksum = sum of the header's
//   bytes with the chksum field taken as 8 spaces (unsigned; signed sums accepted too).
//   typeflag: '0'/'\0'/'7' file, '1' hard link, '2' symlink, '5' directory, '3' '4' '6' devices and
//   fifos; 'x' pax extended header for the next entry, 'g' pax global header; 'L' / 'K' GNU long
//   name / long link name for the next entry (data = the name, NUL terminated); 'S' GNU sparse.
//   pax data: records "<len> <key>=<value>\n" (len counts the whole record in bytes); `path`,
//   `linkpath`, `size` (members >= 8 GiB carry size here, ustar size is then 0), `mtime`
//   (may be fractional), `uid`, `gid` override the ustar fields. GNU.sparse.* is refused.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "formats/core/byte_source.h"

namespace nemofs {

enum class TarType : uint8_t { File, Dir, Symlink, Hardlink, Other };

struct TarEntry {
  std::string name;          // full name after pax/GNU/prefix resolution, exactly as stored
  std::string linkname;
  TarType type = TarType::File;
  char typeflag = '0';
  uint32_t mode = 0;
  uint64_t uid = 0, gid = 0;
  int64_t mtime = 0;         // whole seconds
  std::string mtime_text;    // pax mtime string when present (keeps fractional seconds)
  uint64_t header_offset = 0;  // first byte of this entry's first header block (incl. pax/L blocks)
  uint64_t data_offset = 0;    // first data byte
  uint64_t size = 0;           // data bytes
  uint64_t end_offset = 0;     // data_offset + size rounded up to 512
};

struct TarIndex {
  std::vector<TarEntry> entries;  // in archive order, metadata-only entries ('x','g','L','K') folded in
  uint64_t end_of_entries = 0;    // offset of the first end-of-archive zero block (or EOF)
};

// Reads every header, validates checksums, sizes and names, and refuses hostile input with a
// FormatError("tar", offset, what). Data ranges are checked to lie inside the source.
TarIndex index_tar(const ByteSource& src);

// Parses an octal or base-256 numeric header field; exposed for the fuzzers and unit tests.
uint64_t parse_tar_number(const unsigned char* field, size_t len, uint64_t at, const char* what);

}  // namespace nemofs
