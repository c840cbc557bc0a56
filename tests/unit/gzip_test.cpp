// gzip .nemo: the real legacy fixture against manifest.json, plus random access over a generated
// gzip stream (compared with the original bytes), concurrency, corrupt and truncated streams, and
// the persisted index (cache hit, stale, corrupt, forged, unwritable cache folder).
#include <gtest/gtest.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "tests/unit/scratch_dir.h"
#include "formats/core/checked.h"
#include "formats/core/errors.h"
#include "formats/detect/checkpoint.h"
#include "formats/gzip/gzip_index.h"
#include "formats/nemo/nemo.h"
#include "formats/zip/zip.h"
#include "tests/common/manifest_check.h"
#include "tests/unit/backend_util.h"

using namespace nemofs;
using namespace nemofs::testing;

namespace {

std::string gzip_bytes(const std::string& data, int level = 6, gz_header* header = nullptr) {
  z_stream s{};
  if (deflateInit2(&s, level, Z_DEFLATED, 31, 8, Z_DEFAULT_STRATEGY) != Z_OK) throw std::runtime_error("deflateInit2");
  if (header) deflateSetHeader(&s, header);
  std::string out(deflateBound(&s, data.size()) + 64, '\0');
  s.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  s.avail_in = static_cast<uInt>(data.size());
  s.next_out = reinterpret_cast<Bytef*>(out.data());
  s.avail_out = static_cast<uInt>(out.size());
  int ret = deflate(&s, Z_FINISH);
  out.resize(s.total_out);
  deflateEnd(&s);
  if (ret != Z_STREAM_END) throw std::runtime_error("deflate");
  return out;
}

// Independent oracle: zlib's own gzip decoder, member after member.
std::string gunzip_all(const std::string& gz) {
  std::string out;
  size_t pos = 0;
  while (pos < gz.size()) {
    z_stream s{};
    inflateInit2(&s, 31);
    s.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(gz.data() + pos));
    s.avail_in = static_cast<uInt>(gz.size() - pos);
    char buf[1 << 16];
    int ret;
    do {
      s.next_out = reinterpret_cast<Bytef*>(buf);
      s.avail_out = sizeof buf;
      ret = inflate(&s, Z_NO_FLUSH);
      out.append(buf, sizeof buf - s.avail_out);
    } while (ret == Z_OK);
    size_t used = s.total_in;
    inflateEnd(&s);
    if (ret != Z_STREAM_END) throw std::runtime_error("gunzip_all: bad stream");
    pos += used;
  }
  return out;
}

// Pseudo-random but compressible: words from a small random vocabulary, with runs of random bytes.
std::string make_data(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::string> vocab;
  for (int i = 0; i < 512; ++i) {
    std::string w(3 + rng() % 9, 'a');
    for (auto& c : w) c = static_cast<char>('a' + rng() % 26);
    vocab.push_back(w);
  }
  std::string s;
  s.reserve(n + 64);
  while (s.size() < n) {
    uint64_t r = rng();
    if (r % 64 == 0) {
      size_t len = 200 + r % 3000;
      for (size_t i = 0; i < len; ++i) s.push_back(static_cast<char>(rng()));
    } else {
      s += vocab[r % vocab.size()];
      s.push_back(" \n,."[(r >> 20) % 4]);
    }
  }
  s.resize(n);
  return s;
}

using TempDir = nemofs::testing::ScratchDir;

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!f) throw std::runtime_error("write " + path);
}

// Overwrites the file's bytes in place (same inode) and optionally restores its mtime.
void rewrite_in_place(const std::string& path, const std::string& bytes, bool keep_mtime) {
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  write_file(path, bytes);
  if (keep_mtime) {
    struct timespec ts[2] = {st.st_atim, st.st_mtim};
    ASSERT_EQ(::utimensat(AT_FDCWD, path.c_str(), ts, 0), 0);
  }
}

std::string read_all(const ByteSource& s) { return read_exact(s, 0, static_cast<size_t>(s.size()), "test"); }

const std::string& big_data() {
  static const std::string d = make_data(24u << 20, 42);
  return d;
}
const std::string& big_gz() {
  static const std::string g = gzip_bytes(big_data());
  return g;
}

// Dense access points so a few tens of MiB give hundreds of them.
GzipOptions dense(const std::string& cache_dir) {
  GzipOptions o;
  o.min_span = 96 << 10;
  o.max_index_ratio = 1.0;
  o.block_size = 16 << 10;
  o.cache_bytes = 4 << 20;
  o.cache_dir = cache_dir;
  o.progress = false;
  return o;
}

std::shared_ptr<const GzipSource> open_file(const std::string& path, const GzipOptions& opt) {
  return open_gzip(std::make_shared<FileSource>(path), path, opt);
}

class GzipFiles : public ::testing::Test {
 protected:
  TempDir dir;
  std::string cache() const { return dir.path + "/cache"; }
  std::string file(const std::string& name) const { return dir.path + "/" + name; }
};

}  // namespace

TEST(GzipFixture, LegacyGzMembersMatchManifest) {
  TempDir tmp;
  const char* old = std::getenv("XDG_CACHE_HOME");
  std::string saved = old ? old : "";
  ::setenv("XDG_CACHE_HOME", tmp.path.c_str(), 1);
  const std::string path = data_path("real/nemo/asr_ctc_legacy_gz.nemo");
  for (int round = 0; round < 2; ++round) {
    auto cp = open_checkpoint(path);
    EXPECT_EQ(cp.format, Format::GzipTar);
    EXPECT_TRUE(cp.writable_candidate);  // writable like a plain .nemo; commits write gzip again
    auto bad = check_files(tree_view(cp.tree), fixture("nemo/asr_ctc_legacy_gz.nemo"));
    EXPECT_TRUE(bad.empty()) << ::testing::PrintToString(bad);
    // The archive the tree reads from is the gzip stream, indexed on the first open, cached after.
    auto nemo = std::static_pointer_cast<NemoArchive>(cp.keepalive);
    auto gz = std::dynamic_pointer_cast<const GzipSource>(nemo->archive);
    ASSERT_TRUE(gz);
    EXPECT_EQ(gz->origin(), round == 0 ? GzipIndexOrigin::Built : GzipIndexOrigin::LoadedFromCache) << gz->cache_note();
    EXPECT_EQ(read_all(*gz), gunzip_all(read_whole_file(path)));
  }
  if (old) ::setenv("XDG_CACHE_HOME", saved.c_str(), 1);
  else ::unsetenv("XDG_CACHE_HOME");
}

TEST(GzipFixture, MemberSourcesAreSubSourcesOfTheGzipStream) {
  auto gz = open_gzip(std::make_shared<FileSource>(data_path("real/nemo/asr_ctc_legacy_gz.nemo")), "", {});
  Tree tree;
  auto nemo = build_nemo(tree, gz);
  auto id = tree.resolve("model_weights.ckpt");
  ASSERT_TRUE(id);
  auto sub = std::dynamic_pointer_cast<const SubSource>(tree.node(*id).data);
  ASSERT_TRUE(sub);
  EXPECT_EQ(sub->parent().get(), gz.get());
  EXPECT_FALSE(gz->file_range(0, 1));
}

// A gzip .nemo with bytes after its last gzip member: `gzip -d` and `tar xzf` read it with a
// warning, and so does a mount, with the same members; but only when the tar inside ended with its
// end-of-archive blocks: the same junk after a tar cut short is refused (it may be truncated).
TEST(GzipFixture, TrailingBytesAfterACompleteTarAreAWarning) {
  TempDir tmp;
  const std::string tar = gunzip_all(read_whole_file(data_path("real/nemo/asr_ctc_legacy_gz.nemo")));
  const std::string plain = tmp.path + "/plain.nemo", junk = tmp.path + "/junk.nemo", cut = tmp.path + "/cut.nemo";
  write_file(plain, gzip_bytes(tar));
  write_file(junk, gzip_bytes(tar) + "appended by a download tool\n");
  const auto end = index_tar(MemorySource(tar)).end_of_entries;
  write_file(cut, gzip_bytes(tar.substr(0, static_cast<size_t>(end))) + "appended by a download tool\n");
  TempDir cache;
  CacheHome home(cache.path);
  auto good = open_checkpoint(plain);
  auto cp = open_checkpoint(junk);
  auto bad = check_files(tree_view(cp.tree), fixture("nemo/asr_ctc_legacy_gz.nemo"));
  EXPECT_TRUE(bad.empty()) << ::testing::PrintToString(bad);
  const auto entries = index_tar(MemorySource(tar)).entries;
  for (const auto& e : entries) {
    std::string name = e.name.rfind("./", 0) == 0 ? e.name.substr(2) : e.name;
    if (name.empty() || e.type != TarType::File) continue;
    EXPECT_EQ(tree_view(cp.tree).read_file(name), tree_view(good.tree).read_file(name)) << name;
  }
  int trailing_warnings = 0;
  for (const auto& w : cp.warnings) trailing_warnings += w.find("bytes after the last gzip member") != std::string::npos;
  EXPECT_EQ(trailing_warnings, 1) << ::testing::PrintToString(cp.warnings);
  for (const auto& w : good.warnings) EXPECT_EQ(w.find("after the last gzip member"), std::string::npos) << w;
  try {
    open_checkpoint(cut);
    ADD_FAILURE() << "a truncated tar followed by junk was accepted";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("no end-of-archive blocks"), std::string::npos) << e.what();
  }
  // The oracles read the same members from the junk file: libarchive (bsdtar, exit 0) and
  // CPython's tarfile (NeMo's reader).
  const std::string n = tmp.path + "/n.txt";
  ASSERT_EQ(std::system(("bsdtar tzf " + junk + " | wc -l > " + n).c_str()), 0);
  EXPECT_EQ(std::stoul(read_whole_file(n)), entries.size());
  const std::string py = "/usr/bin/python3 -c 'import tarfile,sys; print(len(tarfile.open(sys.argv[1]).getnames()))' " + junk + " > " + n;
  ASSERT_EQ(std::system(py.c_str()), 0);
  EXPECT_EQ(std::stoul(read_whole_file(n)), entries.size());
}

TEST_F(GzipFiles, RandomReadsMatchTheOriginal) {
  write_file(file("a.gz"), big_gz());
  auto gz = open_file(file("a.gz"), dense(cache()));
  const std::string& d = big_data();
  ASSERT_EQ(gz->size(), d.size());
  const auto& idx = gz->index();
  EXPECT_GT(idx.points.size(), 100u);
  EXPECT_EQ(idx.members, 1u);
  std::mt19937_64 rng(7);
  std::string buf;
  for (int i = 0; i < 1500; ++i) {
    uint64_t off = rng() % d.size();
    size_t len = static_cast<size_t>(rng() % (i % 10 == 0 ? (3u << 20) : (64u << 10))) + 1;
    buf.assign(len, '\0');
    size_t got = gz->read_at(off, buf.data(), len);
    ASSERT_EQ(got, std::min<uint64_t>(len, d.size() - off));
    ASSERT_EQ(0, std::memcmp(buf.data(), d.data() + off, got)) << "off " << off << " len " << len;
  }
  // Across every access point.
  for (size_t i = 1; i < idx.points.size(); ++i) {
    uint64_t at = idx.points[i].out;
    buf.assign(300, '\0');
    ASSERT_EQ(gz->read_at(at - 150, buf.data(), 300), 300u);
    ASSERT_EQ(0, std::memcmp(buf.data(), d.data() + at - 150, 300)) << "point " << i;
  }
  // The end, past the end, nothing.
  buf.assign(100, '\0');
  EXPECT_EQ(gz->read_at(d.size() - 10, buf.data(), 100), 10u);
  EXPECT_EQ(0, std::memcmp(buf.data(), d.data() + d.size() - 10, 10));
  EXPECT_EQ(gz->read_at(d.size(), buf.data(), 100), 0u);
  EXPECT_EQ(gz->read_at(d.size() + 5, buf.data(), 100), 0u);
  EXPECT_EQ(gz->read_at(5, buf.data(), 0), 0u);
}

TEST_F(GzipFiles, SixteenThreadsConcurrently) {
  write_file(file("a.gz"), big_gz());
  GzipOptions o = dense("");
  o.cache_bytes = 1 << 20;  // small, so threads evict and re-inflate each other's blocks
  auto gz = open_file(file("a.gz"), o);
  const std::string& d = big_data();
  std::atomic<int> bad{0}, errors{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < 16; ++t)
    ts.emplace_back([&, t] {
      std::mt19937_64 rng(100 + t);
      std::string buf;
      for (int i = 0; i < 120; ++i) {
        // Half the threads hammer one region so they meet on the same blocks.
        uint64_t off = t % 2 ? rng() % d.size() : (4u << 20) + rng() % (1u << 20);
        size_t len = static_cast<size_t>(rng() % (256u << 10)) + 1;
        buf.assign(len, '\0');
        try {
          size_t got = gz->read_at(off, buf.data(), len);
          if (got != std::min<uint64_t>(len, d.size() - off) || std::memcmp(buf.data(), d.data() + off, got) != 0) ++bad;
        } catch (...) {
          ++errors;
        }
      }
    });
  for (auto& t : ts) t.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_EQ(errors.load(), 0);
  auto st = gz->stats();
  EXPECT_GT(st.block_hits, 0u);
  EXPECT_GT(st.blocks_inflated, 0u);
}

TEST_F(GzipFiles, SequentialReadInflatesEachBlockOnce) {
  write_file(file("a.gz"), big_gz());
  auto gz = open_file(file("a.gz"), dense(""));
  const std::string& d = big_data();
  std::string buf(128 << 10, '\0');
  for (uint64_t off = 0; off < d.size(); off += buf.size()) {
    size_t got = gz->read_at(off, buf.data(), buf.size());
    ASSERT_EQ(0, std::memcmp(buf.data(), d.data() + off, got)) << off;
  }
  auto st = gz->stats();
  EXPECT_EQ(st.blocks_inflated, gz->index().block_crcs.size());
  EXPECT_EQ(st.cursor_starts, 1u);
}

// Inflated blocks live in whole-block buffers: the cache holds at most its capacity of them, and
// every other buffer in use is one a reader is copying from or inflating into (two per reader).
uint64_t buffer_bytes(const GzipSource& gz) {
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  return (gz.index().block_size + page - 1) / page * page;
}

TEST_F(GzipFiles, BlockMemoryStaysWithinTheCacheBoundSequentially) {
  write_file(file("a.gz"), big_gz());
  auto gz = open_file(file("a.gz"), dense(""));  // 4 MiB cache, 16 KiB blocks
  const std::string& d = big_data();
  ASSERT_EQ(gz->cache_capacity(), 4u << 20);
  std::string buf(1 << 20, '\0');
  for (uint64_t off = 0; off < d.size(); off += buf.size()) {
    size_t got = gz->read_at(off, buf.data(), buf.size());
    ASSERT_EQ(0, std::memcmp(buf.data(), d.data() + off, got)) << off;
  }
  auto st = gz->stats();
  const uint64_t blocks = gz->index().block_crcs.size();
  ASSERT_GT(blocks * buffer_bytes(*gz), 4 * gz->cache_capacity());  // far more was inflated than fits
  EXPECT_EQ(st.blocks_inflated, blocks);
  EXPECT_LE(st.cache_bytes, gz->cache_capacity());
  EXPECT_GE(st.cache_bytes, gz->cache_capacity() - buffer_bytes(*gz));  // it did fill up
  // One reader: the block being inflated is the only one outside the cache (the block it copies
  // from is still cached: a run never evicts its own output).
  EXPECT_LE(st.block_bytes_peak, gz->cache_capacity() + buffer_bytes(*gz));
  EXPECT_EQ(st.block_bytes, st.cache_bytes);  // the reader let go of its last block
}

TEST_F(GzipFiles, BlockMemoryStaysWithinTheCacheBoundAcrossThreads) {
  write_file(file("a.gz"), big_gz());
  GzipOptions o = dense("");
  o.cache_bytes = 1 << 20;
  auto gz = open_file(file("a.gz"), o);
  const std::string& d = big_data();
  constexpr int kThreads = 12;
  std::atomic<int> bad{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < kThreads; ++t)
    ts.emplace_back([&, t] {
      std::mt19937_64 rng(500 + t);
      std::string buf;
      for (int i = 0; i < 60; ++i) {
        uint64_t off = t % 3 ? rng() % d.size() : (t << 20) + rng() % (2u << 20);  // some sequential-ish
        size_t len = static_cast<size_t>(rng() % (512u << 10)) + 1;
        buf.assign(len, '\0');
        size_t got = gz->read_at(off, buf.data(), len);
        if (got != std::min<uint64_t>(len, d.size() - off) || std::memcmp(buf.data(), d.data() + off, got) != 0) ++bad;
      }
    });
  for (auto& t : ts) t.join();
  EXPECT_EQ(bad.load(), 0);
  auto st = gz->stats();
  EXPECT_GT(st.blocks_inflated * buffer_bytes(*gz), 8 * gz->cache_capacity());
  EXPECT_LE(st.cache_bytes, gz->cache_capacity());
  EXPECT_LE(st.block_bytes_peak, gz->cache_capacity() + 2 * kThreads * buffer_bytes(*gz));
  EXPECT_EQ(st.block_bytes, st.cache_bytes);
}

TEST_F(GzipFiles, MultiMemberStreams) {
  std::string a = make_data(700000, 1), b = make_data(3, 2), c = make_data(900000, 3);
  std::string gz = gzip_bytes(a) + gzip_bytes("") + gzip_bytes(b, 1) + gzip_bytes(c, 9);
  write_file(file("m.gz"), gz);
  GzipOptions o = dense("");
  o.min_span = 50000;
  auto src = open_file(file("m.gz"), o);
  EXPECT_EQ(src->index().members, 4u);
  std::string all = a + b + c;
  ASSERT_EQ(read_all(*src), all);
  std::mt19937_64 rng(3);
  for (int i = 0; i < 300; ++i) {
    auto fresh = std::make_shared<GzipSource>(src->compressed(), std::make_shared<GzipIndex>(src->index()), 1 << 20);
    uint64_t off = rng() % all.size();
    std::string buf(static_cast<size_t>(rng() % 200000) + 1, '\0');
    size_t got = fresh->read_at(off, buf.data(), buf.size());
    ASSERT_EQ(0, std::memcmp(buf.data(), all.data() + off, got));
  }
  // Zero padding after the last member, or between members, is skipped silently.
  write_file(file("pad.gz"), gz + std::string(1000, '\0'));
  auto pad = open_file(file("pad.gz"), o);
  EXPECT_EQ(read_all(*pad), all);
  EXPECT_EQ(pad->index().trailing_at, 0u);
  write_file(file("padmid.gz"), gzip_bytes(a) + std::string(700, '\0') + gzip_bytes(c));
  auto padmid = open_file(file("padmid.gz"), o);
  EXPECT_EQ(padmid->index().members, 2u);
  EXPECT_EQ(read_all(*padmid), a + c);
  // Other trailing bytes end the stream where they start (as `gzip -d` does); the stream's reader
  // judges them (a .nemo: tests/unit/nemo_test.cpp).
  write_file(file("junk.gz"), gz + std::string(5, '\0') + "junk");
  auto junk = open_file(file("junk.gz"), o);
  EXPECT_EQ(junk->index().trailing_at, gz.size() + 5);
  EXPECT_EQ(read_all(*junk), all);
  // A damaged member after the last good one is still refused: it starts like gzip data.
  std::string bad = gzip_bytes(b);
  bad[bad.size() - 3] ^= 1;
  write_file(file("badlast.gz"), gz + bad);
  EXPECT_THROW(open_file(file("badlast.gz"), o), FormatError);
  write_file(file("cut.gz"), gz + gzip_bytes(c).substr(0, 100));
  EXPECT_THROW(open_file(file("cut.gz"), o), FormatError);
}

// The trailing bytes' offset survives the index file (version 2; version 1 when there are none,
// so every index written before stays valid), loaded from the cache on the next open.
TEST_F(GzipFiles, TrailingBytesOffsetIsCached) {
  std::string data = make_data(300000, 9);
  std::string gz = gzip_bytes(data);
  write_file(file("t.gz"), gz + "NOT GZIP");
  GzipOptions o = dense(cache());
  auto first = open_file(file("t.gz"), o);
  EXPECT_EQ(first->origin(), GzipIndexOrigin::Built);
  auto again = open_file(file("t.gz"), o);
  EXPECT_EQ(again->origin(), GzipIndexOrigin::LoadedFromCache);
  EXPECT_EQ(again->index().trailing_at, gz.size());
  EXPECT_EQ(read_all(*again), data);
  GzipFileKey k{.file = {.dev = 1, .ino = 2, .size = first->index().compressed_size, .mtime_ns = 3}};
  std::string v2 = serialize_gzip_index(first->index(), k);
  EXPECT_EQ(v2[8], 2);
  std::string why;
  auto back = parse_gzip_index(v2, &k, &why);
  ASSERT_TRUE(back) << why;
  EXPECT_EQ(back->trailing_at, gz.size());
  // An offset outside the file is refused (then rebuilt), like any other structural fault.
  GzipIndex forged = first->index();
  forged.trailing_at = forged.compressed_size;
  EXPECT_FALSE(parse_gzip_index(serialize_gzip_index(forged, k), &k, &why));
  auto plain = build_gzip_index(MemorySource(gz), dense(""));
  EXPECT_EQ(serialize_gzip_index(plain, k)[8], 1);
}

TEST_F(GzipFiles, HeaderFieldsAndHeaderCrc) {
  std::string data = make_data(100000, 9);
  gz_header h{};
  std::string extra = "AB\x04\x00wxyz", name = "model.tar", comment = "legacy";
  h.extra = reinterpret_cast<Bytef*>(extra.data());
  h.extra_len = static_cast<uInt>(extra.size());
  h.name = reinterpret_cast<Bytef*>(name.data());
  h.comment = reinterpret_cast<Bytef*>(comment.data());
  h.hcrc = 1;
  std::string gz = gzip_bytes(data, 6, &h);
  auto src = open_gzip(std::make_shared<MemorySource>(gz), "", dense(""));
  EXPECT_EQ(read_all(*src), data);
  // Header CRC sits right before the deflate data: 10 + 2 + 8 + name + NUL + comment + NUL.
  size_t hcrc_at = 10 + 2 + extra.size() + name.size() + 1 + comment.size() + 1;
  std::string bad = gz;
  bad[hcrc_at] ^= 1;
  EXPECT_THROW(open_gzip(std::make_shared<MemorySource>(bad), "", dense("")), FormatError);
  bad = gz;
  bad[2] = 7;  // not deflate
  EXPECT_THROW(open_gzip(std::make_shared<MemorySource>(bad), "", dense("")), FormatError);
  bad = gz;
  bad[3] |= 0x20;  // reserved flag
  EXPECT_THROW(open_gzip(std::make_shared<MemorySource>(bad), "", dense("")), FormatError);
}

TEST_F(GzipFiles, CorruptStreamIsAFormatErrorAtIndexTime) {
  const std::string& g = big_gz();
  for (size_t at : {g.size() / 2, g.size() / 3, size_t{5000}, g.size() - 12}) {
    std::string bad = g;
    for (size_t i = 0; i < 4; ++i) bad[at + i] = static_cast<char>(bad[at + i] ^ 0x5a);
    EXPECT_THROW(open_gzip(std::make_shared<MemorySource>(bad), "", dense("")), FormatError) << at;
  }
  // Trailer CRC and length.
  for (size_t back : {8u, 4u}) {
    std::string bad = g;
    bad[bad.size() - back] ^= 1;
    EXPECT_THROW(open_gzip(std::make_shared<MemorySource>(bad), "", dense("")), FormatError) << back;
  }
}

TEST_F(GzipFiles, TruncatedStreamIsAFormatError) {
  const std::string& g = big_gz();
  for (size_t n : {size_t{0}, size_t{1}, size_t{5}, size_t{10}, size_t{11}, g.size() / 2, g.size() - 9, g.size() - 4,
                   g.size() - 1}) {
    try {
      open_gzip(std::make_shared<MemorySource>(g.substr(0, n)), "", dense(""));
      ADD_FAILURE() << "accepted a stream cut at " << n;
    } catch (const FormatError& e) {
      EXPECT_NE(std::string(e.what()).size(), 0u);
    }
  }
}

TEST_F(GzipFiles, SecondOpenUsesTheCachedIndex) {
  write_file(file("a.gz"), big_gz());
  auto first = open_file(file("a.gz"), dense(cache()));
  EXPECT_EQ(first->origin(), GzipIndexOrigin::Built);
  EXPECT_EQ(first->cache_note(), "");
  auto second = open_file(file("a.gz"), dense(cache()));
  EXPECT_EQ(second->origin(), GzipIndexOrigin::LoadedFromCache);
  EXPECT_EQ(second->index().points.size(), first->index().points.size());
  EXPECT_EQ(read_all(*second), big_data());
  size_t files = 0;
  for (auto& e : std::filesystem::directory_iterator(cache())) files += e.path().extension() == ".idx";
  EXPECT_EQ(files, 1u);
}

TEST_F(GzipFiles, StaleIndexIsRebuilt) {
  std::string a = make_data(3u << 20, 11), b = make_data(3u << 20, 12);
  std::string ga = gzip_bytes(a), gb = gzip_bytes(b);
  // Same compressed length, so only content and mtime can tell them apart.
  size_t n = std::max(ga.size(), gb.size());
  ga.resize(n, '\0');
  gb.resize(n, '\0');
  write_file(file("s.gz"), ga);
  EXPECT_EQ(open_file(file("s.gz"), dense(cache()))->origin(), GzipIndexOrigin::Built);
  EXPECT_EQ(open_file(file("s.gz"), dense(cache()))->origin(), GzipIndexOrigin::LoadedFromCache);
  // Same size, different content, mtime put back.
  rewrite_in_place(file("s.gz"), gb, true);
  auto r = open_file(file("s.gz"), dense(cache()));
  EXPECT_EQ(r->origin(), GzipIndexOrigin::Built);
  EXPECT_EQ(read_all(*r), b);
  EXPECT_EQ(open_file(file("s.gz"), dense(cache()))->origin(), GzipIndexOrigin::LoadedFromCache);
  // Same bytes, new mtime.
  struct timespec ts[2] = {{0, UTIME_OMIT}, {12345, 678}};
  ASSERT_EQ(::utimensat(AT_FDCWD, file("s.gz").c_str(), ts, 0), 0);
  EXPECT_EQ(open_file(file("s.gz"), dense(cache()))->origin(), GzipIndexOrigin::Built);
}

TEST_F(GzipFiles, CorruptTruncatedOrForgedIndexIsRebuilt) {
  const std::string data = make_data(4u << 20, 21), gz = gzip_bytes(data);
  write_file(file("a.gz"), gz);
  auto built = open_file(file("a.gz"), dense(cache()));
  std::string idx_path;
  for (auto& e : std::filesystem::directory_iterator(cache())) idx_path = e.path().string();
  const std::string good = read_whole_file(idx_path);
  EXPECT_LE(good.size(), gz.size());

  auto expect_rebuilt = [&](const std::string& bytes, const char* what) {
    write_file(idx_path, bytes);
    auto s = open_file(file("a.gz"), dense(cache()));
    EXPECT_EQ(s->origin(), GzipIndexOrigin::Built) << what;
    EXPECT_NE(s->cache_note(), "") << what;
    EXPECT_EQ(read_all(*s), data) << what;
    // The rebuilt index replaced the bad one.
    EXPECT_EQ(open_file(file("a.gz"), dense(cache()))->origin(), GzipIndexOrigin::LoadedFromCache) << what;
  };
  std::string flipped = good;
  flipped[good.size() / 2] ^= 0x10;
  expect_rebuilt(flipped, "flipped byte");
  expect_rebuilt(good.substr(0, good.size() - 100), "truncated");
  expect_rebuilt("", "empty");
  expect_rebuilt(std::string(4096, 'x'), "garbage");

  // Forged: structurally wrong fields behind a valid checksum.
  auto forge = [&](auto&& edit) {
    std::string f = good.substr(0, good.size() - 4);
    edit(f);
    auto* p = reinterpret_cast<unsigned char*>(f.data());
    unsigned char c[4];
    store_le<uint32_t>(c, static_cast<uint32_t>(crc32(0, p, static_cast<uInt>(f.size()))));
    return f + std::string(reinterpret_cast<char*>(c), 4);
  };
  auto* hdr = +[](std::string& f, size_t at, uint64_t v, int width) {
    auto* p = reinterpret_cast<unsigned char*>(f.data()) + at;
    for (int i = 0; i < width; ++i) p[i] = static_cast<unsigned char>(v >> (8 * i));
  };
  expect_rebuilt(forge([&](std::string& f) { hdr(f, 68, 0xffffffffu, 4); }), "huge point count");
  expect_rebuilt(forge([&](std::string& f) { hdr(f, 72, 1ull << 60, 8); }), "huge block count");
  expect_rebuilt(forge([&](std::string& f) { hdr(f, 88 + 24 * 3, 1, 8); }), "points out of order");
  expect_rebuilt(forge([&](std::string& f) { hdr(f, 88 + 24 * 3 + 8, 1ull << 62, 8); }), "point past the archive");
  expect_rebuilt(forge([&](std::string& f) { hdr(f, 88 + 24 * 3 + 20, 40000, 2); }), "window too long");
  expect_rebuilt(forge([&](std::string& f) { hdr(f, 12, 1, 4); }), "block size");
  expect_rebuilt(forge([&](std::string& f) { hdr(f, 56, 1ull << 50, 8); }), "uncompressed size");
}

TEST_F(GzipFiles, UnwritableCacheFolderStillWorks) {
  write_file(file("a.gz"), big_gz());
  write_file(file("not-a-dir"), "x");
  auto s = open_file(file("a.gz"), dense(file("not-a-dir") + "/sub"));
  EXPECT_EQ(s->origin(), GzipIndexOrigin::Built);
  EXPECT_NE(s->cache_note(), "");
  EXPECT_EQ(read_all(*s), big_data());
}

TEST_F(GzipFiles, DefaultIndexStaysUnderOnePercent) {
  write_file(file("a.gz"), big_gz());
  GzipOptions o;
  o.cache_dir = cache();
  o.progress = false;
  auto s = open_file(file("a.gz"), o);
  std::string idx_path;
  for (auto& e : std::filesystem::directory_iterator(cache())) idx_path = e.path().string();
  uint64_t bytes = std::filesystem::file_size(idx_path);
  EXPECT_LE(bytes, big_data().size() / 100) << bytes;
  EXPECT_GE(s->index().points.size(), 4u);
}

TEST_F(GzipFiles, ArchiveChangedUnderTheSourceIsEio) {
  write_file(file("a.gz"), big_gz());
  auto s = open_file(file("a.gz"), dense(""));
  // Same size, other content, same inode: the open descriptor sees the new bytes.
  std::string other = gzip_bytes(make_data(big_data().size(), 99));
  other.resize(big_gz().size(), '\0');
  rewrite_in_place(file("a.gz"), other, true);
  std::string buf(4096, '\0');
  int eio = 0;
  for (uint64_t off : {uint64_t{0}, uint64_t{5} << 20, uint64_t{20} << 20}) {
    try {
      s->read_at(off, buf.data(), buf.size());
      ADD_FAILURE() << "served bytes of a changed archive at " << off;
    } catch (const SysError& e) {
      eio += e.err() == EIO;
    }
  }
  EXPECT_EQ(eio, 3);
}

TEST(GzipIndexFormat, SerializeParseRoundTrip) {
  std::string data = make_data(2u << 20, 5);
  auto idx = build_gzip_index(MemorySource(gzip_bytes(data)), dense(""));
  GzipFileKey k{.file = {.dev = 1, .ino = 2, .size = idx.compressed_size, .mtime_ns = 3}, .head_crc = 4, .tail_crc = 5};
  std::string why;
  auto back = parse_gzip_index(serialize_gzip_index(idx, k), &k, &why);
  ASSERT_TRUE(back) << why;
  EXPECT_EQ(back->points.size(), idx.points.size());
  EXPECT_EQ(back->block_crcs, idx.block_crcs);
  EXPECT_EQ(back->windows, idx.windows);
  for (size_t i = 0; i < idx.points.size(); ++i) {
    EXPECT_EQ(back->points[i].out, idx.points[i].out);
    EXPECT_EQ(back->points[i].in, idx.points[i].in);
    EXPECT_EQ(back->points[i].bits, idx.points[i].bits);
    EXPECT_EQ(back->points[i].first_block, idx.points[i].first_block);
    EXPECT_EQ(back->window(i), idx.window(i));
  }
  GzipFileKey other = k;
  other.file.mtime_ns = 4;
  EXPECT_FALSE(parse_gzip_index(serialize_gzip_index(idx, k), &other, &why));
  // An empty stream indexes to no points and round-trips.
  auto empty = build_gzip_index(MemorySource(gzip_bytes("")), dense(""));
  EXPECT_EQ(empty.uncompressed_size, 0u);
  EXPECT_TRUE(parse_gzip_index(serialize_gzip_index(empty, k), &k, &why)) << why;
}

// `count` reads of up to 20,000 bytes at random offsets return `oracle`'s bytes, and every access
// point's window is the output just before the point.
void expect_reads_and_windows_match(const GzipSource& gz, const std::string& oracle, uint64_t seed, int count) {
  std::mt19937_64 rng(seed);
  std::string buf;
  for (int i = 0; i < count; ++i) {
    uint64_t off = rng() % oracle.size();
    size_t len = static_cast<size_t>(rng() % 20000) + 1;
    buf.assign(len, '\0');
    size_t got = gz.read_at(off, buf.data(), len);
    ASSERT_EQ(got, std::min<uint64_t>(len, oracle.size() - off));
    ASSERT_EQ(0, std::memcmp(buf.data(), oracle.data() + off, got)) << "off " << off;
  }
  const auto& idx = gz.index();
  for (size_t i = 0; i < idx.points.size(); ++i) {
    const auto& p = idx.points[i];
    ASSERT_EQ(idx.window(i), oracle.substr(p.out - p.window_len, p.window_len)) << "point " << i;
  }
}

// With an index file, the windows stay in it: the index holds none in memory, on the first open
// (built, then stored) and on the next (loaded), and reads that start inflating at many different
// points return the original bytes.
TEST_F(GzipFiles, FileBackedIndexHoldsNoWindowsInMemory) {
  write_file(file("a.gz"), big_gz());
  const std::string& d = big_data();
  const std::string oracle = gunzip_all(big_gz());
  ASSERT_EQ(oracle, d);
  for (auto origin : {GzipIndexOrigin::Built, GzipIndexOrigin::LoadedFromCache}) {
    auto gz = open_file(file("a.gz"), dense(cache()));
    ASSERT_EQ(gz->origin(), origin) << gz->cache_note();
    const auto& idx = gz->index();
    ASSERT_GT(idx.points.size(), 100u);
    EXPECT_EQ(idx.resident_window_bytes(), 0u);
    EXPECT_TRUE(idx.window_file);
    size_t with_window = 0;
    for (const auto& p : idx.points) with_window += p.window_len > 0;
    EXPECT_GT(with_window, 100u);
    // Every point's window comes from the file here.
    expect_reads_and_windows_match(*gz, oracle, origin == GzipIndexOrigin::Built ? 17 : 18, 400);
    auto st = gz->stats();
    EXPECT_GT(st.cursor_starts, 100u);  // the reads really did start at many points
    EXPECT_EQ(idx.resident_window_bytes(), 0u);
  }
}

// No index file (never persist, or nowhere to write it): the windows stay in memory, and work.
TEST_F(GzipFiles, NoIndexFileKeepsWindowsInMemory) {
  write_file(file("a.gz"), big_gz());
  write_file(file("not-a-dir"), "x");
  const std::string& d = big_data();
  for (const std::string& where : {std::string(), file("not-a-dir") + "/sub"}) {
    auto gz = open_file(file("a.gz"), dense(where));
    EXPECT_EQ(gz->origin(), GzipIndexOrigin::Built);
    const auto& idx = gz->index();
    EXPECT_FALSE(idx.window_file);
    EXPECT_GT(idx.resident_window_bytes(), 100u * 1024);
    SCOPED_TRACE(where);
    expect_reads_and_windows_match(*gz, d, 19, 200);
  }
}

std::string only_index_file(const std::string& dir) {
  std::string path;
  for (auto& e : std::filesystem::directory_iterator(dir)) path = e.path().string();
  return path;
}

// The index file truncated under a mount: a read that needs a lost window fails with EIO; reads
// from windows still there, and blocks already cached, still work. Replaced (renamed over): the
// open descriptor still reads the file it loaded.
TEST_F(GzipFiles, IndexFileTruncatedOrReplacedAfterLoad) {
  write_file(file("a.gz"), big_gz());
  const std::string& d = big_data();
  open_file(file("a.gz"), dense(cache()));  // builds and stores
  auto gz = open_file(file("a.gz"), dense(cache()));
  ASSERT_EQ(gz->origin(), GzipIndexOrigin::LoadedFromCache);
  const std::string path = only_index_file(cache());
  const auto& idx = gz->index();
  const size_t np = idx.points.size();
  ASSERT_GT(np, 100u);

  // Replaced by another file (what a rebuild does: rename over it): nothing changes for this mount.
  const std::string good = read_whole_file(path);
  write_file(path + ".new", std::string(good.size(), 'x'));
  ASSERT_EQ(::rename((path + ".new").c_str(), path.c_str()), 0);
  std::string buf(4096, '\0');
  const uint64_t late = idx.points[np - 3].out + 100;
  ASSERT_EQ(gz->read_at(late, buf.data(), buf.size()), buf.size());
  EXPECT_EQ(0, std::memcmp(buf.data(), d.data() + late, buf.size()));

  // Truncated in place: reopen the file this source reads (it loaded the one now replaced; make a
  // second source load the good bytes again, then cut its file).
  write_file(path, good);
  auto gz2 = open_file(file("a.gz"), dense(cache()));
  ASSERT_EQ(gz2->origin(), GzipIndexOrigin::LoadedFromCache);
  const auto& idx2 = gz2->index();
  // Cut the file halfway through the window of a late point: its window and all later ones are gone.
  const GzipPoint& cut_at = idx2.points[np - 2];
  ASSERT_GT(cut_at.window_stored, 2u);
  ASSERT_EQ(::truncate(path.c_str(), static_cast<off_t>(cut_at.window_off + cut_at.window_stored / 2)), 0);
  int eio = 0;
  for (size_t i : {np - 2, np - 1}) {
    try {
      gz2->read_at(idx2.points[i].out + 10, buf.data(), buf.size());
      ADD_FAILURE() << "read from a window that was cut off, point " << i;
    } catch (const SysError& e) {
      eio += e.err() == EIO;
      EXPECT_NE(std::string(e.what()).find("truncated"), std::string::npos) << e.what();
    }
  }
  EXPECT_EQ(eio, 2);
  // Windows before the cut still serve.
  const uint64_t early = idx2.points[np / 2].out + 10;
  ASSERT_EQ(gz2->read_at(early, buf.data(), buf.size()), buf.size());
  EXPECT_EQ(0, std::memcmp(buf.data(), d.data() + early, buf.size()));
  // Cut to nothing: every point with a window fails the same way, and the next open rebuilds.
  ASSERT_EQ(::truncate(path.c_str(), 0), 0);
  try {
    gz2->read_at(idx2.points[np / 3].out + 10, buf.data(), buf.size());
    ADD_FAILURE() << "read from a window of an empty index file";
  } catch (const SysError& e) {
    EXPECT_EQ(e.err(), EIO);
  }
  auto gz3 = open_file(file("a.gz"), dense(cache()));
  EXPECT_EQ(gz3->origin(), GzipIndexOrigin::Built);
  EXPECT_EQ(read_all(*gz3), d);

  // Rewritten in place with other bytes at a window: EIO (the window's CRC-32 from load time).
  const std::string path3 = only_index_file(cache());
  auto gz4 = open_file(file("a.gz"), dense(cache()));
  ASSERT_EQ(gz4->origin(), GzipIndexOrigin::LoadedFromCache);
  const GzipPoint& p = gz4->index().points[np / 2];
  ASSERT_GT(p.window_stored, 0u);
  {
    int fd = ::open(path3.c_str(), O_WRONLY);
    ASSERT_GE(fd, 0);
    char z[8] = {};
    ASSERT_EQ(::pwrite(fd, z, sizeof z, static_cast<off_t>(p.window_off + p.window_stored / 2)), 8);
    ::close(fd);
  }
  try {
    gz4->read_at(p.out + 10, buf.data(), buf.size());
    ADD_FAILURE() << "read through a window rewritten in place";
  } catch (const SysError& e) {
    EXPECT_EQ(e.err(), EIO);
  }
}

// The file-backed loader applies the same checks as parse_gzip_index, through pread.
TEST(GzipIndexFormat, LoadFromFileMatchesParse) {
  TempDir tmp;
  std::string data = make_data(2u << 20, 5);
  auto idx = build_gzip_index(MemorySource(gzip_bytes(data)), dense(""));
  GzipFileKey k{.file = {.dev = 1, .ino = 2, .size = idx.compressed_size, .mtime_ns = 3}, .head_crc = 4, .tail_crc = 5};
  const std::string bytes = serialize_gzip_index(idx, k);
  auto load = [&](const std::string& b, const GzipFileKey* expect, std::string* why) {
    const std::string p = tmp.path + "/i.idx";
    write_file(p, b);
    int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw std::runtime_error("open");
    return load_gzip_index_file(std::make_shared<GzipIndexFile>(UniqueFd(fd), p), expect, why);
  };
  std::string why;
  auto back = load(bytes, &k, &why);
  ASSERT_TRUE(back) << why;
  EXPECT_EQ(back->resident_window_bytes(), 0u);
  EXPECT_EQ(back->block_crcs, idx.block_crcs);
  ASSERT_EQ(back->points.size(), idx.points.size());
  for (size_t i = 0; i < idx.points.size(); ++i) {
    EXPECT_EQ(back->points[i].out, idx.points[i].out);
    EXPECT_EQ(back->points[i].window_crc, idx.points[i].window_crc);
    EXPECT_EQ(back->window(i), idx.window(i));
  }
  // A file-backed index serializes to the same bytes (its windows read back from its file).
  EXPECT_EQ(serialize_gzip_index(*back, k), bytes);
  GzipFileKey other = k;
  other.file.mtime_ns = 4;
  EXPECT_FALSE(load(bytes, &other, &why));
  EXPECT_NE(why.find("stale"), std::string::npos) << why;
  // Every single-byte change and every truncation point the in-memory parser refuses, this one does.
  for (size_t at = 0; at < bytes.size(); at += bytes.size() / 300 + 1) {
    std::string b = bytes;
    b[at] ^= 0x41;
    EXPECT_FALSE(load(b, &k, &why)) << "flipped byte " << at;
    EXPECT_FALSE(parse_gzip_index(b, &k, &why)) << "flipped byte " << at;
  }
  for (size_t n : {size_t{0}, size_t{50}, size_t{91}, size_t{92}, bytes.size() / 2, bytes.size() - 1})
    EXPECT_FALSE(load(bytes.substr(0, n), &k, &why)) << "cut at " << n;
}

// ---------------------------------------------------------------------------------------------
// Raw deflate streams (deflated zip entries): the same engine, indexed lazily while read.

namespace {

std::string raw_deflate(const std::string& data, int level = 6) {
  z_stream s{};
  if (deflateInit2(&s, level, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY) != Z_OK) throw std::runtime_error("deflateInit2");
  std::string out(deflateBound(&s, data.size()) + 64, '\0');
  s.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  s.avail_in = static_cast<uInt>(data.size());
  s.next_out = reinterpret_cast<Bytef*>(out.data());
  s.avail_out = static_cast<uInt>(out.size());
  int ret = deflate(&s, Z_FINISH);
  out.resize(s.total_out);
  deflateEnd(&s);
  if (ret != Z_STREAM_END) throw std::runtime_error("deflate");
  return out;
}

std::shared_ptr<GzipSource> raw_source(const std::string& z, uint64_t usize, const std::shared_ptr<InflateCache>& cache,
                                       uint32_t block = 64 << 10) {
  return std::make_shared<GzipSource>(GzipSource::RawDeflate{}, std::make_shared<MemorySource>(z), usize, cache, "entry",
                                      block);
}

int eio_of(const ByteSource& s, uint64_t off, size_t len) {
  std::string buf(len, '\0');
  try {
    s.read_at(off, buf.data(), len);
  } catch (const SysError& e) {
    return e.err();
  }
  return 0;
}

}  // namespace

TEST(RawDeflate, SequentialThenRandomReadsMatch) {
  const std::string data = make_data(5 << 20, 7);
  auto cache = make_inflate_cache(1 << 20);
  auto src = raw_source(raw_deflate(data), data.size(), cache);
  EXPECT_FALSE(src->indexed());
  std::string got;
  std::string buf(100000, '\0');
  for (uint64_t off = 0; off < data.size(); off += buf.size()) {
    size_t n = src->read_at(off, buf.data(), buf.size());
    got.append(buf.data(), n);
  }
  ASSERT_EQ(got, data);
  ASSERT_TRUE(src->indexed());
  EXPECT_EQ(src->index().uncompressed_size, data.size());
  EXPECT_GT(src->index().points.size(), 1u);  // access points beyond the start: random reads need them
  // One inflate pass: every block produced once while indexing.
  EXPECT_EQ(src->stats().blocks_inflated, src->index().block_crcs.size());
  std::mt19937_64 rng(3);
  for (int i = 0; i < 300; ++i) {
    uint64_t off = rng() % data.size();
    size_t len = 1 + rng() % 300000;
    std::string b(len, '\0');
    size_t n = src->read_at(off, b.data(), len);
    b.resize(n);
    ASSERT_EQ(b, data.substr(off, len)) << off;
  }
  EXPECT_LE(src->stats().cache_bytes, src->cache_capacity());
}

TEST(RawDeflate, FirstReadAtTheEndThenBackwards) {
  const std::string data = make_data(4 << 20, 8);
  auto src = raw_source(raw_deflate(data), data.size(), make_inflate_cache(512 << 10));
  std::string b(1000, '\0');
  ASSERT_EQ(src->read_at(data.size() - 1000, b.data(), 1000), 1000u);
  EXPECT_EQ(b, data.substr(data.size() - 1000));
  for (uint64_t off = data.size(); off >= 70000;) {
    off -= 70000;
    ASSERT_EQ(src->read_at(off, b.data(), 1000), 1000u);
    ASSERT_EQ(b, data.substr(off, 1000)) << off;
  }
}

TEST(RawDeflate, ReadsBeforeTheIndexedEndWhileIndexing) {
  // Forward to the middle, then back into blocks the indexing inflate produced and the small
  // cache evicted since: they are served through a snapshot of the index so far.
  const std::string data = make_data(4 << 20, 9);
  auto src = raw_source(raw_deflate(data), data.size(), make_inflate_cache(256 << 10));
  std::string b(5000, '\0');
  ASSERT_EQ(src->read_at(3 << 20, b.data(), b.size()), b.size());
  EXPECT_EQ(b, data.substr(3 << 20, b.size()));
  EXPECT_FALSE(src->indexed());
  for (uint64_t off : {0ull, 1000000ull, 2900000ull, 3100000ull, 100ull}) {
    ASSERT_EQ(src->read_at(off, b.data(), b.size()), b.size());
    ASSERT_EQ(b, data.substr(off, b.size())) << off;
  }
  std::string rest(data.size() - 3200000, '\0');
  ASSERT_EQ(src->read_at(3200000, rest.data(), rest.size()), rest.size());
  EXPECT_EQ(rest, data.substr(3200000));
  EXPECT_TRUE(src->indexed());
}

TEST(RawDeflate, IndexingInflatesAreBoundedAndResume) {
  // Three entries read in turn, a chunk each, through a cache that keeps one indexing inflate
  // alive: the others are dropped and resume from their last access point.
  auto cache = make_inflate_cache(1 << 20, 2, 1);
  std::vector<std::string> data;
  std::vector<std::shared_ptr<GzipSource>> src;
  for (int i = 0; i < 3; ++i) {
    data.push_back(make_data(3 << 20, 20 + static_cast<uint64_t>(i)));
    src.push_back(raw_source(raw_deflate(data.back()), data.back().size(), cache));
  }
  std::vector<std::string> got(3);
  std::string buf(300000, '\0');
  for (uint64_t off = 0; off < (3u << 20); off += buf.size()) {
    for (int i = 0; i < 3; ++i) {
      size_t n = src[static_cast<size_t>(i)]->read_at(off, buf.data(), buf.size());
      got[static_cast<size_t>(i)].append(buf.data(), n);
      EXPECT_LE(inflate_cache_usage(*cache).frontiers, 1u);
    }
  }
  for (int i = 0; i < 3; ++i) EXPECT_EQ(got[static_cast<size_t>(i)], data[static_cast<size_t>(i)]) << i;
  for (auto& s : src) EXPECT_TRUE(s->indexed());
  EXPECT_EQ(inflate_cache_usage(*cache).frontiers, 0u);
  EXPECT_LE(inflate_cache_usage(*cache).parked, 2u);
  EXPECT_LE(inflate_cache_usage(*cache).cache_bytes, 1u << 20);
  src.clear();  // a source going away takes its blocks out of the shared cache
  EXPECT_EQ(inflate_cache_usage(*cache).cache_bytes, 0u);
}

TEST(RawDeflate, ThreadsReadingFromColdMatch) {
  const std::string data = make_data(3 << 20, 11);
  auto src = raw_source(raw_deflate(data), data.size(), make_inflate_cache(256 << 10, 4, 2));
  std::atomic<int> bad{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < 6; ++t)
    ts.emplace_back([&, t] {
      std::mt19937_64 rng(static_cast<uint64_t>(t));
      for (int i = 0; i < 60; ++i) {
        uint64_t off = rng() % data.size();
        size_t len = 1 + rng() % 200000;
        std::string b(len, '\0');
        b.resize(src->read_at(off, b.data(), len));
        if (b != data.substr(off, len)) ++bad;
      }
    });
  for (auto& t : ts) t.join();
  EXPECT_EQ(bad.load(), 0);
}

TEST(RawDeflate, BadStreamsFailReadsWithEio) {
  const std::string data = make_data(1 << 20, 12);
  const std::string z = raw_deflate(data);
  auto cache = make_inflate_cache(1 << 20);
  // Cut short, declared longer or shorter than it inflates to, or corrupt: EIO, on every read
  // that needs the bad part; bytes before it still read.
  EXPECT_EQ(eio_of(*raw_source(z.substr(0, z.size() / 2), data.size(), cache), data.size() - 10, 10), EIO);
  EXPECT_EQ(eio_of(*raw_source(z, data.size() + 1, cache), data.size() - 9, 10), EIO);  // needs the missing byte
  EXPECT_EQ(eio_of(*raw_source(z, data.size() - 1, cache), data.size() - 11, 10), EIO);
  std::string bad = z;
  for (size_t i = bad.size() / 2; i < bad.size() / 2 + 64; ++i) bad[i] = static_cast<char>(bad[i] ^ 0x5a);
  auto s = raw_source(bad, data.size(), cache);
  EXPECT_EQ(eio_of(*s, data.size() - 10, 10), EIO);
  EXPECT_EQ(eio_of(*s, data.size() - 10, 10), EIO);
  std::string head(1000, '\0');
  ASSERT_EQ(s->read_at(0, head.data(), head.size()), head.size());
  EXPECT_EQ(head, data.substr(0, 1000));
}

TEST(RawDeflate, ZipEntriesAreServedThroughTheSharedCache) {
  // A deflated 6 MiB entry, via open_zip_entry: bounded by the process-wide cache.
  const std::string data = make_data(6 << 20, 13);
  const std::string z = raw_deflate(data);
  std::string zip;
  auto le16 = [&](uint16_t v) { zip.append(reinterpret_cast<const char*>(&v), 2); };
  auto le32 = [&](uint32_t v) { zip.append(reinterpret_cast<const char*>(&v), 4); };
  const uint32_t crc = static_cast<uint32_t>(crc32(0, reinterpret_cast<const Bytef*>(data.data()), static_cast<uInt>(data.size())));
  le32(0x04034b50); le16(20); le16(0); le16(8); le16(0); le16(0); le32(crc);
  le32(static_cast<uint32_t>(z.size())); le32(static_cast<uint32_t>(data.size())); le16(1); le16(0);
  zip += "e";
  zip += z;
  const uint32_t cd = static_cast<uint32_t>(zip.size());
  le32(0x02014b50); le16(20); le16(20); le16(0); le16(8); le16(0); le16(0); le32(crc);
  le32(static_cast<uint32_t>(z.size())); le32(static_cast<uint32_t>(data.size())); le16(1); le16(0); le16(0);
  le16(0); le16(0); le32(0); le32(0);
  zip += "e";
  const uint32_t cd_size = static_cast<uint32_t>(zip.size()) - cd;
  le32(0x06054b50); le16(0); le16(0); le16(1); le16(1); le32(cd_size); le32(cd); le16(0);
  SourcePtr file = std::make_shared<MemorySource>(zip, "test.zip");
  auto idx = index_zip(*file);
  auto entry = open_zip_entry(file, idx.entries.at(0));
  ASSERT_NE(std::dynamic_pointer_cast<const GzipSource>(entry), nullptr);
  EXPECT_EQ(entry->describe(), "test.zip: e");
  EXPECT_EQ(read_all(*entry), data);
  EXPECT_LE(inflate_cache_usage(*shared_inflate_cache()).cache_bytes, 32u << 20);
}
