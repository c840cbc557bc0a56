// An edit session of one .nemo (plain or gzip tar): the member namespace (fs/edit/namespace.h),
// every edit kept durably in the overlay (fs/edit/overlay.h), and commits (plan_commit, then
// write_archive) back into the archive or to `output`.
//
// The archive is locked with flock(LOCK_EX) for the life of the session, so a second writable
// session of it is refused; a commit locks its result before renaming it into place, so the lock
// follows the archive. Not thread-safe: the caller serialises calls (the writable backend holds
// one mutex around every operation).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "formats/detect/checkpoint.h"
#include "fs/edit/archive.h"
#include "fs/edit/namespace.h"
#include "fs/edit/observer.h"
#include "fs/edit/overlay.h"

namespace nemofs {

struct EditOptions {
  std::string archive_path;  // real path of the .nemo
  std::string output;        // -o output=PATH: commit there, leave the archive as it is
  bool commit_junk = false;  // -o commit_junk: commit editor/OS junk files too
  std::shared_ptr<EditObserver> observer;  // may be null
};

struct CommitOutcome {
  bool ok = true;
  int err = 0;          // the errno when !ok
  std::string message;  // one line: what was committed, or why not (and that the edits are kept)
};

class Editor {
 public:
  // Takes the checkpoint of the archive over, locks it, re-applies pending edits. Throws SysError
  // with a one-line message when the session must be refused (archive locked by another writable
  // mount, overlay for a different archive, unreadable journal).
  Editor(Checkpoint&& cp, EditOptions opts);
  ~Editor();
  Editor(const Editor&) = delete;
  Editor& operator=(const Editor&) = delete;

  MemberTree& ns() { return *ns_; }
  const EditOptions& options() const { return opts_; }
  const Overlay& overlay() const { return overlay_; }

  // ---- Edits (each throws SysError with the errno a file system answers with).
  // The folder `parent` ready to take a new entry `name`: a mutable folder, a valid name, no
  // visible entry of that name (EEXIST); a hidden view of that name is dropped.
  MemberNode& dir_for_new_entry(Ino parent, std::string_view name);
  void check_mutable_dir(MemberNode& dir);
  static void check_name(std::string_view name);
  MemberNode& new_file(MemberNode& dir, const std::string& name, mode_t mode);
  MemberNode& new_folder(MemberNode& dir, const std::string& name, mode_t mode);
  // Opening with O_TRUNC for writing.
  void truncate_on_open(MemberNode& n);
  void truncate(MemberNode& n, uint64_t size);
  void set_mode(MemberNode& n, mode_t mode);
  // Either time may be absent (UTIME_OMIT).
  void set_times(MemberNode& n, const timespec* atime, const timespec* mtime);
  size_t write(MemberNode& n, uint64_t off, const char* data, size_t size);
  void unlink(Ino parent, std::string_view name);
  void rmdir(Ino parent, std::string_view name);
  void rename(Ino parent, std::string_view name, Ino newparent, std::string_view newname, bool noreplace);
  void flush(MemberNode& n);
  void fsync(MemberNode& n, bool datasync);

  // ---- Commits.
  // Edits that a commit would write (junk excluded unless commit_junk).
  size_t pending_edits();
  // Commits now. `final`: the session ends after it (no switch to the new archive).
  CommitOutcome commit(bool final);
  // The end of the session: a final commit, the lock released, the overlay removed on success.
  CommitOutcome finish();
  // After a commit while mounted: the old archive and overlay fds stay open for a grace period,
  // then are closed here (the old archive's space is freed).
  void reap_retired(bool force = false);

 private:
  void copy_up(MemberNode& n, bool keep_bytes, bool journal = true);
  // The visible namespace entry `name` of `parent` that unlink (a file) or rmdir (a folder) may take.
  MemberNode& removable_child(Ino parent, std::string_view name, bool folder);
  // Attaches a new node under `dir` and journals it; undone if the journal cannot be saved.
  MemberNode& link_new(MemberNode& dir, const std::string& name, MemberNode& n, mode_t mode);
  void save_journal();
  size_t count_pending(const Journal& j) const;
  void note_pending(size_t n);
  void report_progress(uint64_t done, uint64_t total);
  void rebase(UniqueFd result, const std::string& path);

  EditOptions opts_;
  Overlay overlay_;
  ArchivePtr gen_;
  std::unique_ptr<MemberTree> ns_;
  UniqueFd lock_;  // the flock'ed archive
  std::vector<ArchivePtr> retired_;
  std::vector<UniqueFd> retired_fds_;
  std::chrono::steady_clock::time_point retired_at_{};
  std::chrono::steady_clock::time_point last_progress_{};
  int64_t next_data_ = 1;
  std::optional<size_t> last_pending_;
  bool committed_output_ = false;
};

}  // namespace nemofs
