// The durable overlay of a writable .nemo mount: where edits live until they are committed.
//
// On disk, beside the archive (same filesystem, so the commit's rename and space accounting work):
//   <dir>/.<name>.nemofs/
//     journal.json     the namespace as it differs from the archive (see Journal), replaced
//                      atomically: write journal.json.tmp, fsync, rename, fsync the folder
//     data/<n>         the bytes of one edited or new file (a copy-up of the member, then edited
//                      in place; written by pwrite, fdatasync'ed at close/fsync)
// The folder is created by the first mutation, so a writable mount that never writes leaves
// nothing behind. A data file the journal does not name is garbage from a crash and is removed
// when the journal is loaded. The journal never names a data file before its bytes are complete
// (copy-up: copy, fdatasync, then save the journal), so kill -9 or a power cut at any point leaves
// either the previous state or the new one.
//
// Archive identity: (dev, inode, size, mtime in ns, a hash of the first and last 64 KiB). Recorded
// when the overlay is first written; an overlay whose identity does not match the archive is never
// applied. While a commit renames its result over the archive, the journal holds the identity of
// the result as `committing`: finding that identity on the next mount means the commit completed
// and the overlay is obsolete.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "formats/core/io.h"

namespace nemofs {

// The archive identity a journal records is a FileIdentity with its sample hash (formats/core/io.h),
// written as {"dev", "ino", "size", "mtime_ns", "sample_hash"}: ctime is not part of it (a rename
// into place changes ctime, and journals already on disk do not carry it).
nlohmann::json identity_to_json(const FileIdentity& id);
FileIdentity identity_from_json(const nlohmann::json& j);  // throws nlohmann::json::exception
// Of an open archive, with its sample hash.
inline FileIdentity archive_identity(int fd) { return FileIdentity::of_fd(fd, true); }

// One namespace entry that differs from the archive (journal.json "nodes").
struct JournalNode {
  std::string path;                  // normalised ("a/b"); "" is the root
  bool dir = false;
  std::optional<std::string> origin;  // the archive path whose bytes (file) / header (dir) it carries
  int64_t data = -1;                 // files: overlay data file number, or -1 (bytes of `origin`)
  uint32_t mode = 0644;
  int64_t mtime_ns = 0;              // files with data: the data file's own mtime is authoritative
};

struct Journal {
  FileIdentity base;                      // the archive the edits apply to
  std::optional<FileIdentity> committing;  // set while a commit renames its result into place
  std::vector<JournalNode> nodes;            // changed, new and moved entries
  std::vector<std::string> deleted;          // archive paths no longer present
  int64_t next_data = 1;

  nlohmann::json to_json() const;
  static Journal from_json(const nlohmann::json& j);  // throws SysError(EINVAL)
};

class Overlay {
 public:
  explicit Overlay(const std::string& archive_path);

  const std::string& dir() const { return dir_; }
  bool exists() const;
  // nullopt when there is no journal. Throws SysError when it cannot be read or parsed.
  std::optional<Journal> load() const;
  // Creates the folder on first use. Throws SysError.
  void save(const Journal& j);
  // Creates data/<id> (O_EXCL) and returns it open read-write. Throws SysError.
  UniqueFd create_data(int64_t id);
  std::optional<UniqueFd> open_data(int64_t id) const;  // nullopt when missing
  std::string data_path(int64_t id) const;
  void remove_data(int64_t id);
  // Removes data files not in `keep` (crash leftovers).
  void remove_unreferenced(const std::vector<int64_t>& keep);
  // Removes the journal, then every data file, then the folder.
  void remove_all();

 private:
  void ensure_dirs();
  std::string dir_;
};

}  // namespace nemofs
