// Reads served through a gzip index (formats/gzip/index.h): the uncompressed byte at offset `off`
// lies in block block_of(off); a block is inflated from its access point (or from where a parked
// inflate stopped), checked against the index's CRC-32 of it, and kept in a bounded LRU cache of
// whole-block buffers shared by concurrent readers.
//
// The same engine serves a raw deflate stream (a deflated zip entry: no gzip framing, one stream
// of a known inflated size), indexed lazily: nothing is inflated until the first read; reads past
// the part indexed so far continue the one indexing inflate (its blocks go to the cache as it
// goes, so a sequential reader inflates every byte once); reads before it go through the index.
// Such sources share one process-wide cache (shared_inflate_cache()), so the memory deflated
// entries take is bounded whatever their number and size.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "formats/core/byte_source.h"
#include "formats/gzip/index.h"

namespace nemofs {

// A bounded LRU cache of inflated blocks, with the inflates parked between reads, that many
// sources can share. Memory it holds: at most `cap_bytes` of cached blocks, plus two blocks per
// concurrent reader, plus `max_parked` parked inflates (~100 KiB each), plus `max_frontiers`
// indexing inflates of lazy raw sources (~1 MiB each; the least recently used one past that is
// dropped and later resumed from its last access point).
class InflateCache;
std::shared_ptr<InflateCache> make_inflate_cache(size_t cap_bytes, size_t max_parked = 8, size_t max_frontiers = 4);
// The cache every raw deflate source of this process shares (32 MiB of blocks).
std::shared_ptr<InflateCache> shared_inflate_cache();
struct InflateCacheUsage {
  uint64_t cache_bytes = 0;  // cached block buffers now
  size_t capacity = 0;
  size_t parked = 0, frontiers = 0;
};
InflateCacheUsage inflate_cache_usage(const InflateCache& c);

enum class GzipIndexOrigin { Built, LoadedFromCache };

struct GzipStats {
  uint64_t block_hits = 0;      // blocks served from the inflated-block cache
  uint64_t blocks_inflated = 0;  // blocks produced by inflating
  uint64_t cursor_starts = 0;   // inflates started at an access point
  uint64_t cursor_resumes = 0;  // inflates continued from where an earlier read stopped
  uint64_t cache_bytes = 0;     // block buffers the cache holds now
  uint64_t block_bytes = 0;     // block buffers in use now: the cache's plus those readers hold
  uint64_t block_bytes_peak = 0;  // the most block_bytes has been
};

// The uncompressed bytes of a gzip file, read through an index. Thread-safe; inflated blocks are
// shared by concurrent readers through a bounded LRU cache, and a reader that stopped mid-chunk
// leaves its inflate state parked so sequential reads continue instead of restarting.
class GzipSource final : public ByteSource {
 public:
  GzipSource(SourcePtr compressed, std::shared_ptr<const GzipIndex> index, size_t cache_bytes,
             GzipIndexOrigin origin = GzipIndexOrigin::Built, std::string note = {});
  // A raw deflate stream (all of `compressed`, or less: bytes after its end are ignored) that
  // must inflate to exactly `usize` bytes, indexed lazily through `cache`. A stream that is
  // invalid, ends early or inflates to more fails the read that meets it (and every later one
  // past the last good block) with SysError(EIO); `what` names it.
  struct RawDeflate {};
  GzipSource(RawDeflate, SourcePtr compressed, uint64_t usize, std::shared_ptr<InflateCache> cache, std::string what,
             uint32_t block_size = 256u << 10);
  ~GzipSource() override;
  uint64_t size() const override;
  // Throws SysError(EIO) when the compressed bytes no longer inflate to what was indexed, or the
  // file changed since it was opened (checked after every read, cache hits included).
  size_t read_at(uint64_t off, void* buf, size_t len) const override;
  std::string describe() const override;
  void verify() const override { compressed_->verify(); }

  // The index (a raw source: only once it has been read to the end; check indexed()).
  const GzipIndex& index() const;
  bool indexed() const;
  const SourcePtr& compressed() const { return compressed_; }
  GzipIndexOrigin origin() const { return origin_; }
  // Why the index was not persisted or not loaded (empty when all went well).
  const std::string& cache_note() const { return note_; }
  GzipStats stats() const;
  // The cache's bound in bytes (cache_bytes, at least two blocks; a shared cache's bound). Block buffers in use stay under
  // it plus two blocks per concurrent reader (the one it copies from, the one it inflates into);
  // up to 4 freed ones are kept for reuse, the rest are unmapped at once.
  size_t cache_capacity() const;

 private:
  struct Impl;
  SourcePtr compressed_;
  std::shared_ptr<const GzipIndex> index_;
  GzipIndexOrigin origin_;
  std::string note_;
  uint64_t usize_ = 0;
  std::string what_;
  std::unique_ptr<Impl> impl_;
};

// Opens a gzip file for random access: loads its index from the cache when it is there and
// current, or builds it (one pass) and stores it. `cache_key_path` = the real path of the file (for
// the key and messages); "" = no persistence. Throws FormatError for a bad gzip stream.
std::shared_ptr<const GzipSource> open_gzip(const SourcePtr& compressed, const std::string& cache_key_path,
                                            const GzipOptions& opt = {});

}  // namespace nemofs
