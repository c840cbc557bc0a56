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
// Sharing blocks (plain archives): an unchanged member copied with copy_file_range costs no copy
// and no disk space on a reflink filesystem (XFS, btrfs) when its bytes keep their offset modulo
// the filesystem block: the kernel then shares the old archive's extents. An edit that changes a
// member's size in 512-byte blocks shifts every later member; align_for_sharing puts an alignment
// pad (tar_pad: a pax global header every reader skips, 1 KiB to one block + 512 bytes) before the
// first member of each shifted run of at least 64 KiB, so the shift becomes a multiple of the
// block. Pads nemofs wrote before are dropped first, so they never pile up. Done on every
// filesystem (an archive moved to XFS later benefits too); gzip archives cannot share blocks and
// get no pads.
//
// Steps: write to `<target>.nemofs-tmp-XXXXXX` in the target's folder (locked with flock so a
// second mount cannot take it), fchown/fchmod like the original, fsync, re-index with index_tar
// and compare every member's name, type, size and header bytes with the plan, compare the bytes of
// every rewritten member with their source, call `before_rename` (the journal records the result's
// identity), rename over the target, fsync the folder. Any failure removes the temporary file and
// throws SysError; the target is then untouched. For gzip, the check first inflates the whole
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
#include "formats/tar/tar.h"
#include "formats/tar/tar_writer.h"
#include "fs/edit/overlay.h"
#include "fs/edit/sinks.h"

namespace nemofs {

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
  // Alignment padding written before the item (tar_pad; empty = none): align_for_sharing sets it.
  std::string pad;
  int data_fd = -1;
  uint64_t data_off = 0;
  SourcePtr data_src;
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
  std::function<void(const FileIdentity& result)> before_rename;
};

struct CommitResult {
  UniqueFd fd;            // the result, open and flock'ed
  uint64_t bytes = 0;     // size of the result (on disk: compressed for gzip)
  uint64_t shared = 0;    // of those, bytes in extents shared with the old archive (reflinks)
  uint64_t tar_bytes = 0;  // size of its tar stream
  FileIdentity identity;
};

// Throws SysError with a one-line message (its errno: ENOSPC, EIO, ...).
CommitResult write_archive(const CommitRequest& req);

// Sets every item's pad for a plain archive written to a filesystem of `block`-byte blocks (see
// above): `old` is the old archive, `archive_fd` its descriptor (members renamed but not edited
// are read from it too). Verbatim items that start with a pad nemofs wrote start after it.
// Returns the pad bytes added.
uint64_t align_for_sharing(std::vector<CommitItem>& items, const ByteSource& old, int archive_fd, uint64_t block);
// The smallest run of bytes from the old archive worth a pad.
inline constexpr uint64_t kMinShareRun = 64 << 10;

// Removes `<target>.nemofs-tmp-*` left by a crashed commit (those nobody holds locked).
void remove_stale_temporaries(const std::string& target_path);

}  // namespace nemofs
