#include "formats/dcp/sharded.h"

#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <numeric>

#include "formats/core/checked.h"
#include "formats/core/errors.h"
#include "formats/core/io.h"

namespace nemofs::dcp {
namespace {

constexpr const char* kFmt = "dcp";

std::string dims_text(const std::vector<uint64_t>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

std::string box_text(const Box& b) { return "offsets " + dims_text(b.offsets) + " sizes " + dims_text(b.sizes); }

bool empty_box(const Box& b) {
  return std::any_of(b.sizes.begin(), b.sizes.end(), [](uint64_t s) { return s == 0; });
}

bool boxes_overlap(const Box& a, const Box& b) {
  for (size_t d = 0; d < a.offsets.size(); ++d)
    if (a.offsets[d] + a.sizes[d] <= b.offsets[d] || b.offsets[d] + b.sizes[d] <= a.offsets[d]) return false;
  return true;
}

// Beyond this many pairwise box comparisons a layout is refused rather than checked slowly.
constexpr uint64_t kMaxOverlapWork = 400'000'000;
// Beyond this many (slab, chunk) index entries a layout is refused (a hostile staircase tiling).
constexpr uint64_t kMaxSlabEntries = 1ull << 26;
// Largest gap between two runs of one chunk that is read into scratch instead of splitting a preadv.
constexpr uint64_t kMaxGap = 256 * 1024;

}  // namespace

void validate_tiling(const std::vector<uint64_t>& shape, const std::vector<Box>& boxes, const std::string& what) {
  const size_t n = shape.size();
  uint64_t total = 1;
  for (uint64_t s : shape) total = checked_mul(total, s, kFmt, std::nullopt, (what + ": element count").c_str());
  std::vector<uint32_t> live;
  uint64_t covered = 0;
  for (size_t i = 0; i < boxes.size(); ++i) {
    const Box& b = boxes[i];
    if (b.offsets.size() != n || b.sizes.size() != n)
      throw FormatError(kFmt, what + ": chunk " + std::to_string(i) + " has " + std::to_string(b.offsets.size()) + "/" +
                                  std::to_string(b.sizes.size()) + " offsets/sizes for a tensor of " +
                                  std::to_string(n) + " dims");
    uint64_t vol = 1;
    for (size_t d = 0; d < n; ++d) {
      auto end = try_add(b.offsets[d], b.sizes[d]);
      if (!end || *end > shape[d])
        throw FormatError(kFmt, what + ": chunk " + std::to_string(i) + " (" + box_text(b) +
                                    ") lies outside the tensor's shape " + dims_text(shape));
      vol *= b.sizes[d];  // bounded by total, which did not overflow
    }
    if (vol == 0) continue;
    covered = try_add(covered, vol).value_or(UINT64_MAX);  // overflows only with overlaps, found below
    live.push_back(static_cast<uint32_t>(i));
  }
  if (live.size() > 1) {
    // Sweep along the dim with the most distinct chunk starts: only chunks whose extents along it
    // intersect can overlap.
    size_t sweep = 0;
    size_t best = 0;
    for (size_t d = 0; d < n; ++d) {
      std::vector<uint64_t> starts;
      starts.reserve(live.size());
      for (uint32_t i : live) starts.push_back(boxes[i].offsets[d]);
      std::sort(starts.begin(), starts.end());
      size_t distinct = std::unique(starts.begin(), starts.end()) - starts.begin();
      if (distinct > best) best = distinct, sweep = d;
    }
    std::sort(live.begin(), live.end(), [&](uint32_t a, uint32_t b) {
      return boxes[a].offsets[sweep] < boxes[b].offsets[sweep];
    });
    std::vector<uint32_t> active;
    uint64_t work = 0;
    for (uint32_t i : live) {
      const uint64_t start = boxes[i].offsets[sweep];
      active.erase(std::remove_if(active.begin(), active.end(),
                                  [&](uint32_t j) { return boxes[j].offsets[sweep] + boxes[j].sizes[sweep] <= start; }),
                   active.end());
      work += active.size() + 1;
      if (work > kMaxOverlapWork)
        throw FormatError(kFmt, what + ": " + std::to_string(boxes.size()) +
                                    " chunks in a layout too irregular to check for overlaps");
      for (uint32_t j : active)
        if (boxes_overlap(boxes[i], boxes[j])) {
          uint32_t a = std::min(i, j), b = std::max(i, j);
          throw FormatError(kFmt, what + ": chunk " + std::to_string(a) + " (" + box_text(boxes[a]) +
                                      ") overlaps chunk " + std::to_string(b) + " (" + box_text(boxes[b]) + ")");
        }
      active.push_back(i);
    }
  }
  if (covered != total)
    throw FormatError(kFmt, what + ": missing chunk: the chunks cover " + std::to_string(covered) + " of " +
                                std::to_string(total) + " elements of shape " + dims_text(shape));
}

struct ShardedTensorSource::Chunk {
  std::vector<uint64_t> off, size;  // folded box
  uint64_t nbytes = 0;
  uint64_t row_bytes = 0;           // bytes of one chunk row (last folded dim)
  uint64_t col_start = 0, col_end = 0;  // byte columns of a global row the chunk covers
  std::function<SourcePtr()> open;
  std::string what;
  mutable std::once_flag once;
  mutable SourcePtr src;
  mutable std::optional<FileRange> fr;
};

ShardedTensorSource::ShardedTensorSource(std::vector<uint64_t> shape, uint64_t elem_bytes, std::vector<ShardChunk> chunks,
                                         std::string what)
    : shape_(std::move(shape)), what_(std::move(what)) {
  const size_t n = shape_.size();
  total_ = elem_bytes;
  for (uint64_t s : shape_) total_ = checked_mul(total_, s, kFmt, std::nullopt, (what_ + ": byte size").c_str());
  if (total_ == 0) return;
  std::vector<ShardChunk*> live;
  for (auto& c : chunks)
    if (!empty_box(c.box)) live.push_back(&c);
  // Fold the trailing dims every chunk spans whole.
  size_t keep = n;
  while (keep > 0) {
    size_t d = keep - 1;
    bool full = std::all_of(live.begin(), live.end(),
                            [&](ShardChunk* c) { return c->box.offsets[d] == 0 && c->box.sizes[d] == shape_[d]; });
    if (!full) break;
    --keep;
  }
  elem_ = elem_bytes;
  for (size_t d = keep; d < n; ++d) elem_ *= shape_[d];
  if (keep == 0) {
    dims_ = {1};
  } else {
    dims_.assign(shape_.begin(), shape_.begin() + keep);
  }
  const size_t nd = dims_.size();
  row_bytes_ = dims_.back() * elem_;
  for (ShardChunk* c : live) {
    auto ch = std::make_unique<Chunk>();
    if (keep == 0) {
      ch->off = {0};
      ch->size = {1};
    } else {
      ch->off.assign(c->box.offsets.begin(), c->box.offsets.begin() + keep);
      ch->size.assign(c->box.sizes.begin(), c->box.sizes.begin() + keep);
    }
    ch->nbytes = elem_;
    for (uint64_t s : ch->size) ch->nbytes *= s;
    ch->row_bytes = ch->size.back() * elem_;
    ch->col_start = ch->off.back() * elem_;
    ch->col_end = ch->col_start + ch->row_bytes;
    ch->open = std::move(c->open);
    ch->what = std::move(c->what);
    chunks_.push_back(std::move(ch));
  }
  auto by_col = [&](uint32_t a, uint32_t b) {
    const Chunk& x = *chunks_[a];
    const Chunk& y = *chunks_[b];
    if (x.col_start != y.col_start) return x.col_start < y.col_start;
    return x.off < y.off;
  };
  if (nd == 1) {
    slabs_.resize(1);
    slabs_[0].resize(chunks_.size());
    std::iota(slabs_[0].begin(), slabs_[0].end(), 0u);
    std::sort(slabs_[0].begin(), slabs_[0].end(), by_col);
    return;
  }
  cuts_.push_back(0);
  cuts_.push_back(dims_[0]);
  for (const auto& c : chunks_) {
    cuts_.push_back(c->off[0]);
    cuts_.push_back(c->off[0] + c->size[0]);
  }
  std::sort(cuts_.begin(), cuts_.end());
  cuts_.erase(std::unique(cuts_.begin(), cuts_.end()), cuts_.end());
  slabs_.resize(cuts_.size() - 1);
  uint64_t entries = 0;
  for (uint32_t id = 0; id < chunks_.size(); ++id) {
    const Chunk& c = *chunks_[id];
    size_t i0 = std::lower_bound(cuts_.begin(), cuts_.end(), c.off[0]) - cuts_.begin();
    size_t i1 = std::lower_bound(cuts_.begin(), cuts_.end(), c.off[0] + c.size[0]) - cuts_.begin();
    entries += i1 - i0;
    if (entries > kMaxSlabEntries)
      throw FormatError(kFmt, what_ + ": chunk layout too irregular to index (" + std::to_string(chunks_.size()) + " chunks)");
    for (size_t i = i0; i < i1; ++i) slabs_[i].push_back(id);
  }
  for (auto& s : slabs_) std::sort(s.begin(), s.end(), by_col);
}

ShardedTensorSource::~ShardedTensorSource() = default;

const ShardedTensorSource::Chunk& ShardedTensorSource::ready(uint32_t id) const {
  const Chunk& c = *chunks_[id];
  std::call_once(c.once, [&] {
    SourcePtr s;
    try {
      s = c.open();
    } catch (const FormatError& e) {
      throw SysError(EIO, what_ + ": chunk " + c.what + ": " + e.what());
    }
    if (!s || s->size() != c.nbytes)
      throw SysError(EIO, what_ + ": chunk " + c.what + " holds " + (s ? std::to_string(s->size()) : "no") +
                             " bytes, expected " + std::to_string(c.nbytes) + " (its dtype or shape disagrees with .metadata)");
    c.fr = s->file_range(0, c.nbytes);
    c.src = std::move(s);
    opened_.fetch_add(1);
  });
  return c;
}

void ShardedTensorSource::plan(uint64_t off, uint64_t len, std::vector<Run>& runs) const {
  const size_t nd = dims_.size();
  uint64_t pos = off;
  const uint64_t end = off + len;
  size_t slab = 0;
  bool slab_valid = nd == 1;
  std::vector<uint64_t> p(nd > 1 ? nd - 1 : 0);
  while (pos < end) {
    const uint64_t row = pos / row_bytes_;
    const uint64_t col = pos - row * row_bytes_;
    const uint64_t col_end = std::min(row_bytes_, col + (end - pos));
    if (nd > 1) {
      uint64_t r = row;
      for (size_t d = nd - 1; d-- > 0;) {
        p[d] = r % dims_[d];
        r /= dims_[d];
      }
      if (!slab_valid || p[0] < cuts_[slab] || p[0] >= cuts_[slab + 1]) {
        slab = std::upper_bound(cuts_.begin(), cuts_.end(), p[0]) - cuts_.begin() - 1;
        slab_valid = true;
      }
    }
    const auto& list = slabs_[slab];
    size_t k = 0;
    if (nd <= 2) {
      // The slab's chunks tile the row in column order: start at the last one beginning <= col.
      k = std::upper_bound(list.begin(), list.end(), col,
                           [&](uint64_t v, uint32_t id) { return v < chunks_[id]->col_start; }) -
          list.begin();
      if (k > 0) --k;
    }
    uint64_t at = col;
    for (; k < list.size() && at < col_end; ++k) {
      const uint32_t id = list[k];
      const Chunk& c = *chunks_[id];
      if (c.col_end <= at) continue;
      if (c.col_start >= col_end) break;
      if (nd > 2) {
        bool inside = true;
        for (size_t d = 1; d + 1 < nd && inside; ++d) inside = p[d] >= c.off[d] && p[d] < c.off[d] + c.size[d];
        if (!inside) continue;
      }
      if (c.col_start > at) break;  // a hole; reported below
      const uint64_t b = std::min(col_end, c.col_end);
      uint64_t lr = 0;
      for (size_t d = 0; d + 1 < nd; ++d) lr = lr * c.size[d] + (p[d] - c.off[d]);
      const uint64_t local = lr * c.row_bytes + (at - c.col_start);
      const uint64_t dst = pos - off + (at - col);
      if (!runs.empty() && runs.back().chunk == id && runs.back().local + runs.back().len == local &&
          runs.back().dst + runs.back().len == dst)
        runs.back().len += b - at;
      else
        runs.push_back(Run{id, local, dst, b - at});
      at = b;
    }
    if (at != col_end)
      throw SysError(EIO, what_ + ": no chunk holds byte " + std::to_string(row * row_bytes_ + at) + " (a hole in the chunk index)");
    pos += col_end - col;
  }
}

size_t ShardedTensorSource::read_at(uint64_t off, void* buf, size_t len) const {
  if (off >= total_ || len == 0) return 0;
  len = static_cast<size_t>(std::min<uint64_t>(len, total_ - off));
  std::vector<Run> runs;
  plan(off, len, runs);
  char* out = static_cast<char*>(buf);
  if (runs.size() == 1) {
    const Run& r = runs[0];
    const Chunk& c = ready(r.chunk);
    if (c.src->read_at(r.local, out + r.dst, r.len) != r.len)
      throw SysError(EIO, what_ + ": chunk " + c.what + " ended early");
    return len;
  }
  // Group the runs by chunk, keeping each chunk's runs in increasing local order.
  std::vector<uint32_t> order(runs.size());
  std::iota(order.begin(), order.end(), 0u);
  std::stable_sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) { return runs[a].chunk < runs[b].chunk; });
  thread_local std::vector<char> scratch;
  std::vector<iovec> iov;
  for (size_t i = 0; i < order.size();) {
    size_t j = i;
    const uint32_t id = runs[order[i]].chunk;
    while (j < order.size() && runs[order[j]].chunk == id) ++j;
    const Chunk& c = ready(id);
    if (!c.fr) {
      for (size_t k = i; k < j; ++k) {
        const Run& r = runs[order[k]];
        if (c.src->read_at(r.local, out + r.dst, r.len) != r.len)
          throw SysError(EIO, what_ + ": chunk " + c.what + " ended early");
      }
      i = j;
      continue;
    }
    size_t k = i;
    while (k < j) {
      iov.clear();
      const uint64_t start = runs[order[k]].local;
      uint64_t next = start;
      for (; k < j; ++k) {
        const Run& r = runs[order[k]];
        if (r.local < next) break;  // not increasing (cannot happen for a valid plan): new batch
        uint64_t gap = r.local - next;
        if (gap > kMaxGap) break;
        if (gap > 0) {
          if (scratch.size() < kMaxGap) scratch.resize(kMaxGap);
          iov.push_back(iovec{scratch.data(), static_cast<size_t>(gap)});
        }
        iov.push_back(iovec{out + r.dst, static_cast<size_t>(r.len)});
        next = r.local + r.len;
      }
      if (io::preadv_full(c.fr->fd, iov.data(), iov.size(), c.fr->offset + start) != next - start) {
        if (c.fr->guard) c.fr->guard->fail_short();
        throw SysError(EIO, what_ + ": chunk " + c.what + ": file ended early");
      }
    }
    // Read straight from the chunk's file: its identity is checked here, once the bytes are in.
    if (c.fr->guard) c.fr->guard->check();
    i = j;
  }
  return len;
}

void ShardedTensorSource::verify() const {
  for (uint32_t id = 0; id < chunks_.size(); ++id) ready(id).src->verify();
}

std::optional<FileRange> ShardedTensorSource::file_range(uint64_t off, uint64_t len) const {
  if (len == 0 || off >= total_ || len > total_ - off) return std::nullopt;
  std::vector<Run> runs;
  plan(off, len, runs);
  if (runs.size() != 1) return std::nullopt;
  const Chunk& c = ready(runs[0].chunk);
  if (!c.fr) return std::nullopt;
  if (c.fr->guard) c.fr->guard->check_flag();
  return FileRange{c.fr->fd, c.fr->offset + runs[0].local, c.fr->guard, c.fr->hold};
}

}  // namespace nemofs::dcp
