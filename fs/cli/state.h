// Run-time state of active mounts, so `nemofs umount` can wait for the right daemon and
// `nemofs status` can list mounts. One JSON file per mount in the state folder:
//   root: /run/nemofs; others: $XDG_RUNTIME_DIR/nemofs, else /tmp/nemofs-<uid>.
// File name: hex FNV-1a hash of the mountpoint's real path. Contents: {"pid", "source",
// "mountpoint", "format", "mode": "ro"|"rw"}, "pending_edits" (writable mounts) and
// "source_changed": [paths] once a source file changed under the mount (its reads answer EIO),
// "remote" (a URL mount's counters: remote::stats). When a daemon exits it writes `<hash>.result`
// ({"ok": bool, "message": str}) for `nemofs umount` to print, and removes its state file.
#pragma once

#include <sys/types.h>

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "fs/edit/observer.h"

namespace nemofs {

std::string state_dir();  // created (0700) if missing
std::string state_file_for(const std::string& mountpoint_realpath);
std::string result_file_for(const std::string& mountpoint_realpath);
// While a writable mount commits: {"done", "total", "target"} (bytes), for `nemofs umount`/`commit`.
std::string progress_file_for(const std::string& mountpoint_realpath);

void write_state(const std::string& mountpoint_realpath, const nlohmann::json& state);
std::optional<nlohmann::json> read_state(const std::string& mountpoint_realpath);
void remove_state(const std::string& mountpoint_realpath);
void write_result(const std::string& mountpoint_realpath, bool ok, const std::string& message);
// Adds `path` to the mount's "source_changed" list (once). Best effort: never throws.
void note_source_changed(const std::string& mountpoint_realpath, const std::string& path);
// Read-modify-write of the mount's state file under the process's state lock (so that it does
// not undo another thread's note). Best effort: never throws; nothing when there is no state file.
void update_state(const std::string& mountpoint_realpath, const std::function<void(nlohmann::json&)>& fn);
std::optional<nlohmann::json> take_result(const std::string& mountpoint_realpath);  // reads and removes

struct MountInfo {
  std::string source, mountpoint, fstype;
};
// Mounts of type fuse.nemofs (from /proc/self/mountinfo).
std::vector<MountInfo> nemofs_mounts();
bool is_nemofs_mount(const std::string& mountpoint_realpath);

// The state files of one mount, kept up to date by its edit session (pending edits, commit
// progress, the outcome of `nemofs commit`).
class StateObserver final : public EditObserver {
 public:
  explicit StateObserver(std::string mountpoint_realpath) : mp_(std::move(mountpoint_realpath)) {}
  void pending_edits(size_t n) override;
  void progress(uint64_t done, uint64_t total, const std::string& target) override;
  void progress_done() override;
  void commit_outcome(bool ok, const std::string& message) override;

 private:
  std::string mp_;
};

}  // namespace nemofs
