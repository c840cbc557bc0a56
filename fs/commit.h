// Commit: writes the new archive beside the target, checks it, syncs it and renames it into place.
//
// The new archive is a list of pieces (CommitItem): an unchanged member is one range of the old
// archive (its original header blocks, data and padding, copied by the kernel with
// copy_file_range; holes stay holes), a changed or new member is a header in the archive's own
// style (formats/tar/tar_writer.h) followed by its bytes from wherever they lie (an overlay file
// or the old archive) and zero padding. Pieces go through an ArchiveSink so a compressing sink
// (gzip .nemo) can take the place of the plain file sink later without changing the plan.
//
// Steps: write to `<target>.nemofs-tmp-XXXXXX` in the target's folder (locked with flock so a
// second mount cannot take it), fchown/fchmod like the original, fsync, re-index with index_tar
// and compare every member's name, type, size and header bytes with the plan, compare the bytes of
// every rewritten member with their source, call `before_rename` (the journal records the result's
// identity), rename over the target, fsync the folder. Any failure removes the temporary file and
// throws CommitError; the target is then untouched.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

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
  // `data_off`, then zero padding.
  TarMember member;
  std::string header;
  int data_fd = -1;
  uint64_t data_off = 0;
};

// Where the archive's bytes go. Offsets are those of the uncompressed tar stream.
class ArchiveSink {
 public:
  virtual ~ArchiveSink() = default;
  virtual void bytes(const char* p, size_t n) = 0;
  // `len` bytes of `fd` at `off`.
  virtual void range(int fd, uint64_t off, uint64_t len) = 0;
  virtual void finish() = 0;
  uint64_t offset() const { return offset_; }

 protected:
  uint64_t offset_ = 0;
};

// A plain tar file: pwrite for bytes, copy_file_range for ranges, holes of the source kept as
// holes (SEEK_DATA/SEEK_HOLE), ftruncate to the final size at finish.
class FileSink final : public ArchiveSink {
 public:
  FileSink(int fd, std::function<void(uint64_t)> progress) : fd_(fd), progress_(std::move(progress)) {}
  void bytes(const char* p, size_t n) override;
  void range(int fd, uint64_t off, uint64_t len) override;
  void finish() override;

 private:
  void copy_data(int fd, uint64_t off, uint64_t len);
  int fd_;
  std::function<void(uint64_t)> progress_;
};

struct CommitRequest {
  int archive_fd = -1;        // the old archive (source of verbatim ranges)
  std::string archive_path;   // its path: owner and mode are taken from it
  std::string target_path;    // where the result is renamed to (the archive, or -o output=)
  std::vector<CommitItem> items;
  std::function<void(uint64_t done, uint64_t total)> progress;
  // Called after the result is synced and checked, just before the rename. May throw to abort.
  std::function<void(const ArchiveIdentity& result)> before_rename;
};

struct CommitResult {
  int fd = -1;            // the result, open and flock'ed (the caller owns it)
  uint64_t bytes = 0;     // size of the result
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
