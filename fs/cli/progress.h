// Progress of a commit on the user's terminal: `nemofs umount` and `nemofs commit` wait for the
// daemon, which writes {"done", "total", "target"} to the mount's progress file (fs/state.h) as it
// copies; this shows it on stderr when stderr is a terminal and the wait lasts more than a moment.
#pragma once

#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>

namespace nemofs {

class ProgressWatcher {
 public:
  explicit ProgressWatcher(std::string mountpoint_realpath);
  ~ProgressWatcher();  // stops and clears the progress line
  ProgressWatcher(const ProgressWatcher&) = delete;
  ProgressWatcher& operator=(const ProgressWatcher&) = delete;

 private:
  void run();
  std::string mp_;
  std::mutex mu_;
  std::condition_variable cv_;  // wakes the thread at once when the wait is over
  bool stop_ = false;
  bool shown_ = false;
  std::thread thread_;
};

}  // namespace nemofs
