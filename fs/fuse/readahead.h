// Read-ahead of the source files behind sequential reads of a mount.
//
// Why: a cold sequential read through the mount reaches the disk as the FUSE requests' splices
// from the source file, 128 KiB-1 MiB at a time, one or two in flight, issued by whichever worker
// thread took the request, all through one shared file descriptor (one readahead state). The disk
// then sees small requests at a queue depth near 1 (iostat: ~0.75-1.5 MB per request, aqu-sz 1.3;
// a plain read of the file: ~3 MB, aqu-sz 2.2), and each request waits for its own bytes.
// ReadaheadPlanner recognises a sequential stream of file segments (per source fd, whatever
// thread or FUSE file it came through: the tensors of a .ckpt read one after another are one
// stream of the archive) and asks for the next window of that file ahead of the reader;
// Prefetcher reads those windows into the page cache on its own thread, through its own
// descriptor of the file, so no reply waits for them and the disk keeps a queue of large requests.
// Only the page cache holds what was read ahead (reclaimable memory, at most one window per
// stream, plus the device's own read-ahead of the prefetcher's reads, beyond what the reader asked
// for); random reads never form a stream and get no read-ahead.
//
// A hint names a file by descriptor number: if that descriptor is closed (and perhaps reused)
// before the hint runs, the worst case is read-ahead of bytes nobody asked for, never a wrong
// answer: nothing read ahead is handed to anyone (replies still splice from the source's fd).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "formats/core/io.h"

namespace nemofs {

struct ReadaheadHint {
  int fd = -1;
  uint64_t pos = 0;
  uint64_t len = 0;
};

class ReadaheadPlanner {
 public:
  // A stream reads ahead once its segments have read this many bytes (random reads never do: a
  // read joins a stream only when it starts within kSlack of the stream's end).
  static constexpr uint64_t kTrigger = 2u << 20;
  // How far ahead of the reader it keeps the source being read: the smaller of the bytes the
  // stream read so far and kWindow (a short sequential read wastes at most what it read).
  static constexpr uint64_t kWindow = 32u << 20;
  // A hint is issued once this much of the window is missing (fewer, larger hints).
  static constexpr uint64_t kStep = 8u << 20;
  // Requests of one stream may arrive out of order (async readahead keeps two or more in flight
  // on different threads) or skip what the mount's page cache still holds: a segment starting
  // within this distance of a stream's end, before or after it, continues it.
  static constexpr uint64_t kSlack = 4u << 20;
  static constexpr size_t kStreams = 16;

  // Records a segment [pos, pos + len) of `fd` just handed to a reader; returns the read-ahead
  // to issue now, if any. Thread-safe.
  std::optional<ReadaheadHint> note(int fd, uint64_t pos, uint64_t len);

 private:
  struct Stream {
    int fd = -1;
    uint64_t end = 0;     // the furthest byte read
    uint64_t bytes = 0;   // bytes read by the segments that formed the stream
    uint64_t issued = 0;  // read-ahead asked up to here
    uint64_t used = 0;    // LRU clock
  };
  std::mutex mu_;
  Stream streams_[kStreams];
  uint64_t clock_ = 0;
};

// Reads the hinted bytes into the page cache on one background thread (Prefetcher::fetch says
// how). Hints that find the queue full are dropped (the kernel's own read-ahead still runs).
// start() in the serving process (threads do not survive fork), stop() before the sources close.
class Prefetcher {
 public:
  ~Prefetcher() { stop(); }
  void start();
  void stop();
  // Plans and queues: the cheap part runs on the caller's thread.
  void note(int fd, uint64_t pos, uint64_t len);
  bool running() const { return running_; }

 private:
  void loop();
  void fetch(const ReadaheadHint& h);
  // This thread's own descriptor of the file `fd` names (reopened through /proc/self/fd, checked
  // to be the same inode), or -1.
  int own_fd(int fd);

  static constexpr size_t kQueue = 64;
  static constexpr size_t kOwnFds = 16;
  static constexpr uint64_t kPiece = 2u << 20;  // per sendfile: stop() waits for at most one
  ReadaheadPlanner planner_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<ReadaheadHint> queue_;
  std::atomic<bool> stopping_{false};
  std::atomic<bool> running_{false};
  std::thread thread_;
  UniqueFd null_;
  struct Own {
    int of = -1;  // the descriptor it was opened from
    UniqueFd fd;
    uint64_t used = 0;
  };
  std::vector<Own> own_;  // the prefetch thread's only (stop() clears it after the join)
  uint64_t clock_ = 0;
};

}  // namespace nemofs
