// Reads served through a gzip index (formats/gzip/index.h): the uncompressed byte at offset `off`
// lies in block block_of(off); a block is inflated from its access point (or from where a parked
// inflate stopped), checked against the index's CRC-32 of it, and kept in a bounded LRU cache of
// whole-block buffers shared by concurrent readers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "formats/core/byte_source.h"
#include "formats/gzip/index.h"

namespace nemofs {

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
  ~GzipSource() override;
  uint64_t size() const override;
  // Throws SysError(EIO) when the compressed bytes no longer inflate to what was indexed, or the
  // file changed since it was opened (checked after every read, cache hits included).
  size_t read_at(uint64_t off, void* buf, size_t len) const override;
  std::string describe() const override;
  void verify() const override { compressed_->verify(); }

  const GzipIndex& index() const { return *index_; }
  const SourcePtr& compressed() const { return compressed_; }
  GzipIndexOrigin origin() const { return origin_; }
  // Why the index was not persisted or not loaded (empty when all went well).
  const std::string& cache_note() const { return note_; }
  GzipStats stats() const;
  // The cache's bound in bytes (cache_bytes, at least two blocks). Block buffers in use stay under
  // it plus two blocks per concurrent reader (the one it copies from, the one it inflates into);
  // up to 4 freed ones are kept for reuse, the rest are unmapped at once.
  size_t cache_capacity() const;

 private:
  struct Impl;
  SourcePtr compressed_;
  std::shared_ptr<const GzipIndex> index_;
  GzipIndexOrigin origin_;
  std::string note_;
  std::unique_ptr<Impl> impl_;
};

// Opens a gzip file for random access: loads its index from the cache when it is there and
// current, or builds it (one pass) and stores it. `cache_key_path` = the real path of the file (for
// the key and messages); "" = no persistence. Throws FormatError for a bad gzip stream.
std::shared_ptr<const GzipSource> open_gzip(const SourcePtr& compressed, const std::string& cache_key_path,
                                            const GzipOptions& opt = {});

}  // namespace nemofs
