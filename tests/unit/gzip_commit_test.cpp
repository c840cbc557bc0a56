// Writing gzip: the chunked multi-member writer (checked with zlib's own decoder and the seek
// index's first pass), and the writable backend committing an edited gzip .nemo as gzip again,
// with the new archive's seek index left in the cache for the next open.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>

#include <cstdlib>
#include <filesystem>
#include <random>

#include "tests/unit/scratch_dir.h"
#include "formats/core/errors.h"
#include "formats/detect/checkpoint.h"
#include "formats/gzip/gzip_index.h"
#include "formats/gzip/gzip_writer.h"
#include "formats/nemo/nemo.h"
#include "fs/backends/writable_backend.h"
#include "tests/common/manifest_check.h"
#include "tests/unit/backend_util.h"

using namespace nemofs;
using namespace nemofs::testing;

namespace {

// zlib's gzip decoder, member after member; also counts the members.
std::string gunzip_members(const std::string& gz, size_t* members) {
  std::string out;
  size_t pos = 0;
  *members = 0;
  while (pos < gz.size()) {
    z_stream s{};
    if (inflateInit2(&s, 31) != Z_OK) throw std::runtime_error("inflateInit2");
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
    size_t used = gz.size() - pos - s.avail_in;
    inflateEnd(&s);
    if (ret != Z_STREAM_END) throw std::runtime_error("gzip member " + std::to_string(*members) + " does not decode");
    pos += used;
    ++*members;
  }
  return out;
}

std::string random_text(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  static const char alphabet[] = "abcdefgh ijklmnop\nqrstuvwxyz0123456789";
  std::string s(n, '\0');
  for (auto& c : s) c = alphabet[rng() % (sizeof alphabet - 1)];
  return s;
}

using TempDir = nemofs::testing::ScratchDir;


std::string read_src(const ByteSource& s) {
  std::string out(s.size(), '\0');
  if (s.read_at(0, out.data(), out.size()) != out.size()) throw std::runtime_error("short read");
  return out;
}

}  // namespace

TEST(ChunkedGzipWriter, MembersDecodeToTheInputAtEverySizeAndThreadCount) {
  constexpr size_t kChunk = 4096;
  for (unsigned threads : {1u, 3u}) {
    for (size_t n : {size_t{0}, size_t{1}, kChunk - 1, kChunk, kChunk + 1, 5 * kChunk + 123, 40 * kChunk}) {
      std::string in = random_text(n, static_cast<uint32_t>(n + threads));
      std::string gz;
      ChunkedGzipWriter w([&](const char* p, size_t k) { gz.append(p, k); }, 6, threads, kChunk);
      // Alternate both ways of feeding it, in odd-sized pieces.
      size_t at = 0, piece = 1;
      bool direct = false;
      while (at < n) {
        size_t k = std::min(piece, n - at);
        if (direct) {
          size_t room;
          char* dst = w.room(room);
          k = std::min(k, room);
          std::memcpy(dst, in.data() + at, k);
          w.filled(k);
        } else {
          w.write(in.data() + at, k);
        }
        at += k;
        piece = piece * 3 + 7;
        direct = !direct;
      }
      w.finish();
      EXPECT_EQ(w.in_bytes(), n);
      EXPECT_EQ(w.out_bytes(), gz.size());
      size_t members = 0;
      EXPECT_EQ(gunzip_members(gz, &members), in) << n << " bytes, " << threads << " threads";
      EXPECT_EQ(members, std::max<size_t>(1, (n + kChunk - 1) / kChunk));
      // The seek index's own pass agrees (CRC-32 and length of every member).
      GzipOptions opt;
      opt.cache_dir = "";
      opt.progress = false;
      GzipIndex idx = build_gzip_index(MemorySource(gz), opt);
      EXPECT_EQ(idx.uncompressed_size, n);
      EXPECT_EQ(idx.members, members);
    }
  }
}

TEST(ChunkedGzipWriter, AWriteErrorComesOutOfTheCallThatTriggeredIt) {
  int calls = 0;
  ChunkedGzipWriter w([&](const char*, size_t) {
    if (++calls == 2) throw std::runtime_error("disk full");
  }, 1, 2, 4096);
  std::string in = random_text(64 * 4096, 1);
  EXPECT_THROW(
      {
        w.write(in.data(), in.size());
        w.finish();
      },
      std::runtime_error);
}

// Through the Backend interface (no FUSE): an edited gzip .nemo commits as gzip, the tree of the
// result matches the manifest's tensors, and its index comes from the cache (the commit's check
// stored it).
TEST(WritableGzipBackend, CommitWritesGzipAndCachesItsIndex) {
  TempDir tmp;
  CacheHome cache(tmp.path + "/cache");
  const std::string orig = data_path("real/nemo/asr_ctc_legacy_gz.nemo");
  const std::string archive = tmp.path + "/legacy.nemo";
  std::filesystem::copy_file(orig, archive);
  {
    Checkpoint cp = open_checkpoint(archive);
    ASSERT_TRUE(cp.writable_candidate);
    WritableOptions o;
    o.archive_path = archive;
    o.uid = getuid();
    o.gid = getgid();
    WritableBackend b(std::move(cp), o);
    // Read through the gzip stream, then edit: the copy-up reads the member through the index.
    Entry cfg = b.lookup(kRootIno, "model_config.yaml");
    b.open(cfg.attr.st_ino, O_RDWR);
    ReadResult r;
    b.read(cfg.attr.st_ino, 0, 0, 1 << 20, r);
    ASSERT_EQ(r.segments.size(), 1u);
    EXPECT_LT(r.segments[0].fd, 0) << "gzip members are served from memory";
    std::string text(r.memory.get() + r.segments[0].mem_off, r.segments[0].len);
    auto at = text.find("sample_rate: 16000");
    ASSERT_NE(at, std::string::npos);
    EXPECT_EQ(b.write(cfg.attr.st_ino, 0, at, "sample_rate: 22050", 18), 18u);
    b.release(cfg.attr.st_ino, 0);
    // A rename without an edit: the member's bytes come from the gzip stream at commit.
    b.rename(kRootIno, "extras", kRootIno, "extras2", 0);
    CommitOutcome done = b.commit();
    ASSERT_TRUE(done.ok) << done.message;
    EXPECT_NE(done.message.find("committed"), std::string::npos) << done.message;
    // Still mounted: serving the new archive.
    Entry c2 = b.lookup(kRootIno, "model_config.yaml");
    ReadResult r2;
    b.read(c2.attr.st_ino, 0, 0, 1 << 20, r2);
    std::string text2(r2.memory.get() + r2.segments[0].mem_off, r2.segments[0].len);
    EXPECT_NE(text2.find("sample_rate: 22050"), std::string::npos);
  }
  std::string bytes = read_whole_file(archive);
  ASSERT_GE(bytes.size(), 2u);
  EXPECT_EQ(static_cast<unsigned char>(bytes[0]), 0x1f);
  EXPECT_EQ(static_cast<unsigned char>(bytes[1]), 0x8b);

  Checkpoint cp = open_checkpoint(archive);
  EXPECT_EQ(cp.format, Format::GzipTar);
  auto nemo = std::static_pointer_cast<NemoArchive>(cp.keepalive);
  auto gz = std::dynamic_pointer_cast<const GzipSource>(nemo->archive);
  ASSERT_TRUE(gz);
  EXPECT_EQ(gz->origin(), GzipIndexOrigin::LoadedFromCache) << gz->cache_note();
  EXPECT_EQ(gz->index().members, (gz->size() + (1u << 20) - 1) >> 20) << "one gzip member per 1 MiB chunk";
  auto bad = check_tensors_and_values(tree_view(cp.tree), fixture("nemo/asr_ctc_legacy_gz.nemo"));
  EXPECT_TRUE(bad.empty()) << ::testing::PrintToString(bad);

  // Against the original, member by member: only the config changed, extras/ moved.
  Checkpoint was = open_checkpoint(orig);
  auto file_of = [](const Checkpoint& c, const std::string& p) {
    auto id = c.tree.resolve(p);
    if (!id) throw std::runtime_error(p + " missing");
    return read_src(*c.tree.node(*id).data);
  };
  std::string old_cfg = file_of(was, "model_config.yaml");
  std::string new_cfg = file_of(cp, "model_config.yaml");
  old_cfg.replace(old_cfg.find("sample_rate: 16000"), 18, "sample_rate: 22050");
  EXPECT_EQ(new_cfg, old_cfg);
  EXPECT_EQ(file_of(cp, "extras2/README.txt"), file_of(was, "extras/README.txt"));
  EXPECT_FALSE(cp.tree.resolve("extras/README.txt"));
  for (const char* p : {"model_weights.ckpt", "1d2bda5531411bb07ee07d0c150fdd6c_tokenizer.model"})
    EXPECT_EQ(file_of(cp, p), file_of(was, p)) << p;
}
