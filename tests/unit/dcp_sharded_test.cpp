// Chunk assembly (ShardedTensorSource) over random N-d tilings, checked against a naively
// assembled buffer, and the tiling checks (validate_tiling), each defect with its own message.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <random>
#include <set>

#include "formats/core/byte_source.h"
#include "formats/core/errors.h"
#include "formats/dcp/sharded.h"

using namespace nemofs;
using namespace nemofs::dcp;

namespace {

using Shape = std::vector<uint64_t>;

uint64_t volume(const Shape& s) {
  uint64_t v = 1;
  for (auto x : s) v *= x;
  return v;
}

// Global element index of every local element of a box, in the box's C order.
std::vector<uint64_t> box_elements(const Shape& shape, const Box& b) {
  std::vector<uint64_t> out;
  uint64_t n = volume(b.sizes);
  out.reserve(n);
  std::vector<uint64_t> l(b.sizes.size(), 0);
  for (uint64_t k = 0; k < n; ++k) {
    uint64_t g = 0;
    for (size_t d = 0; d < shape.size(); ++d) g = g * shape[d] + b.offsets[d] + l[d];
    out.push_back(g);
    for (size_t d = b.sizes.size(); d-- > 0;) {
      if (++l[d] < b.sizes[d]) break;
      l[d] = 0;
    }
  }
  return out;
}

void kd_split(const Box& b, std::mt19937_64& rng, int depth, std::vector<Box>& out) {
  std::vector<size_t> dims;
  for (size_t d = 0; d < b.sizes.size(); ++d)
    if (b.sizes[d] >= 2) dims.push_back(d);
  if (dims.empty() || depth > 6 || rng() % 4 == 0) {
    out.push_back(b);
    return;
  }
  size_t d = dims[rng() % dims.size()];
  uint64_t cut = 1 + rng() % (b.sizes[d] - 1);
  Box a = b, c = b;
  a.sizes[d] = cut;
  c.offsets[d] += cut;
  c.sizes[d] -= cut;
  kd_split(a, rng, depth + 1, out);
  kd_split(c, rng, depth + 1, out);
}

// torch.chunk-style shards per dim (uneven, and zero-size with offset clamped to n), as a grid.
std::vector<Box> chunk_grid(const Shape& shape, std::mt19937_64& rng) {
  std::vector<std::vector<std::pair<uint64_t, uint64_t>>> per_dim;
  for (uint64_t n : shape) {
    uint64_t k = 1 + rng() % 5;
    uint64_t full = (n + k - 1) / k;
    std::vector<std::pair<uint64_t, uint64_t>> parts;
    for (uint64_t r = 0; r < k; ++r) {
      uint64_t start = std::min(n, full * r);
      uint64_t end = std::min(n, start + full);
      parts.push_back({start, end - start});
    }
    // Zero-size shards of different ranks repeat the same box; keep one of each.
    std::sort(parts.begin(), parts.end());
    parts.erase(std::unique(parts.begin(), parts.end()), parts.end());
    per_dim.push_back(parts);
  }
  std::vector<Box> out{Box{}};
  for (const auto& parts : per_dim) {
    std::vector<Box> next;
    for (const auto& b : out)
      for (auto [o, s] : parts) {
        Box c = b;
        c.offsets.push_back(o);
        c.sizes.push_back(s);
        next.push_back(c);
      }
    out = std::move(next);
  }
  return out;
}

struct Case {
  Shape shape;
  uint64_t elem = 1;
  std::vector<Box> boxes;
  std::string global;
  std::vector<std::string> chunk_bytes;
};

Case random_case(std::mt19937_64& rng) {
  Case c;
  size_t nd = rng() % 5;
  for (size_t d = 0; d < nd; ++d) c.shape.push_back(rng() % 7 == 0 ? 0 : 1 + rng() % 6);
  if (rng() % 6 == 0 && nd > 0) c.shape.back() = 40 + rng() % 40;  // long rows
  static const uint64_t elems[] = {1, 2, 4, 8};
  c.elem = elems[rng() % 4];
  if (rng() % 2) {
    c.boxes = chunk_grid(c.shape, rng);
  } else {
    Box whole{Shape(nd, 0), c.shape};
    if (volume(c.shape) == 0) c.boxes.push_back(whole);
    else kd_split(whole, rng, 0, c.boxes);
    // Zero-size shards anywhere inside the bounds.
    for (int k = rng() % 3; k-- > 0 && nd > 0;) {
      Box e;
      for (size_t d = 0; d < nd; ++d) {
        uint64_t o = rng() % (c.shape[d] + 1);
        e.offsets.push_back(o);
        e.sizes.push_back(std::min<uint64_t>(rng() % 3, c.shape[d] - o));
      }
      e.sizes[rng() % nd] = 0;
      c.boxes.push_back(e);
    }
  }
  std::shuffle(c.boxes.begin(), c.boxes.end(), rng);
  c.global.resize(volume(c.shape) * c.elem);
  for (auto& ch : c.global) ch = static_cast<char>(rng());
  for (const auto& b : c.boxes) {
    std::string bytes;
    for (uint64_t g : box_elements(c.shape, b)) bytes.append(c.global, g * c.elem, c.elem);
    c.chunk_bytes.push_back(bytes);
  }
  return c;
}

class TempFile {
 public:
  TempFile() {
    char name[] = "/tmp/nemofs_dcp_XXXXXX";
    fd_ = ::mkstemp(name);
    path_ = name;
  }
  ~TempFile() {
    ::close(fd_);
    ::unlink(path_.c_str());
  }
  uint64_t append(const std::string& s, uint64_t pad) {
    std::string p(pad, '\x5a');
    EXPECT_EQ(::write(fd_, p.data(), p.size()), static_cast<ssize_t>(p.size()));
    uint64_t at = size_ + pad;
    EXPECT_EQ(::write(fd_, s.data(), s.size()), static_cast<ssize_t>(s.size()));
    size_ = at + s.size();
    return at;
  }
  const std::string& path() const { return path_; }

 private:
  int fd_ = -1;
  std::string path_;
  uint64_t size_ = 0;
};

// The chunks as sources: in memory, or as ranges of one real file (the preadv path).
std::vector<ShardChunk> make_chunks(const Case& c, bool in_file, std::mt19937_64& rng, std::unique_ptr<TempFile>& tmp,
                                    std::shared_ptr<std::vector<int>> opened = nullptr) {
  std::vector<ShardChunk> out;
  SourcePtr file;
  std::vector<uint64_t> at;
  if (in_file) {
    tmp = std::make_unique<TempFile>();
    for (const auto& b : c.chunk_bytes) at.push_back(tmp->append(b, rng() % 9));
    tmp->append("", 3);
    file = std::make_shared<FileSource>(tmp->path());
  }
  for (size_t i = 0; i < c.boxes.size(); ++i) {
    ShardChunk sc;
    sc.box = c.boxes[i];
    sc.what = "chunk" + std::to_string(i);
    SourcePtr src = in_file ? make_sub(file, at[i], c.chunk_bytes[i].size())
                            : std::make_shared<MemorySource>(c.chunk_bytes[i]);
    sc.open = [src, opened, i] {
      if (opened) (*opened)[i]++;
      return src;
    };
    out.push_back(std::move(sc));
  }
  return out;
}

}  // namespace

TEST(DcpSharded, RandomTilingsMatchNaiveAssembly) {
  std::mt19937_64 rng(20240611);
  for (int iter = 0; iter < 400; ++iter) {
    Case c = random_case(rng);
    ASSERT_NO_THROW(validate_tiling(c.shape, c.boxes, "t")) << "iter " << iter;
    for (bool in_file : {false, true}) {
      std::unique_ptr<TempFile> tmp;
      ShardedTensorSource src(c.shape, c.elem, make_chunks(c, in_file, rng, tmp), "t");
      ASSERT_EQ(src.size(), c.global.size());
      // The whole tensor, then random ranges (some running past the end).
      std::string all(c.global.size(), '\0');
      ASSERT_EQ(src.read_at(0, all.data(), all.size()), all.size());
      ASSERT_EQ(all, c.global) << "iter " << iter;
      for (int r = 0; r < 25; ++r) {
        uint64_t total = c.global.size();
        uint64_t off = total ? rng() % (total + 1) : 0;
        uint64_t len = rng() % (total - off + 4);
        std::string buf(len, '\0');
        size_t n = src.read_at(off, buf.data(), len);
        ASSERT_EQ(n, std::min<uint64_t>(len, total - off)) << "iter " << iter;
        buf.resize(n);
        ASSERT_EQ(buf, c.global.substr(off, n)) << "iter " << iter << " off " << off << " len " << len;
        if (n > 0) {
          auto fr = src.file_range(off, n);
          if (fr) {
            std::string via(n, '\0');
            ASSERT_EQ(::pread(fr->fd, via.data(), n, static_cast<off_t>(fr->offset)), static_cast<ssize_t>(n));
            ASSERT_EQ(via, buf) << "file_range of iter " << iter;
          }
        }
      }
    }
  }
}

TEST(DcpSharded, ReadOpensOnlyOverlappingChunks) {
  std::mt19937_64 rng(7);
  for (int iter = 0; iter < 200; ++iter) {
    Case c = random_case(rng);
    if (c.global.empty()) continue;
    uint64_t off = rng() % c.global.size();
    uint64_t len = 1 + rng() % (c.global.size() - off);
    auto opened = std::make_shared<std::vector<int>>(c.boxes.size(), 0);
    std::unique_ptr<TempFile> tmp;
    ShardedTensorSource src(c.shape, c.elem, make_chunks(c, false, rng, tmp, opened), "t");
    std::string buf(len, '\0');
    ASSERT_EQ(src.read_at(off, buf.data(), len), len);
    for (size_t i = 0; i < c.boxes.size(); ++i) {
      bool overlaps = false;
      for (uint64_t g : box_elements(c.shape, c.boxes[i]))
        if (g * c.elem < off + len && (g + 1) * c.elem > off) overlaps = true;
      EXPECT_LE((*opened)[i], overlaps ? 1 : 0) << "iter " << iter << " chunk " << i;
    }
  }
}

TEST(DcpSharded, ChunkOfTheWrongSizeIsAnIoError) {
  Shape shape{4, 4};
  std::vector<ShardChunk> chunks(2);
  chunks[0].box = {{0, 0}, {4, 2}};
  chunks[1].box = {{0, 2}, {4, 2}};
  chunks[0].open = [] { return std::make_shared<MemorySource>(std::string(32, 'a')); };
  chunks[1].open = [] { return std::make_shared<MemorySource>(std::string(16, 'b')); };  // F16 bytes for F32
  chunks[0].what = "c0";
  chunks[1].what = "c1";
  ShardedTensorSource src(shape, 4, std::move(chunks), "w");
  char buf[8];
  EXPECT_EQ(src.read_at(0, buf, 8), 8u);  // only chunk 0
  try {
    src.read_at(8, buf, 8);
    FAIL() << "no error";
  } catch (const SysError& e) {
    EXPECT_NE(std::string(e.what()).find("c1 holds 16 bytes, expected 32"), std::string::npos) << e.what();
  }
}

namespace {
std::string tiling_error(const Shape& shape, const std::vector<Box>& boxes) {
  try {
    validate_tiling(shape, boxes, "'w'");
  } catch (const FormatError& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST(DcpSharded, TilingDefectsHaveTheirOwnMessages) {
  Shape s{4, 6};
  EXPECT_NE(tiling_error(s, {{{0, 0}, {4, 3}}}).find("missing chunk: the chunks cover 12 of 24 elements"), std::string::npos);
  EXPECT_NE(tiling_error(s, {{{0, 0}, {4, 4}}, {{0, 3}, {4, 3}}}).find("overlaps chunk"), std::string::npos);
  EXPECT_NE(tiling_error(s, {{{0, 0}, {4, 6}}, {{0, 0}, {4, 6}}}).find("overlaps chunk"), std::string::npos);
  EXPECT_NE(tiling_error(s, {{{0, 0}, {4, 3}}, {{0, 3}, {4, 4}}}).find("lies outside the tensor's shape [4, 6]"),
            std::string::npos);
  EXPECT_NE(tiling_error(s, {{{0}, {4}}}).find("has 1/1 offsets/sizes for a tensor of 2 dims"), std::string::npos);
  EXPECT_NE(tiling_error(s, {{{0, UINT64_MAX}, {4, 2}}}).find("lies outside"), std::string::npos);
  // Zero-size shards at the clamped end are fine; the same outside the bounds are not.
  EXPECT_EQ(tiling_error(s, {{{0, 0}, {4, 6}}, {{4, 0}, {0, 6}}}), "");
  EXPECT_NE(tiling_error(s, {{{0, 0}, {4, 6}}, {{5, 0}, {0, 6}}}).find("lies outside"), std::string::npos);
  // A scalar: one chunk with no dims.
  EXPECT_EQ(tiling_error({}, {{{}, {}}}), "");
  EXPECT_NE(tiling_error({}, {}).find("missing chunk"), std::string::npos);
}

TEST(DcpSharded, ManyDimOneShardsReadAsWholeRows) {
  // 8-way dim-1 sharding of a [64, 1024] float tensor, chunks in one file: every row touches all 8.
  const uint64_t rows = 64, cols = 1024, k = 8, E = 4;
  std::string global(rows * cols * E, '\0');
  std::mt19937_64 rng(3);
  for (auto& ch : global) ch = static_cast<char>(rng());
  Case c;
  c.shape = {rows, cols};
  c.elem = E;
  c.global = global;
  for (uint64_t i = 0; i < k; ++i) {
    Box b{{0, i * cols / k}, {rows, cols / k}};
    c.boxes.push_back(b);
    std::string bytes;
    for (uint64_t g : box_elements(c.shape, b)) bytes.append(global, g * E, E);
    c.chunk_bytes.push_back(bytes);
  }
  std::unique_ptr<TempFile> tmp;
  ShardedTensorSource src(c.shape, E, make_chunks(c, true, rng, tmp), "t");
  for (uint64_t off : {0ull, 1ull, 4095ull, 4096ull * 3 + 17}) {
    std::string buf(100000, '\0');
    size_t n = src.read_at(off, buf.data(), buf.size());
    buf.resize(n);
    EXPECT_EQ(buf, global.substr(off, n));
  }
  EXPECT_FALSE(src.file_range(0, 4096 + 4));  // spans two chunks
  EXPECT_TRUE(src.file_range(4, 8));          // inside chunk 0's first row
}
