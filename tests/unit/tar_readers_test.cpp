// The corners every other tar reader (GNU tar, bsdtar, CPython's tarfile) agrees on, each of which
// nemofs once got wrong: NUL-led numeric fields (read as 0), negative and out-of-range mtimes
// (clamped and shown, not refused), v7 archives without `ustar` magic (recognised by the header
// checksum, signed or unsigned), and GNU sparse members in all four encodings (old GNU 'S' with
// extension blocks, pax 0.0, 0.1 and 1.0), served as their logical file: holes read as zeros
// without I/O, data regions spliced from the archive.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>

#include "tests/unit/scratch_dir.h"
#include "formats/core/errors.h"
#include "formats/detect/checkpoint.h"
#include "formats/nemo/nemo.h"
#include "formats/tar/tar.h"
#include "tests/common/tar_writer.h"

using namespace nemofs;
using namespace nemofs::testing;

namespace {

std::string read_all(const Tree& t, const std::string& path) {
  auto id = t.resolve(path);
  if (!id) return "<absent>";
  if (t.node(*id).type != NodeType::File) return "<dir>";
  const auto& src = *t.node(*id).data;
  std::string s(src.size(), '\0');
  src.read_at(0, s.data(), s.size());
  return s;
}

Tree nemo_tree(const std::string& archive, std::vector<std::string>* warnings = nullptr) {
  Tree t;
  auto n = build_nemo(t, std::make_shared<MemorySource>(archive, "test.nemo"));
  if (warnings) *warnings = n.warnings;
  return t;
}

std::string member(TarHeader h, const std::string& data) {
  h.size = data.size();
  return tar_header_block(h) + pad512(data);
}

using TempDir = nemofs::testing::ScratchDir;

// The logical file the sparse tests store: data at its start, middle and end, holes between.
const uint64_t kLogical = 100000;
const std::vector<SparseRegion> kRegions = {{0, 700}, {30000, 1000}, {65536, 512}, {99990, 10}};
std::string region_data() {
  std::string d;
  for (size_t i = 0; i < kRegions.size(); ++i)
    for (uint64_t j = 0; j < kRegions[i].length; ++j) d += static_cast<char>('A' + (i * 7 + j) % 26);
  return d;
}
std::string logical_file() {
  std::string f(kLogical, '\0');
  std::string d = region_data();
  uint64_t at = 0;
  for (const auto& r : kRegions) {
    std::memcpy(&f[r.offset], d.data() + at, r.length);
    at += r.length;
  }
  return f;
}

std::string sparse_pair(uint64_t off, uint64_t len) { return octal_field(off, 12) + octal_field(len, 12); }

// Old GNU 'S': `in_header` regions in the header (at most 4), the rest in extension blocks of 21.
std::string oldgnu_sparse(const std::string& name, const std::vector<SparseRegion>& regions, uint64_t logical,
                          const std::string& data, size_t in_header = 4) {
  TarHeader h;
  h.name = name;
  h.typeflag = 'S';
  h.gnu_magic = true;
  std::string area;
  size_t i = 0;
  for (; i < std::min(in_header, regions.size()); ++i) area += sparse_pair(regions[i].offset, regions[i].length);
  area.resize(4 * 24, '\0');
  area += i < regions.size() ? '\1' : '\0';
  area += octal_field(logical, 12);
  h.at386 = area;
  h.size = data.size();
  std::string out = tar_header_block(h);
  while (i < regions.size()) {
    std::string b;
    for (size_t k = 0; k < 21 && i < regions.size(); ++k, ++i) b += sparse_pair(regions[i].offset, regions[i].length);
    b.resize(504, '\0');
    b += i < regions.size() ? '\1' : '\0';
    b.resize(512, '\0');
    out += b;
  }
  return out + pad512(data);
}

std::string map01(const std::vector<SparseRegion>& regions) {
  std::string m;
  for (const auto& r : regions) m += (m.empty() ? "" : ",") + std::to_string(r.offset) + "," + std::to_string(r.length);
  return m;
}

std::string pax_sparse(const std::string& version, const std::string& name, const std::vector<SparseRegion>& regions,
                       uint64_t logical, const std::string& data) {
  std::string rec;
  TarHeader h;
  h.name = "./GNUSparseFile.0/" + name;
  std::string body = data;
  if (version == "0.0") {
    h.name = name;
    rec = pax_record("GNU.sparse.size", std::to_string(logical)) + pax_record("GNU.sparse.numblocks", std::to_string(regions.size()));
    for (const auto& r : regions)
      rec += pax_record("GNU.sparse.offset", std::to_string(r.offset)) + pax_record("GNU.sparse.numbytes", std::to_string(r.length));
  } else if (version == "0.1") {
    rec = pax_record("GNU.sparse.size", std::to_string(logical)) + pax_record("GNU.sparse.numblocks", std::to_string(regions.size())) +
          pax_record("GNU.sparse.name", name) + pax_record("GNU.sparse.map", map01(regions));
  } else {
    rec = pax_record("GNU.sparse.major", "1") + pax_record("GNU.sparse.minor", "0") + pax_record("GNU.sparse.name", name) +
          pax_record("GNU.sparse.realsize", std::to_string(logical));
    std::string m = std::to_string(regions.size()) + "\n";
    for (const auto& r : regions) m += std::to_string(r.offset) + "\n" + std::to_string(r.length) + "\n";
    body = pad512(m) + data;
  }
  return pax_block(rec) + member(h, body);
}

}  // namespace

// GNU tar, bsdtar and tarfile read a numeric field that starts with NUL as empty (0), whatever
// digits follow. nemofs read the digits: here a size of 512, i.e. the next member's header taken
// as this member's bytes.
TEST(TarReaders, NulLedNumericFieldIsZero) {
  TarHeader h;
  h.name = "f";
  h.raw_size = std::string(7, '\0') + "1000" + std::string(1, '\0');  // "\0...\0" "1000" = 512 if read past the NULs
  TarHeader inner;
  inner.name = "inner.txt";
  std::string a = tar_header_block(h) + member(inner, "inner bytes") + tar_end();
  Tree t = nemo_tree(a);
  EXPECT_EQ(read_all(t, "f"), "");
  EXPECT_EQ(read_all(t, "inner.txt"), "inner bytes");
  // Leading spaces are skipped; a field of spaces or NULs only is 0.
  const unsigned char spaced[12] = {' ', ' ', ' ', '1', '7', ' ', 0, 0, 0, 0, 0, 0};
  EXPECT_EQ(parse_tar_number(spaced, 12, 0, "size"), 017u);
  const unsigned char blank[8] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};
  EXPECT_EQ(parse_tar_number(blank, 8, 0, "mode"), 0u);
  const unsigned char nul_led[8] = {0, '7', '7', '7', 0, 0, 0, 0};
  EXPECT_EQ(parse_tar_number(nul_led, 8, 0, "mode"), 0u);
}

// Negative and out-of-range mtimes refused the mount; every other reader shows the member. They
// are clamped to [0, kMaxTarMtime] and the mount says so.
TEST(TarReaders, NegativeAndHugeMtimesClampedAndShown) {
  TarHeader neg;
  neg.name = "negative";
  neg.raw_mtime = std::string("\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xfe\x00", 12);  // -512, base-256
  TarHeader huge;
  huge.name = "huge";
  huge.raw_mtime = std::string("\x80\x7f\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", 12);
  TarHeader plain;
  plain.name = "pax_negative";
  TarHeader plain2;
  plain2.name = "pax_huge";
  std::string a = member(neg, "n") + member(huge, "h") + pax_block(pax_record("mtime", "-1000.25")) + member(plain, "p") +
                  pax_block(pax_record("mtime", "123456789012345678901234.5")) + member(plain2, "q") + tar_end();
  std::vector<std::string> w;
  Tree t = nemo_tree(a, &w);
  EXPECT_EQ(read_all(t, "negative"), "n");
  EXPECT_EQ(t.node(*t.resolve("negative")).mtime, 0);
  EXPECT_EQ(t.node(*t.resolve("huge")).mtime, kMaxTarMtime);
  EXPECT_EQ(t.node(*t.resolve("pax_negative")).mtime, 0);
  EXPECT_EQ(t.node(*t.resolve("pax_huge")).mtime, kMaxTarMtime);
  EXPECT_EQ(w.size(), 4u);
  for (const auto& s : w) EXPECT_NE(s.find("mtime out of range"), std::string::npos) << s;
  auto idx = index_tar(MemorySource(a));
  EXPECT_TRUE(idx.entries[2].mtime_clamped);
  EXPECT_EQ(idx.entries[2].mtime_text(), "");  // no fraction kept for a clamped time
}

// A v7 archive (no `ustar` magic) was "not a checkpoint nemofs knows": it is recognised by its
// header checksum, unsigned or signed.
TEST(TarReaders, V7ArchiveRecognisedByChecksum) {
  TempDir d;
  for (bool signed_sum : {false, true}) {
    SCOPED_TRACE(signed_sum);
    TarHeader dir;
    dir.name = "cfg/";
    dir.typeflag = '\0';
    dir.v7 = true;
    dir.signed_checksum = signed_sum;
    TarHeader f = dir;
    f.name = "cfg/na\xc3\xafve.yaml";  // a byte >= 0x80: the signed and unsigned sums differ
    TarHeader g = dir;
    g.name = "model_config.yaml";
    std::string a = member(dir, "") + member(f, "a: 1\n") + member(g, "b: 2\n") + tar_end();
    std::string p = d.write(signed_sum ? "signed.tar" : "v7.tar", a);
    auto cp = open_checkpoint(p);
    EXPECT_EQ(cp.format, Format::Tar);
    EXPECT_EQ(read_all(cp.tree, "cfg/na\xc3\xafve.yaml"), "a: 1\n");
    EXPECT_EQ(read_all(cp.tree, "model_config.yaml"), "b: 2\n");
  }
  // Not every 512 bytes are a tar: a block whose checksum does not hold stays unknown.
  std::string junk(1024, 'x');
  EXPECT_THROW(open_checkpoint(d.write("junk.bin", junk)), FormatError);
}

TEST(TarReaders, SparseMembersInAllFourGnuEncodings) {
  const std::string data = region_data(), want = logical_file();
  std::vector<SparseRegion> with_tail = kRegions;
  with_tail.push_back({kLogical, 0});  // GNU tar ends the map of a file that ends in a hole so
  struct Case {
    const char* name;
    std::string archive;
  };
  // Many regions: the old GNU map spills into two extension blocks.
  std::vector<SparseRegion> many;
  std::string many_data, many_want(200000, '\0');
  for (uint64_t i = 0; i < 30; ++i) {
    many.push_back({i * 6000 + 100, 50});
    for (int j = 0; j < 50; ++j) {
      char c = static_cast<char>('a' + (i + j) % 26);
      many_data += c;
      many_want[i * 6000 + 100 + j] = c;
    }
  }
  std::vector<Case> cases = {
      {"oldgnu", oldgnu_sparse("s.bin", with_tail, kLogical, data)},
      {"pax_0.0", pax_sparse("0.0", "s.bin", with_tail, kLogical, data)},
      {"pax_0.1", pax_sparse("0.1", "s.bin", with_tail, kLogical, data)},
      {"pax_1.0", pax_sparse("1.0", "s.bin", kRegions, kLogical, data)},
  };
  for (auto& c : cases) {
    SCOPED_TRACE(c.name);
    std::string a = tar_member("./before.txt", "before") + c.archive + tar_member("./after.txt", "after") + tar_end();
    Tree t;
    NemoArchive n;
    ASSERT_NO_THROW(n = build_nemo(t, std::make_shared<MemorySource>(a, "t.nemo"))) << c.name;
    EXPECT_EQ(read_all(t, "s.bin"), want);
    EXPECT_EQ(read_all(t, "before.txt"), "before");
    EXPECT_EQ(read_all(t, "after.txt"), "after");
    const TarEntry& e = n.index.entries[n.entry_of(t, "s.bin").value()];
    EXPECT_TRUE(e.sparse);
    EXPECT_EQ(e.size, kLogical);
    EXPECT_EQ(e.stored_size, data.size());
    EXPECT_EQ(e.regions().size(), kRegions.size());
    EXPECT_EQ(a.substr(e.data_offset, data.size()), data);
  }
  std::string a = oldgnu_sparse("m.bin", many, 200000, many_data) + tar_end();
  Tree t = nemo_tree(a);
  EXPECT_EQ(read_all(t, "m.bin"), many_want);
  EXPECT_EQ(index_tar(MemorySource(a)).entries[0].data_offset, 512u * 3);  // header + 2 extension blocks
}

TEST(TarReaders, SparseSourceHolesCostNoIoAndDataIsSpliced) {
  TempDir d;
  std::string a = pax_sparse("1.0", "s.bin", kRegions, kLogical, region_data()) + tar_end();
  auto cp = open_checkpoint(d.write("s.tar", a));
  const ByteSource& s = *cp.tree.node(*cp.tree.resolve("s.bin")).data;
  ASSERT_EQ(s.size(), kLogical);
  // Inside one data region: a range of the archive file.
  auto fr = s.file_range(30000 + 10, 100);
  ASSERT_TRUE(fr);
  auto idx = index_tar(FileSource(d.path + "/s.tar"));
  EXPECT_EQ(fr->offset, idx.entries[0].data_offset + 700 + 10);
  EXPECT_FALSE(s.file_range(699, 2));  // straddles data and hole
  std::vector<Piece> p;
  s.pieces(600, 30000, p);  // 100 data, 29300 hole, 600 data
  ASSERT_EQ(p.size(), 3u);
  EXPECT_TRUE(p[0].file && p[0].len == 100);
  EXPECT_TRUE(p[1].zero && !p[1].file && p[1].len == 29300);
  EXPECT_TRUE(p[2].file && p[2].len == 600);
  // Reads straddling everything, and past the end.
  std::string want = logical_file(), got(kLogical + 50, '?');
  EXPECT_EQ(s.read_at(0, got.data(), got.size()), kLogical);
  EXPECT_EQ(got.substr(0, kLogical), want);
  for (uint64_t off : {0u, 699u, 29999u, 65000u, 99989u}) {
    std::string g(777, '?');
    size_t n = s.read_at(off, g.data(), g.size());
    EXPECT_EQ(g.substr(0, n), want.substr(off, n));
  }
}
