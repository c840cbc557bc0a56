#include "formats/remote/source.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <deque>
#include <thread>

#include "formats/core/errors.h"
#include "formats/core/hash.h"
#include "formats/core/io.h"
#include "formats/remote/remote.h"

namespace nemofs::remote {

namespace {

ChangeReporter g_reporter = nullptr;
// Read-ahead parts: blocks per request (each part lands whole, so a reader waits for at most one).
constexpr uint64_t kPartBlocks = 2;
constexpr uint64_t kPartBytes = kPartBlocks * kBlock;
// A stream's read-ahead window grows to this many blocks (32 MiB: 8 parts in flight keep a
// loopback server's pace; the pool bounds what all streams hold).
constexpr uint64_t kMaxWindow = 16;
// Memory parts this far behind a read are let go even when not all of their bytes were handed out
// (a reader that skipped some). Not closer: the kernel's read-ahead asks for the last pages of a
// range up to several MiB after the first pages of the next one.
constexpr uint64_t kBehind = 32u << 20;

// Buffers of memory parts, shared by every object: at most kPoolParts, reused (a fresh buffer
// would cost a page fault and a zeroed page per 4 KiB, as much as the page cache it replaces).
class PartPool {
 public:
  static constexpr size_t kPoolParts = 16;  // 64 MiB: a full window (8 parts) per stream, twice
  std::unique_ptr<char[]> take() {
    std::lock_guard lk(mu_);
    if (!free_.empty()) {
      auto b = std::move(free_.back());
      free_.pop_back();
      return b;
    }
    if (made_ == kPoolParts) return nullptr;
    ++made_;
    return std::unique_ptr<char[]>(new char[kPartBytes]);
  }
  void give(std::unique_ptr<char[]> b) {
    std::lock_guard lk(mu_);
    free_.push_back(std::move(b));
  }

 private:
  std::mutex mu_;
  std::vector<std::unique_ptr<char[]>> free_;
  size_t made_ = 0;
};

PartPool& part_pool() {
  static PartPool* p = new PartPool;  // never destroyed: parts may outlive static destruction
  return *p;
}
// Off until the serving process turns it on (enable_prefetch): a worker that ran while the mount
// indexed would be lost by the daemon's fork with its blocks still marked in flight.
std::atomic<bool> g_prefetch{false};

int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

RetryPolicy read_policy() {
  RetryPolicy p;
  p.retries = options().retries;
  p.retry_refused = true;
  p.low_speed_s = options().timeout_s;
  return p;
}

// An ETag without the weak prefix and quotes: the Hub quotes X-Linked-Etag, listings may not.
std::string bare_etag(std::string e) {
  if (e.rfind("W/", 0) == 0) e.erase(0, 2);
  if (e.size() >= 2 && e.front() == '"' && e.back() == '"') e = e.substr(1, e.size() - 2);
  return e;
}

std::string hex64(uint64_t v) {
  char b[17];
  std::snprintf(b, sizeof b, "%016llx", static_cast<unsigned long long>(v));
  return b;
}

// ---- Cache size: eviction (see source.h).

std::atomic<uint64_t> g_written_since_scan{0};
std::mutex g_evict_mu;

void evict_if_needed(bool force = false) {
  const Options& o = options();
  uint64_t w = g_written_since_scan.load();
  if (!force && w < std::max<uint64_t>(o.cache_size / 8, kBlock)) return;
  std::unique_lock local(g_evict_mu, std::try_to_lock);
  if (!local) return;
  g_written_since_scan.store(0);
  UniqueFd lock(::open((o.cache_dir + "/.lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!lock || ::flock(lock.get(), LOCK_EX | LOCK_NB) != 0) return;  // another process is at it
  struct Entry {
    int64_t mtime_ns;
    uint64_t size;
    std::string path;
  };
  std::vector<Entry> all;
  uint64_t total = 0;
  const std::string root = o.cache_dir + "/blocks";
  const int64_t stale_tmp_ns = 3600ll * 1000000000ll;
  timespec now{};
  ::clock_gettime(CLOCK_REALTIME, &now);
  const int64_t now_ns = now.tv_sec * 1000000000ll + now.tv_nsec;
  std::unique_ptr<DIR, int (*)(DIR*)> top(::opendir(root.c_str()), ::closedir);
  if (!top) return;
  while (const dirent* d = ::readdir(top.get())) {
    if (d->d_name[0] == '.') continue;
    std::string dir = root + "/" + d->d_name;
    std::unique_ptr<DIR, int (*)(DIR*)> obj(::opendir(dir.c_str()), ::closedir);
    if (!obj) continue;
    size_t n = 0;
    while (const dirent* f = ::readdir(obj.get())) {
      if (std::strcmp(f->d_name, ".") == 0 || std::strcmp(f->d_name, "..") == 0) continue;
      ++n;
      struct stat st {};
      std::string p = dir + "/" + f->d_name;
      if (::stat(p.c_str(), &st) != 0) continue;
      int64_t m = st.st_mtim.tv_sec * 1000000000ll + st.st_mtim.tv_nsec;
      if (f->d_name[0] == '.') {
        // A temp file a crashed fetch left behind.
        if (now_ns - m > stale_tmp_ns) ::unlink(p.c_str());
        continue;
      }
      all.push_back({m, static_cast<uint64_t>(st.st_size), std::move(p)});
      total += static_cast<uint64_t>(st.st_size);
    }
    if (n == 0) ::rmdir(dir.c_str());
  }
  if (total <= o.cache_size) return;
  std::sort(all.begin(), all.end(), [](const Entry& a, const Entry& b) { return a.mtime_ns < b.mtime_ns; });
  const uint64_t target = o.cache_size / 10 * 9;
  for (const auto& e : all) {
    if (total <= target) break;
    if (::unlink(e.path.c_str()) == 0) total -= e.size;
  }
}

// ---- Prefetch workers: started on first use (the daemon forks after the source is indexed, and
// threads do not survive a fork).

struct Job {
  std::weak_ptr<const RemoteSource> src;
  uint64_t b0, b1;
  bool mem;
};

class Prefetcher {
 public:
  void push(Job j) {
    {
      std::lock_guard lk(mu_);
      if (threads_.empty()) {
        unsigned n = std::max(1u, options().connections);
        for (unsigned i = 0; i < n; ++i) threads_.emplace_back([this] { run(); });
      }
      q_.push_back(std::move(j));
    }
    cv_.notify_one();
  }

 private:
  void run() {
    for (;;) {
      Job j;
      {
        std::unique_lock lk(mu_);
        cv_.wait(lk, [&] { return !q_.empty(); });
        j = std::move(q_.front());
        q_.pop_front();
      }
      if (auto s = j.src.lock()) {
        try {
          s->prefetch(j.b0, j.b1, j.mem);
        } catch (...) {
          // A failed prefetch leaves its blocks absent; the reader fetches them and reports.
        }
      }
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> q_;
  std::vector<std::thread> threads_;  // detached at exit (never joined: the process ends with them)
};

Prefetcher& prefetcher() {
  static Prefetcher* p = new Prefetcher;
  return *p;
}

}  // namespace

void set_change_reporter(ChangeReporter r) { g_reporter = r; }
void enable_prefetch() { g_prefetch.store(true); }

Counters& counters() {
  static Counters* c = new Counters;
  return *c;
}

void Counters::error(const std::string& e) {
  errors.fetch_add(1);
  std::lock_guard lk(mu);
  last_error = e;
}

struct RemoteSource::MemPart {
  uint64_t b0 = 0, b1 = 0;
  std::unique_ptr<char[]> buf;
  uint64_t served = 0;  // bytes handed out (mu_)
  ~MemPart() {
    if (buf) part_pool().give(std::move(buf));
  }
};

RemoteSource::RemoteSource(ObjectRef ref) : ref_(std::move(ref)) {}
RemoteSource::~RemoteSource() = default;

std::shared_ptr<RemoteSource> RemoteSource::lazy(ObjectRef ref) {
  std::shared_ptr<RemoteSource> s(new RemoteSource(std::move(ref)));
  s->size_ = *s->ref_.size;
  s->identity_ = s->ref_.hub ? bare_etag(s->ref_.identity) : s->ref_.identity;
  s->init_cache();
  return s;
}

std::shared_ptr<RemoteSource> RemoteSource::open(ObjectRef ref) {
  std::shared_ptr<RemoteSource> s(new RemoteSource(std::move(ref)));
  if (s->ref_.hub) {
    if (s->ref_.size) s->size_ = *s->ref_.size;
    s->identity_ = bare_etag(s->ref_.identity);
    s->resolve();
    std::call_once(s->resolved_, [] {});
  } else if (s->ref_.size && !s->ref_.identity.empty()) {
    s->size_ = *s->ref_.size;
    s->identity_ = s->ref_.identity;
  } else {
    RetryPolicy p = read_policy();
    p.retry_refused = false;
    HttpRequest rq;
    rq.url = s->ref_.url;
    rq.what = s->ref_.display;
    rq.head = true;
    rq.headers = s->ref_.headers;
    rq.aws_sigv4 = s->ref_.aws_sigv4;
    rq.aws_userpwd = s->ref_.aws_userpwd;
    HttpResponse r = HttpClient::shared().perform(rq, p);
    std::string len;
    if (r.status == 403 || r.status == 405 || r.status == 501) {
      // No HEAD: a presigned URL signs its method (GET), some servers refuse HEAD. The first
      // byte by GET says the same (Content-Range's total, ETag).
      rq.head = false;
      rq.range = std::make_pair(uint64_t{0}, uint64_t{0});
      rq.max_body = 1;
      r = HttpClient::shared().perform(rq, p);
      if (r.status == 206) {
        std::string cr = r.header("content-range");
        auto slash = cr.rfind('/');
        if (slash != std::string::npos && slash + 1 < cr.size() && cr[slash + 1] != '*') len = cr.substr(slash + 1);
        else throw SysError(EIO, s->ref_.display + ": the server does not say the object's size");
      } else if (r.status == 200 || r.status == 416) {
        throw SysError(EIO, s->ref_.display + ": the server does not answer range requests");
      }
    } else if (r.status == 200) {
      len = r.header("content-length");
    }
    if (r.status != 200 && r.status != 206)
      throw SysError(status_errno(r.status), s->ref_.display + ": " + status_text(r.status));
    if (len.empty() || len.find_first_not_of("0123456789") != std::string::npos)
      throw SysError(EIO, s->ref_.display + ": the server does not say the object's size");
    s->size_ = std::stoull(len);
    s->identity_ = r.header("etag");
    if (s->identity_.empty() && !r.header("last-modified").empty()) s->identity_ = "lm:" + r.header("last-modified");
  }
  s->init_cache();
  return s;
}

void RemoteSource::init_cache() const {
  auto* self = const_cast<RemoteSource*>(this);
  self->nblocks_ = (size_ + kBlock - 1) / kBlock;
  self->state_.assign(nblocks_, kAbsent);
  std::string key = ref_.cache_name + "\n" + identity_ + "\n" + std::to_string(size_) + "\n" + std::to_string(kBlock);
  const std::string& root = options().cache_dir;
  // mkdir -p: $XDG_CACHE_HOME itself may not exist yet.
  for (size_t i = 1; (i = root.find('/', i)) != std::string::npos; ++i) io::mkdir(root.substr(0, i), 0700);
  io::mkdir(root, 0700);
  io::mkdir(root + "/blocks", 0700);
  self->key_hash_ = fnv1a(kFnvOffset, key.data(), key.size());
  self->dir_ = root + "/blocks/" + hex64(key_hash_);
  io::mkdir(dir_, 0700);
}

namespace {
// "scheme://host[:port]" of a URL.
std::string origin_of(const std::string& url) {
  auto scheme = url.find("://");
  if (scheme == std::string::npos) return {};
  return url.substr(0, url.find('/', scheme + 3));
}
}  // namespace

void RemoteSource::resolve() const {
  // The Hub answers a resolve URL with a redirect to its CDN; the redirect carries the identity
  // of the file (X-Linked-Etag: the LFS sha256, or the git blob id) and of the revision
  // (X-Repo-Commit). The CDN's own ETag says nothing stable and is only checked for consistency.
  // A redirect on the Hub itself without X-Linked-Etag (a renamed repository, the resolve cache
  // of small files) is followed, as huggingface_hub does, up to five times.
  RetryPolicy p = read_policy();
  p.retry_refused = false;
  HttpRequest rq;
  rq.what = ref_.display;
  rq.head = true;
  rq.follow_redirects = false;
  rq.headers = ref_.headers;
  std::string url = ref_.url, id, size, commit;
  for (int hop = 0;; ++hop) {
    rq.url = url;
    HttpResponse r = HttpClient::shared().perform(rq, p);
    if (id.empty()) id = r.header("x-linked-etag");
    if (size.empty()) size = r.header("x-linked-size");
    if (commit.empty()) commit = r.header("x-repo-commit");
    if (r.status == 301 || r.status == 302 || r.status == 303 || r.status == 307 || r.status == 308) {
      std::string loc = r.header("location");
      if (loc.empty()) throw SysError(EIO, ref_.display + ": redirect without a location");
      const bool relative = loc.rfind("http://", 0) != 0 && loc.rfind("https://", 0) != 0;
      if (relative) loc = origin_of(url) + (loc.front() == '/' ? "" : "/") + loc;
      if (id.empty() && origin_of(loc) == origin_of(ref_.url) && hop < 5) {
        url = loc;
        continue;
      }
      data_url_ = loc;
      break;
    }
    if (r.status == 200) {
      data_url_ = url;  // a file the Hub serves itself
      if (id.empty()) id = r.header("etag");
      if (size.empty()) size = r.header("content-length");
      break;
    }
    throw SysError(status_errno(r.status), ref_.display + ": " + status_text(r.status));
  }
  if (id.empty()) throw SysError(EIO, ref_.display + ": the Hub did not name the file's version (no X-Linked-Etag or ETag)");
  if (size.empty()) throw SysError(EIO, ref_.display + ": the Hub did not say the file's size");
  if (size.find_first_not_of("0123456789") != std::string::npos)
    throw SysError(EIO, ref_.display + ": the Hub sent a size that is not a number");
  uint64_t n = std::stoull(size);
  auto* self = const_cast<RemoteSource*>(this);
  // Asked at a commit id, the Hub answers for that commit; another one would be a server that
  // ignores the revision in the URL, and its bytes could be of any commit.
  if (!ref_.commit.empty() && !commit.empty() && commit != ref_.commit)
    changed("the Hub answered for commit " + commit + ", not the mounted " + ref_.commit);
  if (!identity_.empty() && bare_etag(identity_) != bare_etag(id)) changed("the Hub now serves another version");
  if (ref_.size && *ref_.size != n) changed("the Hub now serves another size");
  self->identity_ = bare_etag(id);
  self->size_ = n;
}

std::string RemoteSource::block_path(uint64_t b) const { return dir_ + "/" + std::to_string(b); }

HttpRequest RemoteSource::data_request(uint64_t first, uint64_t last) const {
  HttpRequest rq;
  rq.what = ref_.display;
  rq.range = std::make_pair(first, last);
  if (ref_.hub) {
    std::call_once(resolved_, [&] {
      if (data_url_.empty()) resolve();
    });
    rq.url = data_url_;
    // A file the Hub serves itself (no redirect off the Hub) is asked with the token; a CDN never
    // sees it.
    if (origin_of(data_url_) == origin_of(ref_.url)) rq.headers = ref_.headers;
    std::lock_guard lk(mu_);
    if (!data_etag_.empty()) rq.headers.push_back("If-Match: " + data_etag_);
  } else {
    rq.url = ref_.url;
    rq.headers = ref_.headers;
    rq.aws_sigv4 = ref_.aws_sigv4;
    rq.aws_userpwd = ref_.aws_userpwd;
    if (!identity_.empty() && identity_.rfind("lm:", 0) != 0) rq.headers.push_back("If-Match: " + identity_);
  }
  return rq;
}

void RemoteSource::changed(const std::string& why) const {
  std::string msg = ref_.display + " changed since it was mounted (" + why + "); remount to see the new object";
  if (!changed_.exchange(true)) {
    counters().error(msg);
    if (g_reporter) g_reporter(ref_.display, msg);
  }
  throw SysError(EIO, msg);
}

void RemoteSource::check_response(const HttpResponse& r, uint64_t first, uint64_t last) const {
  if (r.status == 412) changed("HTTP 412: the ETag no longer matches");
  std::string etag = r.header("etag");
  if (r.status == 206) {
    std::string cr = r.header("content-range");
    unsigned long long a = 0, b = 0, total = 0;
    if (std::sscanf(cr.c_str(), "bytes %llu-%llu/%llu", &a, &b, &total) != 3)
      throw SysError(EIO, ref_.display + ": bad Content-Range '" + cr + "'");
    if (total != size_) changed("its size is now " + std::to_string(total));
    if (a != first || b != last) throw SysError(EIO, ref_.display + ": the server sent another range (" + cr + ")");
  } else if (r.status == 200) {
    if (first != 0 || last + 1 != size_) throw SysError(EIO, ref_.display + ": the server ignores Range requests");
  } else {
    throw SysError(status_errno(r.status) == ENOENT ? EIO : status_errno(r.status),
                   ref_.display + ": " + status_text(r.status));
  }
  if (!etag.empty()) {
    if (ref_.hub) {
      bool other = false;
      {
        std::lock_guard lk(mu_);
        if (data_etag_.empty()) data_etag_ = etag;
        else other = bare_etag(data_etag_) != bare_etag(etag);
      }
      if (other) changed("the CDN serves another ETag");
    } else if (!identity_.empty() && identity_.rfind("lm:", 0) != 0 && bare_etag(etag) != bare_etag(identity_)) {
      changed("its ETag is now " + etag);
    }
  }
}

void RemoteSource::finish(uint64_t b0, uint64_t b1, uint64_t done_to, const std::string& err) const {
  {
    std::lock_guard lk(mu_);
    for (uint64_t b = b0; b < b1; ++b) state_[b] = b < done_to ? kPresent : kFailed;
    if (!err.empty()) fail_ = err;
  }
  cv_.notify_all();
}

void RemoteSource::fetch(uint64_t b0, uint64_t b1) const {
  // Blocks another mount (or an earlier run) already fetched are taken from disk.
  while (b0 < b1) {
    struct stat st {};
    uint64_t want = std::min(kBlock, size_ - b0 * kBlock);
    if (::stat(block_path(b0).c_str(), &st) != 0 || static_cast<uint64_t>(st.st_size) != want) break;
    finish(b0, b0 + 1, b0 + 1, {});
    ++b0;
  }
  if (b0 >= b1) return;
  const uint64_t first = b0 * kBlock, last = std::min(b1 * kBlock, size_) - 1;
  const uint64_t total = last + 1 - first;
  // Bytes go to temp files, one per block, renamed into place only once the response proved to be
  // of the pinned object.
  std::vector<std::string> tmps;
  std::vector<UniqueFd> fds;
  uint64_t written = 0;
  auto cleanup = [&] {
    fds.clear();
    for (const auto& t : tmps) ::unlink(t.c_str());
    tmps.clear();
  };
  HttpRequest rq;
  try {
    rq = data_request(first, last);
  } catch (const SysError& e) {
    counters().error(e.what());
    finish(b0, b1, b0, e.what());
    if (e.err() == EIO) throw;
    throw SysError(EIO, e.what());
  }
  rq.begin = [&] {
    cleanup();
    written = 0;
    for (uint64_t b = b0; b < b1; ++b) {
      std::string t;
      fds.push_back(io::create_temp(dir_ + "/." + std::to_string(b) + ".", t));
      tmps.push_back(t);
    }
  };
  rq.write = [&](const char* p, size_t n) {
    if (written + n > total) return false;
    while (n) {
      uint64_t idx = written / kBlock, in = written % kBlock;
      size_t k = static_cast<size_t>(std::min<uint64_t>(n, kBlock - in));
      io::pwrite_full(fds[idx].get(), p, k, in, "cache block");
      p += k;
      n -= k;
      written += k;
    }
    return true;
  };
  try {
    HttpResponse r = HttpClient::shared().perform(rq, read_policy());
    check_response(r, first, last);
    if (written != total) throw SysError(EIO, ref_.display + ": short response (" + std::to_string(written) + " of " + std::to_string(total) + " bytes)");
    fds.clear();
    for (uint64_t b = b0; b < b1; ++b) io::rename(tmps[b - b0], block_path(b));
    tmps.clear();
  } catch (const std::exception& e) {
    cleanup();
    counters().error(e.what());
    finish(b0, b1, b0, e.what());
    // A read that fails is EIO whatever the transport said (ECONNREFUSED, ETIMEDOUT ...).
    const auto* se = dynamic_cast<const SysError*>(&e);
    if (se && se->err() == EIO) throw;
    throw SysError(EIO, e.what());
  }
  counters().cache_misses.fetch_add(b1 - b0);
  g_written_since_scan.fetch_add(total);
  finish(b0, b1, b1, {});
  evict_if_needed();
}

void RemoteSource::prefetch(uint64_t b0, uint64_t b1, bool mem) const {
  if (changed_.load()) {
    if (mem) {
      std::lock_guard lk(mu_);
      if (auto it = parts_.find(b0); it != parts_.end()) drop_part_locked(*it->second, kAbsent);
      cv_.notify_all();
      return;
    }
    finish(b0, b1, b0, "changed");
    return;
  }
  if (mem) fetch_mem(b0, b1);
  else fetch(b0, b1);
}

void RemoteSource::drop_part_locked(const MemPart& part, uint8_t to) const {
  // Only while it is the part of its blocks: once let go, they may belong to a newer part.
  auto it = parts_.find(part.b0);
  if (it == parts_.end() || it->second.get() != &part) return;
  for (uint64_t b = part.b0; b < part.b1; ++b)
    if (state_[b] == kMem || state_[b] == kMemFlight) state_[b] = to;
  parts_.erase(it);  // may destroy `part`
}

void RemoteSource::fetch_mem(uint64_t b0, uint64_t b1) const {
  std::shared_ptr<MemPart> part;
  {
    std::lock_guard lk(mu_);
    auto it = parts_.find(b0);
    if (it == parts_.end()) return;
    part = it->second;
  }
  auto let_go = [&](uint8_t to) {
    {
      std::lock_guard lk(mu_);
      drop_part_locked(*part, to);
    }
    cv_.notify_all();
  };
  // Blocks another mount (or an earlier one) fetched are served from disk: the part is not asked
  // for; the blocks of it that are missing get fetched by the reader or a later read-ahead.
  std::vector<uint64_t> on_disk;
  for (uint64_t b = b0; b < b1; ++b) {
    struct stat st {};
    if (::stat(block_path(b).c_str(), &st) == 0 && static_cast<uint64_t>(st.st_size) == std::min(kBlock, size_ - b * kBlock))
      on_disk.push_back(b);
  }
  if (!on_disk.empty()) {
    {
      std::lock_guard lk(mu_);
      drop_part_locked(*part, kAbsent);
      for (uint64_t b : on_disk)
        if (state_[b] == kAbsent) state_[b] = kPresent;
    }
    cv_.notify_all();
    return;
  }
  const uint64_t first = b0 * kBlock, last = std::min(b1 * kBlock, size_) - 1;
  const uint64_t total = last + 1 - first;
  uint64_t written = 0;
  try {
    HttpRequest rq = data_request(first, last);
    rq.begin = [&] { written = 0; };
    rq.write = [&](const char* p, size_t n) {
      if (written + n > total) return false;
      std::memcpy(part->buf.get() + written, p, n);
      written += n;
      return true;
    };
    HttpResponse r = HttpClient::shared().perform(rq, read_policy());
    check_response(r, first, last);
    if (written != total) throw SysError(EIO, ref_.display + ": short response (" + std::to_string(written) + " of " + std::to_string(total) + " bytes)");
  } catch (const std::exception& e) {
    // The reader fetches the blocks itself (with its own retries) and reports what fails.
    counters().error(e.what());
    let_go(kAbsent);
    return;
  }
  counters().cache_misses.fetch_add(b1 - b0);
  {
    std::lock_guard lk(mu_);
    auto it = parts_.find(b0);
    if (it != parts_.end() && it->second == part)
      for (uint64_t b = b0; b < b1; ++b)
        if (state_[b] == kMemFlight) state_[b] = kMem;
  }
  cv_.notify_all();
}

std::shared_ptr<RemoteSource::MemPart> RemoteSource::mem_part(uint64_t b) const {
  std::unique_lock lk(mu_);
  cv_.wait(lk, [&] { return state_[b] != kMemFlight; });
  if (state_[b] != kMem) return nullptr;
  auto it = parts_.upper_bound(b);
  if (it != parts_.begin() && (--it)->second->b1 > b) return it->second;
  state_[b] = kAbsent;  // no part holds it (never expected): fetched as any missing block
  return nullptr;
}

void RemoteSource::consume(const std::shared_ptr<MemPart>& part, uint64_t n) const {
  std::lock_guard lk(mu_);
  part->served += n;
  if (part->served >= std::min(part->b1 * kBlock, size_) - part->b0 * kBlock) drop_part_locked(*part, kAbsent);
}

RemoteSource::Got RemoteSource::ensure(uint64_t b) const {
  std::unique_lock lk(mu_);
  bool waited = false;
  for (;;) {
    uint8_t s = state_[b];
    if (s == kPresent) {
      if (!waited) counters().cache_hits.fetch_add(1);
      return waited ? Got::kMiss : Got::kHit;
    }
    if (s == kMem) return Got::kMemory;
    if (s == kInFlight || s == kMemFlight) {
      cv_.wait(lk, [&] { return state_[b] != kInFlight && state_[b] != kMemFlight; });
      waited = true;
      if (state_[b] == kFailed) throw SysError(EIO, fail_.empty() ? ref_.display + ": read failed" : fail_);
      continue;
    }
    state_[b] = kInFlight;
    lk.unlock();
    struct stat st {};
    uint64_t want = std::min(kBlock, size_ - b * kBlock);
    if (::stat(block_path(b).c_str(), &st) == 0 && static_cast<uint64_t>(st.st_size) == want) {
      // Fetched by another mount (or an earlier one): a hit; touching it keeps it in the LRU.
      ::utimensat(AT_FDCWD, block_path(b).c_str(), nullptr, 0);
      counters().cache_hits.fetch_add(1);
      finish(b, b + 1, b + 1, {});
      return Got::kHit;
    }
    fetch(b, b + 1);
    return Got::kMiss;
  }
}

void RemoteSource::note_read(uint64_t off, uint64_t len) const {
  struct Run {
    uint64_t b0, b1;
    bool mem;
  };
  std::vector<Run> runs;
  {
    std::lock_guard lk(mu_);
    ++clock_;
    Stream* s = nullptr;
    for (auto& x : streams_)
      if (x.used && off + kBlock >= x.end && off <= x.end + kBlock) s = &x;
    const uint64_t end = off + len;
    if (s) {
      bool crossed = (end - 1) / kBlock != (s->end ? (s->end - 1) / kBlock : 0);
      s->end = std::max(s->end, end);
      if (s->window == 0) s->window = 2;
      else if (crossed) s->window = std::min<uint64_t>(s->window * 2, kMaxWindow);
      s->used = clock_;
    } else {
      Stream* lru = &streams_[0];
      for (auto& x : streams_)
        if (x.used < lru->used) lru = &x;
      *lru = Stream{end, 0, clock_};
      return;
    }
    if (!g_prefetch.load(std::memory_order_relaxed)) return;
    // Parts the stream left behind unread (the reader skipped them): let go, so the pool serves
    // what is ahead.
    for (auto it = parts_.begin(); it != parts_.end() && it->second->b1 * kBlock + kBehind <= off;) {
      const MemPart& p = *(it++)->second;
      if (state_[p.b0] == kMem) drop_part_locked(p, kAbsent);
    }
    // Parts are aligned to kPartBlocks (the window's end rounded up to one): as the window slides a
    // block at a time, it still asks for whole parts, not one block per request.
    const uint64_t from = (end - 1) / kBlock + 1;
    const uint64_t to = std::min(nblocks_, (from + s->window + kPartBlocks - 1) / kPartBlocks * kPartBlocks);
    uint64_t b = from;
    while (b < to) {
      if (state_[b] != kAbsent && state_[b] != kFailed) {
        ++b;
        continue;
      }
      const uint64_t slot_end = std::min(to, (b / kPartBlocks + 1) * kPartBlocks);
      uint64_t e = b;
      while (e < slot_end && (state_[e] == kAbsent || state_[e] == kFailed)) ++e;
      auto buf = part_pool().take();
      if (!buf) {
        // The pool is used up: the oldest part of this object wholly behind this read goes (the
        // kernel's read-ahead may still ask for a few pages of it, which then come from a block
        // file). Parts of other objects are not taken (kBehind lets them go).
        for (auto& [first, p] : parts_)
          if (p->b1 * kBlock <= off && state_[first] == kMem) {
            drop_part_locked(*p, kAbsent);  // the buffer is back once no reader holds the part
            buf = part_pool().take();
            break;
          }
      }
      const bool mem = buf != nullptr;
      for (uint64_t x = b; x < e; ++x) state_[x] = mem ? kMemFlight : kInFlight;
      if (mem) {
        auto part = std::make_shared<MemPart>();
        part->b0 = b;
        part->b1 = e;
        part->buf = std::move(buf);
        parts_[b] = std::move(part);
      }
      runs.push_back({b, e, mem});
      b = e;
    }
  }
  for (const auto& r : runs) prefetcher().push(Job{weak_from_this(), r.b0, r.b1, r.mem});
}

void RemoteSource::verify() const {
  if (changed_.load()) throw SysError(EIO, ref_.display + " changed since it was mounted; remount to see the new object");
  if (size_ == 0) return;
  int64_t now = now_ms(), last = last_verify_ms_.load();
  if (now - last < 1000 || !last_verify_ms_.compare_exchange_strong(last, now)) return;
  // One identity request: the same conditional range request a read sends, for one byte.
  // Only a definite answer fails cached reads: a server that cannot be reached right now leaves
  // them served (the bytes are the pinned object's), and the recheck is not retried.
  try {
    HttpRequest rq = data_request(0, 0);
    std::string body;
    rq.write = [&](const char* p, size_t n) {
      body.append(p, std::min<size_t>(n, 1));
      return body.size() <= 1;
    };
    RetryPolicy once = read_policy();
    once.retries = 0;
    HttpResponse r = HttpClient::shared().perform(rq, once);
    check_response(r, 0, 0);
  } catch (const SysError&) {
    if (changed_.load()) throw;
  }
}

std::shared_ptr<const UniqueFd> RemoteSource::block_fd(uint64_t b, bool& hit) const {
  const uint64_t want = std::min(kBlock, size_ - b * kBlock);
  for (int attempt = 0;; ++attempt) {
    Got g = ensure(b);
    if (g == Got::kMemory) return nullptr;
    if (g == Got::kMiss) hit = false;
    {
      std::lock_guard lk(mu_);
      ++clock_;
      for (auto& o : open_)
        if (o.block == b && o.fd) {
          o.used = clock_;
          return o.fd;
        }
    }
    UniqueFd fd(::open(block_path(b).c_str(), O_RDONLY | O_CLOEXEC));
    int err = fd ? 0 : errno;
    struct stat st {};
    if (fd && ::fstat(fd.get(), &st) != 0) err = errno;
    const bool gone = !fd && err == ENOENT;
    // Not whole: only a file of another writer (blocks are renamed into place whole) or a damaged
    // disk; checked here because a splice of it would come back short.
    const bool partial = fd && err == 0 && static_cast<uint64_t>(st.st_size) != want;
    if (gone || partial) {
      // Evicted (by this mount or another) since it was fetched, or not whole: fetched again, once.
      if (partial) ::unlink(block_path(b).c_str());
      {
        std::lock_guard lk(mu_);
        if (state_[b] == kPresent) state_[b] = kAbsent;
      }
      if (attempt == 0) continue;
      throw SysError(EIO, ref_.display + ": cache block " + std::to_string(b) + (gone ? " vanished" : " is not whole") +
                              " twice in a row");
    }
    if (err) throw SysError(EIO, ref_.display + ": cache block: " + std::strerror(err));
    auto f = std::make_shared<const UniqueFd>(std::move(fd));
    std::lock_guard lk(mu_);
    OpenBlock* slot = &open_[0];
    for (auto& o : open_)
      if (o.used < slot->used) slot = &o;
    *slot = OpenBlock{b, f, clock_};
    return f;
  }
}

uint64_t RemoteSource::begin_read(uint64_t off, uint64_t len) const {
  if (changed_.load()) throw SysError(EIO, ref_.display + " changed since it was mounted; remount to see the new object");
  if (off >= size_ || len == 0) return 0;
  len = std::min<uint64_t>(len, size_ - off);
  if (last_verify_ms_.load() == 0) last_verify_ms_.store(now_ms());
  note_read(off, len);
  return len;
}

size_t RemoteSource::read_at(uint64_t off, void* buf, size_t len) const {
  len = off >= size_ ? 0 : static_cast<size_t>(std::min<uint64_t>(len, size_ - off));
  // The same walk as a spliced read (pieces: read-ahead parts in memory, block files on disk,
  // fetched as needed, the object checked), then its pieces copied out.
  std::vector<Piece> ps;
  pieces(off, len, ps);
  char* out = static_cast<char*>(buf);
  for (const Piece& p : ps) {
    if (p.data) {
      std::memcpy(out, p.data, static_cast<size_t>(p.len));
    } else if (io::pread_full(p.file->fd, out, static_cast<size_t>(p.len), p.file->offset, "cache block") != p.len) {
      throw SysError(EIO, ref_.display + ": cache block shorter than expected");
    }
    out += p.len;
  }
  return static_cast<size_t>(out - static_cast<char*>(buf));
}

void RemoteSource::pieces(uint64_t off, uint64_t len, std::vector<Piece>& out) const {
  // Inside size() (the contract): begin_read clips nothing then.
  len = begin_read(off, len);
  if (len == 0) return;
  uint64_t pos = off;
  const uint64_t end = off + len;
  bool all_hits = true;
  while (pos < end) {
    uint64_t b = pos / kBlock, in = pos % kBlock;
    uint64_t n = std::min<uint64_t>(end - pos, kBlock - in);
    if (auto part = mem_part(b)) {
      // Read ahead into memory: handed out in place (the share keeps the buffer until the taker
      // is done), fresh from the server, not a cache hit.
      out.push_back(Piece{n, false, std::nullopt, part->buf.get() + (b - part->b0) * kBlock + in, part});
      consume(part, n);
      all_hits = false;
      pos += n;
      continue;
    }
    auto f = block_fd(b, all_hits);
    if (!f) continue;  // turned into a memory part meanwhile
    // A block file holds bytes of the pinned object only (its key names the identity), so the
    // span needs no guard; the share keeps the descriptor open until the taker is done.
    out.push_back(Piece{n, false, FileRange{f->get(), in, nullptr, f}});
    pos += n;
  }
  // Bytes served from the cache alone are checked against the server now and then (verify), so
  // a replaced object stops being served even when every block it needs is cached.
  if (all_hits) verify();
  if (changed_.load()) throw SysError(EIO, ref_.display + " changed since it was mounted; remount to see the new object");
}

}  // namespace nemofs::remote
