// tar header writer: the header blocks of one member, in the style of the archive being rewritten.
//
// Byte layout written (CPython tarfile PAX_FORMAT, which is what NeMo's `tarfile.open(path, "w:")`
// produces; see tar.h for the fields):
//   [pax header block: name "././@PaxHeader", mode/uid/gid "0000000\0", size = record bytes,
//    mtime "00000000000\0", typeflag 'x', magic "ustar\0" "00", uname/gname empty]
//   [pax records, NUL-padded to 512: "<len> path=...\n" when the name is longer than 100 bytes or
//    not ASCII, "<len> size=...\n" when size >= 8 GiB (ustar size then 0), "<len> mtime=S.F\n"
//    when the archive's own members carry fractional pax mtimes and this one has a fraction]
//   ustar header block: name (truncated to 100 bytes when a pax path is written), mode "%07o\0",
//   uid/gid "%07o\0", size "%011o\0", mtime "%011o\0" (rounded to the nearest second), chksum
//   "%06o\0 ", typeflag '0' or '5', magic "ustar\0" "00", uname/gname from the archive, devmajor/
//   devminor and prefix empty. Folder names end in "/"; names carry "./" when the archive's do.
// The end of an archive: two zero blocks, then zeros up to a multiple of 10240 bytes (RECORDSIZE).
//
// Alignment padding (tar_pad): a pax global extended header that every reader skips, written
// before a member so that the member's data keeps its offset modulo the filesystem block, and a
// reflink-capable filesystem can share its blocks with the old archive (fs/edit/commit.h). The
// same shape `git archive` writes at the start of every archive:
//   ustar header block: name "pax_global_header", mode "0000666\0", uid/gid "0000000\0",
//   size = L, mtime "00000000000\0", typeflag 'g', magic "ustar\0" "00"
//   one pax record of exactly L bytes: "<L> comment=nemofs alignment padding xxx...x\n"
//   (POSIX: every character of a comment record is ignored), L = total - 512, a multiple of 512,
//   so the pad is `total` bytes with no padding of its own; total >= 1024.
#pragma once

#include <cstdint>
#include <string>

#include "formats/core/byte_source.h"
#include "formats/tar/tar.h"

namespace nemofs {

struct TarStyle {
  bool dot_slash = true;  // member names start with "./"
  bool pax_mtime = true;  // fractional mtimes go into a pax record
  uint64_t uid = 0, gid = 0;
  std::string uname = "root", gname = "root";

  // The style of an existing archive: taken from its last regular-file member (else any member).
  static TarStyle of_archive(const ByteSource& src, const TarIndex& idx);
};

struct TarMember {
  std::string path;  // normalised ("a/b"); "" = the root folder
  bool dir = false;
  uint32_t mode = 0644;
  int64_t mtime_sec = 0;
  uint32_t mtime_nsec = 0;
  uint64_t size = 0;  // data bytes (0 for folders)
};

// The archive spelling of a normalised path in this style ("./a/b", "./dir/", "./").
std::string tar_name(const std::string& path, bool dir, const TarStyle& style);
// Header blocks for one member (a multiple of 512 bytes).
std::string tar_header(const TarMember& m, const TarStyle& style);
// Zero bytes that follow `size` data bytes to fill the last block.
inline uint64_t tar_padding(uint64_t size) { return (512 - size % 512) % 512; }
// Bytes of the end-of-archive marker for an archive whose entries end at `offset`.
uint64_t tar_end_size(uint64_t offset);

// An alignment pad of exactly `total` bytes (a multiple of 512, >= 1024; throws std::invalid_argument
// otherwise).
std::string tar_pad(uint64_t total);
// The size of the alignment pad nemofs wrote at `off` in `src`, or 0 when there is none there.
uint64_t tar_pad_at(const ByteSource& src, uint64_t off);

}  // namespace nemofs
