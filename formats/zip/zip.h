// A read-only zip index: the central directory is the truth, local headers only give data offsets.
//
// Byte layout (PKWARE APPNOTE 6.3; formats.md 2.3), all integers little-endian:
//   local header   "PK\3\4" ver u16, flags u16, method u16, time u16, date u16, crc u32,
//                  csize u32, usize u32, name_len u16, extra_len u16, name, extra, DATA
//                  (torch writes crc/sizes as 0 with flag bit 3 and pads `extra` so DATA is
//                  64-byte aligned: data offset = header + 30 + name_len + extra_len, taken
//                  from THIS header, never from the central directory's extra length)
//   [data descriptor "PK\7\8" crc, csize, usize (u32 or u64)]  -- ignored
//   central dir    "PK\1\2" made u16, ver u16, flags u16, method u16, time u16, date u16, crc u32,
//                  csize u32, usize u32, name_len u16, extra_len u16, comment_len u16, disk u16,
//                  iattr u16, eattr u32, local_header_offset u32, name, extra, comment
//                  (zip64 extra id 0x0001 holds, in this order and only for fields that are
//                  0xFFFFFFFF: usize u64, csize u64, local_header_offset u64, disk u32)
//   zip64 EOCD     "PK\6\6" size u64, made u16, ver u16, disk u32, cd_disk u32,
//                  entries_disk u64, entries u64, cd_size u64, cd_offset u64
//   zip64 locator  "PK\6\7" disk u32, zip64_eocd_offset u64, disks u32   (20 bytes)
//   EOCD           "PK\5\6" disk u16, cd_disk u16, entries_disk u16, entries u16, cd_size u32,
//                  cd_offset u32, comment_len u16, comment              (22 bytes + comment)
// torch.save always writes the zip64 records (formats.md 2.3). Offsets are relative to the start
// of the source; bytes prepended before the zip (a stub) are tolerated the way CPython's zipfile
// does, by shifting every offset by (start of the end records - cd_size - cd_offset).
//
// Entries: method 0 (stored) is served as a SubSource of the zip (zero-copy, file_range works);
// method 8 (deflate, third-party re-zipped files) is a GzipSource over the raw deflate data
// (formats/gzip/gzip_source.h): indexed lazily on its first read, inflated blocks kept in the
// process-wide bounded inflate cache, so no entry is ever held whole in memory; an entry whose
// data does not inflate to its declared size fails reads with EIO. Encrypted
// entries, multi-disk archives and other methods are refused. CRCs are not checked (torch can
// write wrong ones on purpose: set_crc32_options(False)).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "formats/core/byte_source.h"

namespace nemofs {

struct ZipEntry {
  std::string name;
  uint16_t flags = 0;
  uint16_t method = 0;
  uint32_t crc = 0;
  uint64_t csize = 0;
  uint64_t usize = 0;
  uint64_t local_header = 0;  // already shifted by the stub length
};

struct ZipIndex {
  std::vector<ZipEntry> entries;  // central-directory order
  std::unordered_map<std::string, size_t> by_name;  // the last entry of a duplicated name wins
  const ZipEntry* find(std::string_view name) const;
};

// Reads the end records and the central directory. Throws FormatError("zip", offset, ...).
ZipIndex index_zip(const ByteSource& src);

// Offset of an entry's data (reads its local header). Throws FormatError.
uint64_t zip_data_offset(const ByteSource& src, const ZipEntry& e);

// The entry's uncompressed bytes as a source (see the header comment). Throws FormatError.
SourcePtr open_zip_entry(const SourcePtr& zip, const ZipEntry& e);

}  // namespace nemofs
