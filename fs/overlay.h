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

namespace nemofs {

struct ArchiveIdentity {
  uint64_t dev = 0, ino = 0, size = 0;
  int64_t mtime_ns = 0;
  uint64_t sample_hash = 0;

  bool operator==(const ArchiveIdentity&) const = default;
  // The same archive: equal apart from the device number (which may change across reboots).
  bool same_archive(const ArchiveIdentity& o) const {
    return ino == o.ino && size == o.size && mtime_ns == o.mtime_ns && sample_hash == o.sample_hash;
  }
  nlohmann::json to_json() const;
  static ArchiveIdentity from_json(const nlohmann::json& j);
  // Of an open file (throws std::runtime_error on I/O failure).
  static ArchiveIdentity of_fd(int fd);
  std::string describe() const;
};

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
  ArchiveIdentity base;                      // the archive the edits apply to
  std::optional<ArchiveIdentity> committing;  // set while a commit renames its result into place
  std::vector<JournalNode> nodes;            // changed, new and moved entries
  std::vector<std::string> deleted;          // archive paths no longer present
  int64_t next_data = 1;

  nlohmann::json to_json() const;
  static Journal from_json(const nlohmann::json& j);  // throws std::runtime_error
};

class Overlay {
 public:
  explicit Overlay(const std::string& archive_path);

  const std::string& dir() const { return dir_; }
  bool exists() const;
  // nullopt when there is no journal. Throws std::runtime_error when it cannot be read or parsed.
  std::optional<Journal> load() const;
  // Creates the folder on first use. Throws std::system_error (errno in code()).
  void save(const Journal& j);
  // Creates data/<id> (O_EXCL) and returns its fd (O_RDWR | O_CLOEXEC).
  int create_data(int64_t id);
  int open_data(int64_t id) const;  // -1 with errno when missing
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

// fsync of a folder (after a rename or create inside it). Throws on failure.
void fsync_dir(const std::string& dir);
// "dir" part and "name" part of a path.
std::string dir_of(const std::string& path);
std::string base_of(const std::string& path);

}  // namespace nemofs
