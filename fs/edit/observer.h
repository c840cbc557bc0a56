// What an edit session tells the outside world: the number of pending edits, a commit's progress
// and the outcome of a commit asked for while mounted. The CLI implements it with its state files
// (fs/cli/state.h); tests implement it to watch a session; the edit library writes no such file.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace nemofs {

class EditObserver {
 public:
  virtual ~EditObserver() = default;
  // The number of edits a commit would write changed to `n`.
  virtual void pending_edits(size_t n) {}
  // A commit to `target` has written `done` of `total` bytes (called at most every ~100 ms, and
  // once at the end), then progress_done() when it is over, whatever the outcome.
  virtual void progress(uint64_t done, uint64_t total, const std::string& target) {}
  virtual void progress_done() {}
  // A commit asked for through the mount's control call ended.
  virtual void commit_outcome(bool ok, const std::string& message) {}
};

}  // namespace nemofs
