// A tensor assembled from box-shaped chunks (distributed checkpoints), read lazily.
//
// Byte layout: the global tensor of shape S (n dims, C order) and element size E bytes is the file
//   byte b  <->  element e = b / E, multi-index g with e = sum_d g[d] * prod_{k>d} S[k].
// Chunk c is an axis-aligned box offsets o_c, sizes s_c (o_c[d] + s_c[d] <= S[d]); its source holds
// the box's elements C-contiguously (local index l = g - o_c), so global row-major order visits a
// chunk as a series of runs, one per "row" (all dims but the last) the chunk spans.
//
// Index: trailing dims every chunk spans fully are folded into the element (an FSDP2 dim-0 shard of
// a matrix becomes one contiguous run per chunk). Along the first remaining dim the union of chunk
// boundaries cuts the tensor into slabs; each slab keeps the ids of the chunks crossing it, sorted
// by their start on the last dim, so a read finds the chunks of a row by binary search and never
// looks at chunks it does not overlap. Reads are planned as runs (chunk, local offset, length),
// adjacent runs of one chunk merged; the runs of one chunk that lies in a real file are issued as a
// single preadv (gaps between the runs of consecutive rows go to a scratch buffer), others through
// the chunk's read_at. file_range() works when the requested range is one run of one such chunk.
//
// Chunk sources are opened on first use (open() may parse an embedded torch.save zip), once, and
// must have exactly prod(s_c) * E bytes; a failure to open or a size mismatch is reported as
// SysError(EIO) naming the chunk, never as zeros.
//
// validate_tiling() is the mount-time check: every chunk has n dims and lies inside S, no two
// non-empty chunks overlap, and the chunks cover every element. Each defect has its own message.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "formats/core/byte_source.h"

namespace nemofs::dcp {

struct Box {
  std::vector<uint64_t> offsets;
  std::vector<uint64_t> sizes;
};

struct ShardChunk {
  Box box;
  std::function<SourcePtr()> open;  // the chunk's C-contiguous bytes; may throw FormatError/SysError
  std::string what;                 // names the chunk in messages ("__0_0.distcp @ 1234")
};

// Throws FormatError("dcp", ...) naming `what` and the chunk(s) at fault. Zero-size chunks are
// allowed (offset clamped to the dim, as torch.chunk shards give) and must still lie inside S.
// Two chunks with identical boxes count as an overlap (callers drop replicas first).
void validate_tiling(const std::vector<uint64_t>& shape, const std::vector<Box>& boxes, const std::string& what);

class ShardedTensorSource final : public ByteSource {
 public:
  // The chunks must have passed validate_tiling(shape, ...). elem_bytes >= 1.
  ShardedTensorSource(std::vector<uint64_t> shape, uint64_t elem_bytes, std::vector<ShardChunk> chunks,
                      std::string what);
  ~ShardedTensorSource() override;

  uint64_t size() const override { return total_; }
  size_t read_at(uint64_t off, void* buf, size_t len) const override;
  std::optional<FileRange> file_range(uint64_t off, uint64_t len) const override;
  std::string describe() const override { return what_; }
  void verify() const override;  // every chunk's file (opening the chunks not opened yet)

  size_t chunk_count() const { return chunks_.size(); }
  // How many chunks have been opened so far (tests check that reads touch only what they overlap).
  size_t opened_count() const { return opened_.load(); }

 private:
  struct Chunk;
  struct Run {
    uint32_t chunk;
    uint64_t local;
    uint64_t dst;  // offset in the caller's buffer
    uint64_t len;
  };
  const Chunk& ready(uint32_t id) const;
  void plan(uint64_t off, uint64_t len, std::vector<Run>& runs) const;

  std::vector<uint64_t> shape_;
  std::string what_;
  uint64_t total_ = 0;
  // Folded geometry: dims_ (>= 1) with elem_ bytes per folded element.
  std::vector<uint64_t> dims_;
  uint64_t elem_ = 0;
  uint64_t row_bytes_ = 0;
  std::vector<std::unique_ptr<Chunk>> chunks_;
  std::vector<uint64_t> cuts_;                 // slab boundaries along folded dim 0 (dims_.size() >= 2)
  std::vector<std::vector<uint32_t>> slabs_;   // chunk ids per slab (or one list when 1-D)
  mutable std::atomic<size_t> opened_{0};
};

}  // namespace nemofs::dcp
