// Serving reads: the uncompressed bytes of a gzip file or of a raw deflate stream, inflated from
// the index's access points through a bounded cache of verified blocks (formats/gzip/gzip_source.h).
#include <sys/mman.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <list>
#include <map>
#include <mutex>
#include <optional>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "formats/gzip/gzip_source.h"

#include "formats/core/checked.h"
#include "formats/core/errors.h"
#include "formats/gzip/internal.h"

namespace nemofs {

using namespace gzip_internal;

// ---------------------------------------------------------------------------------------------
// Block geometry

size_t GzipIndex::point_of(uint64_t off) const {
  auto it = std::upper_bound(points.begin(), points.end(), off, [](uint64_t o, const GzipPoint& p) { return o < p.out; });
  return static_cast<size_t>(it - points.begin()) - 1;
}

uint64_t GzipIndex::block_of(uint64_t off) const {
  const GzipPoint& p = points[point_of(off)];
  return p.first_block + (off - p.out) / block_size;
}

size_t GzipIndex::point_of_block(uint64_t block) const {
  auto it = std::upper_bound(points.begin(), points.end(), block,
                             [](uint64_t b, const GzipPoint& p) { return b < p.first_block; });
  return static_cast<size_t>(it - points.begin()) - 1;
}

std::pair<uint64_t, uint64_t> GzipIndex::block_range(uint64_t block) const {
  size_t i = point_of_block(block);
  const GzipPoint& p = points[i];
  uint64_t chunk_end = i + 1 < points.size() ? points[i + 1].out : uncompressed_size;
  uint64_t s = p.out + (block - p.first_block) * block_size;
  return {s, std::min<uint64_t>(s + block_size, chunk_end)};
}

// ---------------------------------------------------------------------------------------------
// Reading

namespace {

// Buffers for inflated blocks, each one whole block_size long, mapped straight from the kernel and
// reused. Not malloc: glibc's mmap threshold rises past a block's size as soon as one large chunk
// is freed, after which blocks come from the arena of whichever FUSE thread inflated them and go
// back to it when evicted, where they stay; with 8 workers a 48 MiB cache held ~145 MiB. Here every
// buffer is either cached, held by a reader, or one of a few spares, and the rest are unmapped.
class BlockPool {
 public:
  explicit BlockPool(size_t block_size) : bytes_(round_up(block_size)) {}
  ~BlockPool() {
    for (void* p : spare_) ::munmap(p, bytes_);
  }
  BlockPool(const BlockPool&) = delete;
  BlockPool& operator=(const BlockPool&) = delete;

  unsigned char* take() {
    {
      std::lock_guard lk(mu_);
      ++live_;
      peak_ = std::max(peak_, live_);
      if (!spare_.empty()) {
        void* p = spare_.back();
        spare_.pop_back();
        return static_cast<unsigned char*>(p);
      }
    }
    void* p = ::mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
      std::lock_guard lk(mu_);
      --live_;
      throw std::bad_alloc();
    }
    return static_cast<unsigned char*>(p);
  }
  void give(unsigned char* p) {
    {
      std::lock_guard lk(mu_);
      --live_;
      if (spare_.size() < kSpare) {
        spare_.push_back(p);
        return;
      }
    }
    ::munmap(p, bytes_);
  }
  size_t buffer_bytes() const { return bytes_; }
  // Buffers out of the pool now and at most so far, in bytes (spares not counted: at most kSpare).
  std::pair<uint64_t, uint64_t> usage() const {
    std::lock_guard lk(mu_);
    return {live_ * bytes_, peak_ * bytes_};
  }

 private:
  static constexpr size_t kSpare = 4;
  static size_t round_up(size_t n) {
    const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
    return (n + page - 1) / page * page;
  }
  const size_t bytes_;
  mutable std::mutex mu_;
  std::vector<void*> spare_;
  uint64_t live_ = 0, peak_ = 0;
};

struct Block {
  unsigned char* data = nullptr;
  size_t size = 0;
  std::shared_ptr<BlockPool> pool;  // the buffer goes back when the last reader lets go
  Block(std::shared_ptr<BlockPool> p, size_t n) : data(p->take()), size(n), pool(std::move(p)) {}
  ~Block() { pool->give(data); }
  Block(const Block&) = delete;
  Block& operator=(const Block&) = delete;
};
using BlockPtr = std::shared_ptr<const Block>;

// An inflate in progress, positioned at the start of block `next_block`.
struct Cursor {
  RawInflate z;
  uint64_t next_block = 0;
  uint64_t in_next = 0;  // compressed offset of the next byte to read into `in`
  std::vector<unsigned char> in = std::vector<unsigned char>(64 << 10);
};

std::unique_ptr<Cursor> start_cursor(const GzipIndex& idx, const ByteSource& src, size_t pi) {
  auto c = std::make_unique<Cursor>();
  const GzipPoint& p = idx.points[pi];
  if (p.bits) {
    unsigned char ch = 0;
    if (src.read_at(p.in - 1, &ch, 1) != 1) eio(src.describe() + ": gzip data ends early");
    if (inflatePrime(&c->z.s, p.bits, ch >> (8 - p.bits)) != Z_OK) eio(src.describe() + ": cannot resume inflating");
  }
  if (p.window_len) {
    std::string w = idx.window(pi);
    if (inflateSetDictionary(&c->z.s, reinterpret_cast<const Bytef*>(w.data()), static_cast<uInt>(w.size())) != Z_OK)
      eio(src.describe() + ": cannot resume inflating");
  }
  c->in_next = p.in;
  c->next_block = p.first_block;
  return c;
}

// Inflates block k (the cursor must be at its start) and checks it against the index's CRC-32.
// `raw`: one deflate stream, no gzip members after it.
BlockPtr inflate_block(const GzipIndex& idx, const ByteSource& src, Cursor& c, uint64_t k,
                       const std::shared_ptr<BlockPool>& pool, bool raw) {
  const auto [s, e] = idx.block_range(k);
  auto blk = std::make_shared<Block>(pool, static_cast<size_t>(e - s));
  z_stream& z = c.z.s;
  z.next_out = blk->data;
  z.avail_out = static_cast<uInt>(blk->size);
  const uint64_t csize = src.size();
  const std::string changed = "; did the archive change since it was indexed?";
  while (z.avail_out > 0) {
    if (z.avail_in == 0) {
      size_t want = c.in_next < csize ? static_cast<size_t>(std::min<uint64_t>(c.in.size(), csize - c.in_next)) : 0;
      size_t got = want ? src.read_at(c.in_next, c.in.data(), want) : 0;
      if (got == 0) eio(src.describe() + ": deflate data ends before uncompressed byte " + std::to_string(e) + changed);
      z.next_in = c.in.data();
      z.avail_in = static_cast<uInt>(got);
      c.in_next += got;
    }
    int ret = inflate(&z, Z_NO_FLUSH);
    if (ret == Z_STREAM_END) {
      // A member that ends exactly with the block: leave the transition to the next block (inflate
      // keeps answering Z_STREAM_END without consuming anything).
      if (z.avail_out == 0) break;
      if (raw) eio(src.describe() + ": deflate data ends before uncompressed byte " + std::to_string(e) + changed);
      // The next member follows the 8-byte trailer and any zero padding (the first pass checked
      // that one does: the index ends the output where the last member ends).
      uint64_t d = 0;
      try {
        d = parse_gzip_member_header(src, skip_gzip_padding(src, c.in_next - z.avail_in + 8));
      } catch (const FormatError& fe) {
        eio(src.describe() + ": " + fe.what() + changed);
      }
      if (inflateReset(&z) != Z_OK) eio(src.describe() + ": cannot reset inflate");
      z.avail_in = 0;
      c.in_next = d;
      continue;
    }
    if (ret == Z_BUF_ERROR && z.avail_in == 0) continue;
    if (ret != Z_OK)
      eio(src.describe() + ": deflate data near compressed byte " + std::to_string(c.in_next - z.avail_in) +
          " does not inflate (" + (z.msg ? z.msg : "inflate failed") + ")" + changed);
  }
  if (crc(0, blk->data, blk->size) != idx.block_crcs[k])
    eio(src.describe() + ": uncompressed bytes " + std::to_string(s) + ".." + std::to_string(e) +
        " do not match the index (CRC-32 mismatch)" + changed);
  c.next_block = k + 1;
  return blk;
}

struct Lazy;

}  // namespace

// ---------------------------------------------------------------------------------------------
// The cache: blocks, parked inflates and inflate runs in progress of every source using it, keyed
// by the source's id. One mutex; a lazy source's own mutex (Lazy::mu) is always taken before it.

class InflateCache {
 public:
  struct Key {
    uint64_t src, block;
    bool operator==(const Key& o) const { return src == o.src && block == o.block; }
  };
  struct KeyHash {
    size_t operator()(const Key& k) const { return std::hash<uint64_t>()(k.src * 0x9e3779b97f4a7c15ull ^ k.block); }
  };
  struct Parked {
    uint64_t src;
    std::unique_ptr<Cursor> cursor;
  };
  struct Job {
    uint64_t src, from, to;  // block range being inflated right now
  };

  InflateCache(size_t cap, size_t max_parked, size_t max_frontiers)
      : cap_bytes(cap), max_parked(std::max<size_t>(max_parked, 1)), max_frontiers(std::max<size_t>(max_frontiers, 1)) {}

  std::mutex mu;
  std::condition_variable cv;
  std::list<std::pair<Key, BlockPtr>> lru;  // front = most recently used
  std::unordered_map<Key, std::list<std::pair<Key, BlockPtr>>::iterator, KeyHash> cached;
  size_t bytes = 0;  // buffer bytes held by the cache (whole buffers: what it really costs)
  const size_t cap_bytes;
  const size_t max_parked;
  const size_t max_frontiers;
  std::list<Parked> parked;   // front = most recently parked
  std::list<Job> jobs;
  std::list<Lazy*> frontiers;  // lazy sources with a live indexing inflate, front = most recent
  std::map<size_t, std::weak_ptr<BlockPool>> pools;
  std::atomic<uint64_t> next_id{1};

  // The capacity a source sees: at least two of its blocks.
  size_t capacity(size_t buffer_bytes) const { return std::max<size_t>(cap_bytes, 2 * buffer_bytes); }

  std::shared_ptr<BlockPool> pool_for(size_t block_size) {
    std::lock_guard lk(mu);
    auto& w = pools[block_size];
    auto p = w.lock();
    if (!p) w = p = std::make_shared<BlockPool>(block_size);
    return p;
  }
  BlockPtr hit(Key k) {
    auto it = cached.find(k);
    if (it == cached.end()) return nullptr;
    lru.splice(lru.begin(), lru, it->second);
    return it->second->second;
  }
  void insert(Key k, BlockPtr p) {
    if (cached.count(k)) return;
    const size_t cap = capacity(p->pool->buffer_bytes());
    bytes += p->pool->buffer_bytes();
    lru.emplace_front(k, std::move(p));
    cached[k] = lru.begin();
    while (bytes > cap && lru.size() > 1) {
      bytes -= lru.back().second->pool->buffer_bytes();
      cached.erase(lru.back().first);
      lru.pop_back();
    }
  }
  void park(uint64_t src, std::unique_ptr<Cursor> c) {
    parked.push_front(Parked{src, std::move(c)});
    if (parked.size() > max_parked) parked.pop_back();
  }
  // Drops everything of a source going away (its id is never used again).
  void forget(uint64_t src) {
    for (auto it = lru.begin(); it != lru.end();) {
      if (it->first.src != src) {
        ++it;
        continue;
      }
      bytes -= it->second->pool->buffer_bytes();
      cached.erase(it->first);
      it = lru.erase(it);
    }
    parked.remove_if([&](const Parked& p) { return p.src == src; });
  }
};

std::shared_ptr<InflateCache> make_inflate_cache(size_t cap_bytes, size_t max_parked, size_t max_frontiers) {
  return std::make_shared<InflateCache>(cap_bytes, max_parked, max_frontiers);
}

std::shared_ptr<InflateCache> shared_inflate_cache() {
  static const std::shared_ptr<InflateCache> c = make_inflate_cache(32u << 20, 8, 4);
  return c;
}

InflateCacheUsage inflate_cache_usage(const InflateCache& c) {
  auto& m = const_cast<InflateCache&>(c);
  std::lock_guard lk(m.mu);
  return {m.bytes, m.cap_bytes, m.parked.size(), m.frontiers.size()};
}

// ---------------------------------------------------------------------------------------------
// Lazy indexing of a raw deflate stream

namespace {

// The index of a raw source while it is being built. Blocks below `snap`'s end are served
// through it like a gzip index's; blocks past it and below the recorder's end were produced by
// the indexing inflate since that snapshot (their starts are in `recent`, so they are found in
// the cache without copying the index again); anything further continues the indexing inflate.
struct Lazy {
  std::mutex mu;
  GzipIndexRecorder rec;
  std::unique_ptr<IndexingInflate> live;  // nullptr: not started, or dropped (resumes at the last point)
  std::shared_ptr<Block> cur;             // the block being filled, from cur_start
  uint64_t cur_start = 0;
  std::shared_ptr<const GzipIndex> snap;  // an index of a prefix; the whole index once complete
  bool complete = false;
  std::vector<uint64_t> recent;  // starts of blocks recent_base, recent_base + 1, ...
  uint64_t recent_base = 0;
  std::string failed;            // why the stream cannot be read further

  explicit Lazy(uint32_t block_size) : rec(block_size, 1u << 20, 0.0075) {}

  // The block holding `pos` (>= snap's end, < rec.block_start()): its id and range.
  std::optional<std::tuple<uint64_t, uint64_t, uint64_t>> recent_block(uint64_t pos) const {
    auto it = std::upper_bound(recent.begin(), recent.end(), pos);
    if (it == recent.begin()) return std::nullopt;
    size_t i = static_cast<size_t>(it - recent.begin()) - 1;
    uint64_t end = i + 1 < recent.size() ? recent[i + 1] : rec.block_start();
    if (pos >= end) return std::nullopt;
    return std::make_tuple(recent_base + i, recent[i], end);
  }

  void snapshot(uint64_t csize) {
    auto idx = std::make_shared<GzipIndex>(rec.partial());
    idx->uncompressed_size = rec.block_start();
    idx->compressed_size = csize;
    idx->members = 1;
    snap = std::move(idx);
    recent.clear();
    recent_base = rec.blocks();
  }
};

}  // namespace

struct GzipSource::Impl {
  std::shared_ptr<InflateCache> cache;
  std::shared_ptr<BlockPool> pool;
  uint64_t id = 0;
  bool raw = false;
  std::unique_ptr<Lazy> lazy;
  GzipStats stats;  // guarded by cache->mu

  // Serves the block holding `pos` through a (complete or prefix) index; `last` = the last block
  // this read needs in that index.
  BlockPtr indexed_block(const GzipIndex& idx, const ByteSource& src, uint64_t b, uint64_t last);
  // Continues the indexing inflate of a raw source until it has produced the block holding
  // `pos`; that block and its start. Called with lazy->mu held.
  std::pair<BlockPtr, uint64_t> extend(const GzipSource& self, uint64_t pos);
  void start_live(const GzipSource& self);
};

BlockPtr GzipSource::Impl::indexed_block(const GzipIndex& idx, const ByteSource& src, uint64_t b, uint64_t last) {
  InflateCache& m = *cache;
  // One inflate run produces at most a quarter of the cache, so it never evicts its own output.
  const uint64_t max_run = std::max<uint64_t>(1, m.capacity(pool->buffer_bytes()) / pool->buffer_bytes() / 4);
  BlockPtr blk;
  std::unique_ptr<Cursor> cur;
  uint64_t from = 0, to = 0;
  std::list<InflateCache::Job>::iterator job;
  {
    std::unique_lock lk(m.mu);
    for (;;) {
      if ((blk = m.hit({id, b}))) {
        ++stats.block_hits;
        return blk;
      }
      // Another reader is already inflating this block: wait for it rather than inflate twice.
      bool busy = std::any_of(m.jobs.begin(), m.jobs.end(),
                              [&](const auto& j) { return j.src == id && j.from <= b && b <= j.to; });
      if (!busy) break;
      m.cv.wait(lk);
    }
    const size_t pi = idx.point_of_block(b);
    const uint64_t first = idx.points[pi].first_block;
    auto best = m.parked.end();
    for (auto it = m.parked.begin(); it != m.parked.end(); ++it)
      if (it->src == id && it->cursor->next_block >= first && it->cursor->next_block <= b &&
          (best == m.parked.end() || it->cursor->next_block > best->cursor->next_block))
        best = it;
    if (best != m.parked.end()) {
      cur = std::move(best->cursor);
      m.parked.erase(best);
      ++stats.cursor_resumes;
      from = cur->next_block;
    } else {
      ++stats.cursor_starts;
      from = first;
    }
    to = std::min(last, b + max_run - 1);
    job = m.jobs.insert(m.jobs.end(), InflateCache::Job{id, from, to});
  }
  try {
    if (!cur) cur = start_cursor(idx, src, idx.point_of_block(b));
    for (uint64_t k = from; k <= to; ++k) {
      BlockPtr p = inflate_block(idx, src, *cur, k, pool, raw);
      if (k == b) blk = p;
      std::lock_guard lk(m.mu);
      m.insert({id, k}, std::move(p));
      ++stats.blocks_inflated;
      m.cv.notify_all();
    }
  } catch (...) {
    std::lock_guard lk(m.mu);
    m.jobs.erase(job);
    m.cv.notify_all();
    throw;
  }
  std::lock_guard lk(m.mu);
  m.jobs.erase(job);
  if (cur->next_block < idx.block_crcs.size()) m.park(id, std::move(cur));
  m.cv.notify_all();
  return blk;
}

void GzipSource::Impl::start_live(const GzipSource& self) {
  Lazy& l = *lazy;
  const ByteSource& src = *self.compressed_;
  auto ii = std::make_unique<IndexingInflate>();
  ii->in.resize(64 << 10);
  ii->out.resize(kWindow + (64 << 10));
  ii->in_end = src.size();
  if (l.rec.partial().points.empty()) {
    ii->reset(src, 0, 0, {});
    l.rec.add_point(0, 0, nullptr, 0);
  } else {
    // Dropped earlier (or never past its first point): resume at the last access point.
    l.rec.rewind_to_last_point();
    if (l.recent_base >= l.rec.blocks()) {
      l.recent.clear();
      l.recent_base = l.rec.blocks();
    } else {
      l.recent.resize(static_cast<size_t>(l.rec.blocks() - l.recent_base));
    }
    const GzipIndex& idx = l.rec.partial();
    const GzipPoint& p = idx.points.back();
    ii->reset(src, p.in, p.bits, p.window_len ? idx.window(idx.points.size() - 1) : std::string());
  }
  l.live = std::move(ii);
  l.cur = std::make_shared<Block>(pool, l.rec.partial().block_size);
  l.cur_start = l.rec.block_start();
  // At most max_frontiers live indexing inflates in the cache's sources: drop the least recently
  // started one that is not busy (it resumes from its last access point when read again).
  std::lock_guard lk(cache->mu);
  cache->frontiers.remove(&l);
  cache->frontiers.push_front(&l);
  for (auto it = std::prev(cache->frontiers.end()); cache->frontiers.size() > cache->max_frontiers;) {
    Lazy* x = *it;
    bool dropped = false;
    if (x != &l && x->mu.try_lock()) {
      x->live.reset();
      x->cur.reset();
      x->mu.unlock();
      dropped = true;
    }
    if (it == cache->frontiers.begin()) break;
    auto prev = std::prev(it);
    if (dropped) cache->frontiers.erase(it);
    it = prev;
  }
}

std::pair<BlockPtr, uint64_t> GzipSource::Impl::extend(const GzipSource& self, uint64_t pos) {
  Lazy& l = *lazy;
  const ByteSource& src = *self.compressed_;
  const uint64_t usize = self.usize_;
  if (!l.failed.empty()) eio(l.failed);
  BlockPtr found;
  uint64_t found_start = 0;
  auto emit = [&](uint64_t end) {
    l.cur->size = static_cast<size_t>(end - l.cur_start);
    const uint64_t k = l.recent_base + l.recent.size();
    l.recent.push_back(l.cur_start);
    BlockPtr b = std::move(l.cur);
    if (l.cur_start <= pos && pos < end) {
      found = b;
      found_start = l.cur_start;
    }
    {
      std::lock_guard lk(cache->mu);
      cache->insert({id, k}, std::move(b));
      ++stats.blocks_inflated;
    }
    l.cur_start = end;
    if (end < usize) l.cur = std::make_shared<Block>(pool, l.rec.partial().block_size);
  };
  // New output: copied into the block being filled, recorded, and the block handed to the cache
  // as soon as the recorder closes it.
  auto sink = [&](const unsigned char* p, size_t n) {
    if (n > usize - l.rec.out())
      throw FormatError("deflate", std::nullopt, "inflates to more than the " + std::to_string(usize) + " bytes its entry declares");
    while (n > 0) {
      size_t take = static_cast<size_t>(std::min<uint64_t>(l.rec.block_start() + l.rec.partial().block_size - l.rec.out(), n));
      std::memcpy(l.cur->data + (l.rec.out() - l.cur_start), p, take);
      size_t before = l.rec.blocks();
      l.rec.output(p, take);
      if (l.rec.blocks() != before) emit(l.rec.block_start());
      p += take;
      n -= take;
    }
  };
  try {
    if (!l.live) {
      start_live(self);
      std::lock_guard lk(cache->mu);
      ++stats.cursor_starts;
    }
    while (!found) {
      int ret = l.live->step(src, l.rec, sink, "the stream");
      // An access point closes the block before it early.
      if (l.rec.block_start() > l.cur_start) emit(l.rec.block_start());
      if (ret != Z_STREAM_END) continue;
      if (l.rec.out() != usize)
        throw FormatError("deflate", std::nullopt, "inflates to " + std::to_string(l.rec.out()) + " bytes, its entry declares " + std::to_string(usize));
      if (l.rec.out() > l.cur_start) emit(l.rec.out());
      l.snap = std::make_shared<const GzipIndex>(l.rec.finish(src.size(), 1));
      l.complete = true;
      l.live.reset();
      l.cur.reset();
      l.recent.clear();
      l.recent.shrink_to_fit();
      std::lock_guard lk(cache->mu);
      cache->frontiers.remove(&l);
      break;
    }
  } catch (const FormatError& e) {
    l.failed = self.describe() + ": " + e.what();
    l.live.reset();
    l.cur.reset();
    std::lock_guard lk(cache->mu);
    cache->frontiers.remove(&l);
    eio(l.failed);
  }
  if (!found) eio(self.describe() + ": no block holds byte " + std::to_string(pos));
  return {found, found_start};
}

GzipSource::GzipSource(SourcePtr compressed, std::shared_ptr<const GzipIndex> index, size_t cache_bytes,
                       GzipIndexOrigin origin, std::string note)
    : compressed_(std::move(compressed)), index_(std::move(index)), origin_(origin), note_(std::move(note)),
      impl_(std::make_unique<Impl>()) {
  usize_ = index_->uncompressed_size;
  impl_->cache = make_inflate_cache(cache_bytes, 8, 1);
  impl_->pool = impl_->cache->pool_for(index_->block_size);
  impl_->id = impl_->cache->next_id++;
}

GzipSource::GzipSource(RawDeflate, SourcePtr compressed, uint64_t usize, std::shared_ptr<InflateCache> cache,
                       std::string what, uint32_t block_size)
    : compressed_(std::move(compressed)), origin_(GzipIndexOrigin::Built), usize_(usize), what_(std::move(what)),
      impl_(std::make_unique<Impl>()) {
  impl_->cache = std::move(cache);
  impl_->pool = impl_->cache->pool_for(block_size);
  impl_->id = impl_->cache->next_id++;
  impl_->raw = true;
  impl_->lazy = std::make_unique<Lazy>(block_size);
}

GzipSource::~GzipSource() {
  std::lock_guard lk(impl_->cache->mu);
  if (impl_->lazy) impl_->cache->frontiers.remove(impl_->lazy.get());
  impl_->cache->forget(impl_->id);
}

uint64_t GzipSource::size() const { return usize_; }

std::string GzipSource::describe() const { return impl_->raw ? what_ : compressed_->describe() + " (gzip)"; }

bool GzipSource::indexed() const {
  if (!impl_->lazy) return true;
  std::lock_guard lk(impl_->lazy->mu);
  return impl_->lazy->complete;
}

const GzipIndex& GzipSource::index() const {
  if (!impl_->lazy) return *index_;
  std::lock_guard lk(impl_->lazy->mu);
  if (!impl_->lazy->complete) throw std::logic_error("GzipSource::index: the raw deflate stream is not indexed yet");
  return *impl_->lazy->snap;
}

GzipStats GzipSource::stats() const {
  GzipStats st;
  {
    std::lock_guard lk(impl_->cache->mu);
    st = impl_->stats;
    st.cache_bytes = impl_->cache->bytes;
  }
  std::tie(st.block_bytes, st.block_bytes_peak) = impl_->pool->usage();
  return st;
}

size_t GzipSource::cache_capacity() const { return impl_->cache->capacity(impl_->pool->buffer_bytes()); }

size_t GzipSource::read_at(uint64_t off, void* buf, size_t len) const {
  if (off >= usize_ || len == 0) return 0;
  len = static_cast<size_t>(std::min<uint64_t>(len, usize_ - off));
  Impl& m = *impl_;
  auto* out = static_cast<unsigned char*>(buf);
  size_t done = 0;
  while (done < len) {
    const uint64_t pos = off + done;
    BlockPtr blk;
    uint64_t bs = 0;
    std::shared_ptr<const GzipIndex> idx = index_;
    if (m.lazy) {
      Lazy& l = *m.lazy;
      std::unique_lock lk(l.mu);
      if (l.snap && pos < l.snap->uncompressed_size) {
        idx = l.snap;
      } else if (pos < l.rec.block_start()) {
        // Produced by the indexing inflate since the last snapshot: most likely still cached.
        if (auto r = l.recent_block(pos)) {
          std::lock_guard clk(m.cache->mu);
          if ((blk = m.cache->hit({m.id, std::get<0>(*r)}))) ++m.stats.block_hits;
          bs = std::get<1>(*r);
        }
        if (!blk) {
          l.snapshot(compressed_->size());
          idx = l.snap;
        }
      } else {
        std::tie(blk, bs) = m.extend(*this, pos);
      }
    }
    if (!blk) {
      const uint64_t b = idx->block_of(pos);
      const uint64_t last = idx->block_of(std::min<uint64_t>(off + len, idx->uncompressed_size) - 1);
      bs = idx->block_range(b).first;
      blk = m.indexed_block(*idx, *compressed_, b, last);
    }
    size_t n = static_cast<size_t>(std::min<uint64_t>(bs + blk->size - pos, len - done));
    std::memcpy(out + done, blk->data + (pos - bs), n);
    done += n;
  }
  // Blocks from the cache (or inflated from input a parked cursor read earlier) were the file's
  // when they were read; a file changed since answers EIO from then on, cached or not.
  compressed_->verify();
  return len;
}

}  // namespace nemofs
