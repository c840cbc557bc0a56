// Serving reads: the uncompressed bytes of a gzip file, inflated from the index's access points
// through a bounded cache of verified blocks (formats/gzip/gzip_source.h).
#include <sys/mman.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <list>
#include <mutex>
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

constexpr size_t kMaxParked = 8;

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
BlockPtr inflate_block(const GzipIndex& idx, const ByteSource& src, Cursor& c, uint64_t k,
                       const std::shared_ptr<BlockPool>& pool) {
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
      if (got == 0) eio(src.describe() + ": gzip data ends before uncompressed byte " + std::to_string(e) + changed);
      z.next_in = c.in.data();
      z.avail_in = static_cast<uInt>(got);
      c.in_next += got;
    }
    int ret = inflate(&z, Z_NO_FLUSH);
    if (ret == Z_STREAM_END) {
      // A member that ends exactly with the block: leave the transition to the next block (inflate
      // keeps answering Z_STREAM_END without consuming anything).
      if (z.avail_out == 0) break;
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
      eio(src.describe() + ": gzip data near compressed byte " + std::to_string(c.in_next - z.avail_in) +
          " does not inflate (" + (z.msg ? z.msg : "inflate failed") + ")" + changed);
  }
  if (crc(0, blk->data, blk->size) != idx.block_crcs[k])
    eio(src.describe() + ": uncompressed bytes " + std::to_string(s) + ".." + std::to_string(e) +
        " do not match the index (CRC-32 mismatch)" + changed);
  c.next_block = k + 1;
  return blk;
}

}  // namespace

struct GzipSource::Impl {
  std::mutex mu;
  std::condition_variable cv;
  std::list<std::pair<uint64_t, BlockPtr>> lru;  // front = most recently used
  std::unordered_map<uint64_t, std::list<std::pair<uint64_t, BlockPtr>>::iterator> cached;
  size_t bytes = 0;  // buffer bytes held by the cache (whole buffers: what it really costs)
  size_t cap = 0;
  std::shared_ptr<BlockPool> pool;
  std::list<std::unique_ptr<Cursor>> parked;      // front = most recently parked
  std::list<std::pair<uint64_t, uint64_t>> jobs;  // block ranges being inflated right now
  GzipStats stats;

  BlockPtr hit(uint64_t b) {
    auto it = cached.find(b);
    if (it == cached.end()) return nullptr;
    lru.splice(lru.begin(), lru, it->second);
    return it->second->second;
  }
  void insert(uint64_t b, BlockPtr p) {
    if (cached.count(b)) return;
    lru.emplace_front(b, p);
    cached[b] = lru.begin();
    bytes += pool->buffer_bytes();
    while (bytes > cap && lru.size() > 1) {
      bytes -= pool->buffer_bytes();
      cached.erase(lru.back().first);
      lru.pop_back();
    }
  }
};

GzipSource::GzipSource(SourcePtr compressed, std::shared_ptr<const GzipIndex> index, size_t cache_bytes,
                       GzipIndexOrigin origin, std::string note)
    : compressed_(std::move(compressed)), index_(std::move(index)), origin_(origin), note_(std::move(note)),
      impl_(std::make_unique<Impl>()) {
  impl_->pool = std::make_shared<BlockPool>(index_->block_size);
  impl_->cap = std::max<size_t>(cache_bytes, 2 * impl_->pool->buffer_bytes());
}

GzipSource::~GzipSource() = default;

uint64_t GzipSource::size() const { return index_->uncompressed_size; }

std::string GzipSource::describe() const { return compressed_->describe() + " (gzip)"; }

GzipStats GzipSource::stats() const {
  GzipStats st;
  {
    std::lock_guard lk(impl_->mu);
    st = impl_->stats;
    st.cache_bytes = impl_->bytes;
  }
  std::tie(st.block_bytes, st.block_bytes_peak) = impl_->pool->usage();
  return st;
}

size_t GzipSource::cache_capacity() const { return impl_->cap; }

size_t GzipSource::read_at(uint64_t off, void* buf, size_t len) const {
  const GzipIndex& idx = *index_;
  if (off >= idx.uncompressed_size || len == 0) return 0;
  len = static_cast<size_t>(std::min<uint64_t>(len, idx.uncompressed_size - off));
  const uint64_t last = idx.block_of(off + len - 1);
  // One inflate run produces at most a quarter of the cache, so it never evicts its own output.
  const uint64_t max_run = std::max<uint64_t>(1, impl_->cap / impl_->pool->buffer_bytes() / 4);
  Impl& m = *impl_;
  auto* out = static_cast<unsigned char*>(buf);
  size_t done = 0;
  while (done < len) {
    const uint64_t pos = off + done;
    const uint64_t b = idx.block_of(pos);
    const auto [bs, be] = idx.block_range(b);
    BlockPtr blk;
    std::unique_ptr<Cursor> cur;
    uint64_t from = 0, to = 0;
    std::list<std::pair<uint64_t, uint64_t>>::iterator job;
    {
      std::unique_lock lk(m.mu);
      for (;;) {
        if ((blk = m.hit(b))) {
          ++m.stats.block_hits;
          break;
        }
        // Another reader is already inflating this block: wait for it rather than inflate twice.
        bool busy = std::any_of(m.jobs.begin(), m.jobs.end(), [&](const auto& j) { return j.first <= b && b <= j.second; });
        if (!busy) break;
        m.cv.wait(lk);
      }
      if (!blk) {
        const size_t pi = idx.point_of_block(b);
        const uint64_t first = idx.points[pi].first_block;
        auto best = m.parked.end();
        for (auto it = m.parked.begin(); it != m.parked.end(); ++it)
          if ((*it)->next_block >= first && (*it)->next_block <= b &&
              (best == m.parked.end() || (*it)->next_block > (*best)->next_block))
            best = it;
        if (best != m.parked.end()) {
          cur = std::move(*best);
          m.parked.erase(best);
          ++m.stats.cursor_resumes;
          from = cur->next_block;
        } else {
          ++m.stats.cursor_starts;
          from = first;
        }
        to = std::min(last, b + max_run - 1);
        job = m.jobs.emplace(m.jobs.end(), from, to);
      }
    }
    if (!blk) {
      try {
        if (!cur) cur = start_cursor(idx, *compressed_, idx.point_of_block(b));
        for (uint64_t k = from; k <= to; ++k) {
          BlockPtr p = inflate_block(idx, *compressed_, *cur, k, m.pool);
          if (k == b) blk = p;
          std::lock_guard lk(m.mu);
          m.insert(k, std::move(p));
          ++m.stats.blocks_inflated;
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
      if (cur->next_block < idx.block_crcs.size()) {
        m.parked.push_front(std::move(cur));
        if (m.parked.size() > kMaxParked) m.parked.pop_back();
      }
      m.cv.notify_all();
    }
    size_t n = static_cast<size_t>(std::min<uint64_t>(be - pos, len - done));
    std::memcpy(out + done, blk->data + (pos - bs), n);
    done += n;
  }
  // Blocks from the cache (or inflated from input a parked cursor read earlier) were the file's
  // when they were read; a file changed since answers EIO from then on, cached or not.
  compressed_->verify();
  return len;
}

}  // namespace nemofs
