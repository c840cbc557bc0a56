// RemoteSource: the ByteSource of one remote object, read by ranges through the block cache.
//
// Layout on disk (shared by every mount of the user; files + rename, no daemon):
//   CACHE/blocks/<key>/<n>   block n of the object (kBlock bytes, the last one shorter), written
//                            to a temp file and renamed, so a block file is always whole
//   CACHE/.lock              flock'ed by whoever evicts
// <key> is a hash of the object's stable name (URL without query, s3://, hf://) and its identity,
// so a replaced object never meets the blocks of the old one. Eviction is LRU by block mtime
// (a hit touches it): once a process has written an eighth of the cap since its last look, it
// lists the blocks and removes the oldest until the cache is under 90% of the cap.
//
// Reads: the blocks a read touches are taken from the cache or fetched (one request for a run of
// missing blocks). Each object follows up to four sequential streams; a read that continues one
// grows its window (2 MiB, doubling to 32 MiB) and the blocks ahead are fetched by a pool of
// background workers in parts of 4 MiB, in parallel, into memory (a pool of part buffers shared by
// every object, 64 MiB in all), not into block files: a stream is read once, and writing it to
// the cache would cost more than the rest of the read path together (a copy into fresh page-cache
// pages, a file per block) and flush the cache of the blocks worth keeping. A part is let go once
// its bytes were handed out (the mount's page cache keeps them) or the stream moved past it; when
// the pool is used up, read-ahead goes to block files as random reads do. Blocks already on disk
// are served from there.
#pragma once

#include <atomic>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "formats/core/byte_source.h"
#include "formats/remote/http.h"

namespace nemofs::remote {

constexpr uint64_t kBlock = 2u << 20;

// How requests to one object are made.
struct ObjectRef {
  std::string url;        // where the bytes are (a Hub resolve URL when `hub`)
  std::string display;    // redacted, for messages and status
  std::string cache_name; // stable name for the cache key
  // Added to every request to url (never to a Hub CDN location).
  std::vector<std::string> headers;
  std::string aws_sigv4, aws_userpwd;
  bool hub = false;
  // Hub: the commit the URL's revision was pinned to (a repository mount), checked against the
  // X-Repo-Commit of the resolve answer; empty: not pinned.
  std::string commit;
  // From a listing (S3 ListObjectsV2, the Hub's tree): known without a request.
  std::optional<uint64_t> size;
  std::string identity;
};

struct Counters {
  std::atomic<uint64_t> cache_hits{0}, cache_misses{0}, errors{0};
  std::mutex mu;
  std::string last_error;
  void error(const std::string& e);
};
Counters& counters();

class RemoteSource final : public ByteSource, public std::enable_shared_from_this<RemoteSource> {
 public:
  // Pins the object's identity (one request unless the ref already has size and identity; a Hub
  // ref always resolves). Throws SysError with the one-line reason.
  static std::shared_ptr<RemoteSource> open(ObjectRef ref);
  // Without any request: the ref must have size and identity (a listing's); a Hub ref resolves its
  // location on first read.
  static std::shared_ptr<RemoteSource> lazy(ObjectRef ref);
  ~RemoteSource() override;

  uint64_t size() const override { return size_; }
  size_t read_at(uint64_t off, void* buf, size_t len) const override;
  // The span as ranges of its cache block files (fetched first when missing), each holding its
  // block file open (FileRange::hold), and spans of read-ahead memory parts (Piece::data): the
  // FUSE edge splices the files from the page cache and replies from the parts in place, instead
  // of copying either through a buffer of its own.
  void pieces(uint64_t off, uint64_t len, std::vector<Piece>& out) const override;
  std::string describe() const override { return ref_.display; }
  // EIO once the object was seen replaced; at most every 2 s, one identity request (HEAD with
  // If-Match) so cached blocks of a replaced object stop being served too.
  void verify() const override;
  const std::string& identity() const { return identity_; }
  std::optional<uint64_t> cache_identity() const override { return key_hash_; }

  // Prefetch worker entry: fetches blocks [b0, b1) that are still missing, into block files or
  // (`mem`) into the memory part that note_read set up for them.
  void prefetch(uint64_t b0, uint64_t b1, bool mem) const;

 private:
  explicit RemoteSource(ObjectRef ref);
  void init_cache() const;
  void resolve() const;  // Hub: the location and identity of the object
  // Block states. kMemFlight / kMem: being read ahead into / held in a memory part (parts_).
  enum : uint8_t { kAbsent = 0, kInFlight = 1, kPresent = 2, kFailed = 3, kMemFlight = 4, kMem = 5 };
  enum class Got { kHit, kMiss, kMemory };
  // Makes block b present (from disk or fetched), or says it is in memory (kMem). Throws SysError(EIO).
  Got ensure(uint64_t b) const;
  struct MemPart;
  // The memory part holding block b once it is there (waits while it is being read ahead); null
  // when b is not held in memory.
  std::shared_ptr<MemPart> mem_part(uint64_t b) const;
  // Counts n bytes of the part as handed out; a part handed out whole is let go.
  void consume(const std::shared_ptr<MemPart>& part, uint64_t n) const;
  // Forgets the part (mu_ held): its blocks become `to` (kAbsent, or kPresent when on disk).
  void drop_part_locked(const MemPart& part, uint8_t to) const;
  void fetch_mem(uint64_t b0, uint64_t b1) const;
  // Fetches blocks [b0, b1) (already marked in flight by the caller) in one request.
  void fetch(uint64_t b0, uint64_t b1) const;
  void finish(uint64_t b0, uint64_t b1, uint64_t done_to, const std::string& err) const;
  HttpRequest data_request(uint64_t first, uint64_t last) const;
  void check_response(const HttpResponse& r, uint64_t first, uint64_t last) const;
  [[noreturn]] void changed(const std::string& why) const;
  std::string block_path(uint64_t b) const;
  void note_read(uint64_t off, uint64_t len) const;
  // Block b present and open (ensure + open, fetched again once when it was evicted or is not
  // whole). `hit` is cleared when it had to be fetched or waited for.
  std::shared_ptr<const UniqueFd> block_fd(uint64_t b, bool& hit) const;
  // Shared start of read_at and pieces: the span clipped to the object (0: nothing to read).
  uint64_t begin_read(uint64_t off, uint64_t len) const;

  ObjectRef ref_;
  uint64_t size_ = 0;
  std::string identity_;
  uint64_t nblocks_ = 0;
  std::string dir_;  // CACHE/blocks/<key>
  uint64_t key_hash_ = 0;

  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  mutable std::vector<uint8_t> state_;
  mutable std::string fail_;
  // Hub: where the bytes are, and the CDN's ETag of them once seen.
  mutable std::once_flag resolved_;
  mutable std::string data_url_, data_etag_;
  mutable std::atomic<bool> changed_{false};
  mutable std::atomic<int64_t> last_verify_ms_{0};
  struct Stream {
    uint64_t end = 0;
    uint64_t window = 0;  // blocks ahead
    uint64_t used = 0;    // last use, for replacement
  };
  mutable Stream streams_[4];
  // Block files open for the reads that follow in them: at most kOpenBlocks per object, least
  // recently used closed first (a reply still splicing from one keeps it open by its share).
  static constexpr size_t kOpenBlocks = 8;
  struct OpenBlock {
    uint64_t block = UINT64_MAX;
    std::shared_ptr<const UniqueFd> fd;
    uint64_t used = 0;
  };
  mutable OpenBlock open_[kOpenBlocks];
  // Read-ahead of sequential streams held in memory, by first block (source.cpp: why).
  mutable std::map<uint64_t, std::shared_ptr<MemPart>> parts_;
  mutable uint64_t clock_ = 0;
};

}  // namespace nemofs::remote
