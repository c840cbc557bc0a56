#include "fs/fuse/readahead.h"

#include <fcntl.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <string>

#include <algorithm>

namespace nemofs {

std::optional<ReadaheadHint> ReadaheadPlanner::note(int fd, uint64_t pos, uint64_t len) {
  if (fd < 0 || len == 0) return std::nullopt;
  std::lock_guard lk(mu_);
  ++clock_;
  Stream* s = nullptr;
  for (auto& c : streams_) {
    if (c.fd == fd && pos + kSlack >= c.end && pos <= c.end + kSlack) {
      s = &c;
      break;
    }
  }
  if (s) {
    s->end = std::max(s->end, pos + len);
    s->bytes += len;
  } else {
    s = &streams_[0];
    for (auto& c : streams_)
      if (c.used < s->used) s = &c;  // an unused slot has used == 0
    *s = Stream{fd, pos + len, len, pos + len, 0};
  }
  s->used = clock_;
  // Bytes read, not the span: random reads that land near each other add only their own length.
  if (s->bytes < kTrigger) return std::nullopt;
  uint64_t ahead = std::min(kWindow, s->bytes);
  uint64_t target = s->end + ahead;
  uint64_t from = std::max(s->issued, s->end);
  if (target <= from || target - from < std::min(kStep, ahead / 2)) return std::nullopt;
  s->issued = target;
  return ReadaheadHint{fd, from, target - from};
}

void Prefetcher::start() {
  std::lock_guard lk(mu_);
  if (running_) return;
  null_.reset(::open("/dev/null", O_WRONLY | O_CLOEXEC));
  if (!null_) return;  // no read-ahead: the kernel's own only
  stopping_ = false;
  thread_ = std::thread([this] { loop(); });
  running_ = true;
}

void Prefetcher::stop() {
  {
    std::lock_guard lk(mu_);
    if (!running_) return;
    stopping_ = true;
    queue_.clear();
  }
  cv_.notify_all();
  thread_.join();
  std::lock_guard lk(mu_);
  running_ = false;
  own_.clear();
  null_.reset();
}

void Prefetcher::note(int fd, uint64_t pos, uint64_t len) {
  auto h = planner_.note(fd, pos, len);
  if (!h) return;
  {
    std::lock_guard lk(mu_);
    if (!running_ || stopping_ || queue_.size() >= kQueue) return;
    queue_.push_back(*h);
  }
  cv_.notify_one();
}

int Prefetcher::own_fd(int fd) {
  struct stat want {};
  if (::fstat(fd, &want) != 0 || !S_ISREG(want.st_mode)) return -1;
  for (auto& o : own_) {
    if (o.of != fd) continue;
    struct stat have {};
    if (::fstat(o.fd.get(), &have) == 0 && have.st_dev == want.st_dev && have.st_ino == want.st_ino) {
      o.used = ++clock_;
      return o.fd.get();
    }
    o.of = -1;  // the number now names another file
  }
  UniqueFd f(::open(("/proc/self/fd/" + std::to_string(fd)).c_str(), O_RDONLY | O_CLOEXEC));
  struct stat got {};
  if (!f || ::fstat(f.get(), &got) != 0 || got.st_dev != want.st_dev || got.st_ino != want.st_ino) return -1;
  Own* slot = nullptr;
  if (own_.size() < kOwnFds) {
    own_.emplace_back();
    slot = &own_.back();
  } else {
    slot = &own_[0];
    for (auto& o : own_)
      if (o.of < 0 || o.used < slot->used) slot = &o;
  }
  slot->of = fd;
  slot->fd = std::move(f);
  slot->used = ++clock_;
  return slot->fd.get();
}

void Prefetcher::loop() {
  std::unique_lock lk(mu_);
  for (;;) {
    cv_.wait(lk, [&] { return stopping_ || !queue_.empty(); });
    if (stopping_) return;
    ReadaheadHint h = queue_.front();
    queue_.pop_front();
    lk.unlock();
    fetch(h);
    lk.lock();
  }
}

void Prefetcher::fetch(const ReadaheadHint& h) {
  // Not readahead(2)/POSIX_FADV_WILLNEED: they fill the page cache with 4 KiB folios (measured:
  // 4.0 KiB per folio, against 250-850 KiB after read() or sendfile()), and every later step,
  // the disk request, the splice into the reply, the copy to the reader, pays per folio: a
  // cold read with those hints ran at 0.66x of one without. A read through the kernel's own
  // read-ahead gets large folios and the device's largest requests: sendfile to /dev/null reads
  // the bytes into the page cache without copying them anywhere. Through a descriptor of our own
  // (its own read-ahead state, which the worker threads' splices at other offsets do not reset).
  int fd = own_fd(h.fd);
  if (fd < 0) return;
  off_t at = static_cast<off_t>(h.pos);
  uint64_t left = h.len;
  while (left && !stopping_.load(std::memory_order_relaxed)) {
    ssize_t n = ::sendfile(null_.get(), fd, &at, std::min<uint64_t>(left, kPiece));
    if (n <= 0) {
      if (n < 0 && errno == EINTR) continue;
      return;  // end of file or an error: only the hint is lost
    }
    left -= static_cast<uint64_t>(n);
  }
}

}  // namespace nemofs
