// tar / .nemo index: hand-written archives (tests/common/tar_writer.h), the encodings real writers
// produce (positive cases), one defect per archive (each refused for its own reason), and a sparse
// archive with a member larger than 8 GiB described by a pax `size` record.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <functional>

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

std::string header_only(const std::string& name, const std::string& data, TarHeader h = {}) {
  h.name = name;
  if (h.raw_size.empty()) h.size = data.size();
  return tar_header_block(h) + pad512(data);
}

// What CPython 3.11 `tarfile.open(p, "w:").add(dir, arcname=".")` writes for a small .nemo.
std::string valid_archive() {
  return tar_member("./", "", '5') + tar_member("./model_config.yaml", "a: 1\n") +
         tar_member("./extras", "", '5') + tar_member("./extras/README.txt", "hello") + tar_end();
}

}  // namespace

TEST(TarValid, CpythonStyleArchive) {
  std::string a = valid_archive();
  a.resize((a.size() + 10239) / 10240 * 10240, '\0');
  Tree t = nemo_tree(a);
  EXPECT_EQ(read_all(t, "model_config.yaml"), "a: 1\n");
  EXPECT_EQ(read_all(t, "extras/README.txt"), "hello");
  EXPECT_EQ(read_all(t, "extras"), "<dir>");
  EXPECT_FALSE(t.resolve("."));
  EXPECT_EQ(t.node(Tree::kRoot).children.size(), 2u);
  EXPECT_EQ(t.node(*t.resolve("model_config.yaml")).mtime, 1795667668);
  auto idx = index_tar(MemorySource(a));
  ASSERT_EQ(idx.entries.size(), 4u);
  EXPECT_EQ(idx.entries[1].name, "./model_config.yaml");
  EXPECT_EQ(idx.entries[1].mtime_text(), "1795667668.1344376");
  EXPECT_EQ(idx.entries[1].header_offset, 1536u);  // its pax block, not its ustar header
  EXPECT_EQ(idx.entries[1].data_offset, 1536u + 1024u + 512u);  // pax header + pax data + ustar header
}

TEST(TarValid, PaxPathLongName) {
  std::string longname = "./" + std::string(150, 'n') + "/" + std::string(120, 'm') + ".txt";
  TarHeader h;
  h.name = longname.substr(0, 99);
  h.size = 4;
  std::string a = pax_block(pax_record("path", longname) + pax_record("mtime", "1.5")) + tar_header_block(h) +
                  pad512("data") + tar_end();
  Tree t = nemo_tree(a);
  EXPECT_EQ(read_all(t, longname.substr(2)), "data");
}

TEST(TarValid, GnuLongName) {
  std::string longname = std::string(200, 'g') + ".bin";
  TarHeader h;
  h.name = longname.substr(0, 100);
  h.size = 3;
  h.gnu_magic = true;
  std::string a = gnu_longname_block(longname) + tar_header_block(h) + pad512("abc") + tar_end();
  Tree t = nemo_tree(a);
  EXPECT_EQ(read_all(t, longname), "abc");
  EXPECT_EQ(t.node(Tree::kRoot).children.size(), 1u);
}

TEST(TarValid, Base256SizeField) {
  TarHeader h;
  h.base256_size = true;
  h.gnu_magic = true;
  std::string a = header_only("b256", "12345", h) + tar_end();
  EXPECT_EQ(read_all(nemo_tree(a), "b256"), "12345");
}

TEST(TarValid, UstarPrefixField) {
  TarHeader h;
  h.prefix = "deep/er";
  std::string a = header_only("file.txt", "pre", h) + tar_end();
  EXPECT_EQ(read_all(nemo_tree(a), "deep/er/file.txt"), "pre");
  // GNU headers use that area for other fields: never a prefix.
  TarHeader g;
  g.gnu_magic = true;
  g.prefix = "notaprefix";
  EXPECT_EQ(read_all(nemo_tree(header_only("file.txt", "gnu", g) + tar_end()), "file.txt"), "gnu");
}

TEST(TarValid, DuplicateNamesLastWinsAndDotSlashStripped) {
  std::string a = tar_member("./x", "old") + tar_member("x", "newer") + tar_member("./x", "newest") + tar_end();
  Tree t = nemo_tree(a);
  EXPECT_EQ(read_all(t, "x"), "newest");
  EXPECT_EQ(t.node(Tree::kRoot).children.size(), 1u);
  EXPECT_EQ(read_all(nemo_tree(tar_member("././a/./b", "ab") + tar_end()), "a/b"), "ab");
}

TEST(TarValid, EndingsToleratedLikeCpython) {
  std::string one = tar_member("x", "1");
  EXPECT_EQ(read_all(nemo_tree(one), "x"), "1");                              // clean EOF, no end blocks
  EXPECT_EQ(read_all(nemo_tree(one + std::string(512, '\0')), "x"), "1");     // one zero block
  std::string cut = tar_member("y", "12");
  cut.resize(cut.size() - 510);                                              // last member without padding
  EXPECT_EQ(read_all(nemo_tree(cut), "y"), "12");
}

TEST(TarValid, OldStyleDirectoryWithTrailingSlash) {
  TarHeader h;
  h.typeflag = '\0';
  std::string a = header_only("olddir/", "", h) + header_only("olddir/f", "F", h) + tar_end();
  Tree t = nemo_tree(a);
  EXPECT_EQ(read_all(t, "olddir"), "<dir>");
  EXPECT_EQ(read_all(t, "olddir/f"), "F");
}

TEST(TarValid, LinksAndSpecialsSkippedWithWarning) {
  TarHeader l;
  l.typeflag = '2';
  l.linkname = "/etc/passwd";
  TarHeader fifo;
  fifo.typeflag = '6';
  std::vector<std::string> w;
  Tree t = nemo_tree(header_only("link", "", l) + header_only("fifo", "", fifo) + tar_member("f", "ok") + tar_end(), &w);
  EXPECT_FALSE(t.resolve("link"));
  EXPECT_FALSE(t.resolve("fifo"));
  EXPECT_EQ(read_all(t, "f"), "ok");
  EXPECT_EQ(w.size(), 2u);
}

TEST(TarDefects, EachRefusedForItsOwnReason) {
  struct Case {
    const char* name;
    std::function<std::string()> make;
    const char* phrase;
  };
  std::vector<Case> cases = {
      {"bad_checksum", [] { TarHeader h; h.checksum_delta = 1; return header_only("f", "x", h) + tar_end(); },
       "header checksum mismatch"},
      {"truncated_header", [] { return tar_member("f", "x") + std::string(300, 'A'); }, "truncated header block (300 bytes left)"},
      {"member_past_eof",
       [] { TarHeader h; h.raw_size = octal_field(4096, 12); return header_only("big", "", h) + std::string(512, '\0'); },
       "member 'big' (4096 bytes) runs past the end"},
      {"extended_header_past_eof", [] {
         TarHeader h; h.name = "././@PaxHeader"; h.typeflag = 'x'; h.size = 2000;
         return tar_header_block(h) + std::string(512, '\0');
       }, "extended header runs past the end"},
      {"extended_header_over_64MiB", [] {
         TarHeader h; h.name = "././@PaxHeader"; h.typeflag = 'x'; h.size = (64u << 20) + 1;
         return tar_header_block(h) + tar_end();
       }, "extended header larger than 64 MiB"},
      {"dotdot_name", [] { return tar_member("./a/../../etc/x", "x") + tar_end(); }, "climbs out of the archive"},
      {"absolute_name", [] { return tar_member("/etc/passwd", "x") + tar_end(); }, "absolute member name"},
      {"empty_name", [] { return header_only("", "x") + tar_end(); }, "member with an empty name"},
      {"root_as_file", [] { return tar_member("./", "x") + tar_end(); }, "a non-directory member named"},
      {"file_then_folder", [] { return tar_member("a", "x") + tar_member("a/b", "y") + tar_end(); }, "is both a file and a"},
      {"folder_then_file", [] { return tar_member("a/", "", '5') + tar_member("a", "y") + tar_end(); }, "is both a folder and a file"},
      {"pax_without_member", [] { return tar_member("f", "x") + pax_block(pax_record("path", "g")) + tar_end(); },
       "archive ends between an extended header and its member"},
      {"pax_cut_at_eof", [] {
         std::string p = pax_block(pax_record("path", "g"));
         return p.substr(0, 530);
       }, "archive ends between an extended header and its member"},
      {"bad_octal_size", [] { TarHeader h; h.raw_size = std::string("00000000009\0", 12); return header_only("f", "", h) + tar_end(); },
       "bad octal digit in size"},
      {"garbage_after_size", [] { TarHeader h; h.raw_size = std::string("0000 12\0\0\0\0\0", 12); return header_only("f", "", h) + tar_end(); },
       "garbage after size"},
      {"negative_base256_size", [] { TarHeader h; h.raw_size = std::string(12, '\xff'); return header_only("f", "", h) + tar_end(); },
       "negative base-256 size"},
      {"base256_size_over_64_bits", [] {
         TarHeader h; h.raw_size = std::string("\x80\x01\0\0\0\0\0\0\0\0\0\0", 12); return header_only("f", "", h) + tar_end();
       }, "base-256 size too large"},
      {"pax_record_length_out_of_range", [] { return pax_block("99 path=x\n") + header_only("f", "") + tar_end(); },
       "pax record length out of range"},
      {"pax_record_no_length", [] { return pax_block(" path=x\n") + header_only("f", "") + tar_end(); },
       "malformed pax record (no length)"},
      {"pax_record_no_newline", [] { return pax_block("11 path=xy ") + header_only("f", "") + tar_end(); },
       "pax record does not end in a newline"},
      {"pax_record_no_equals", [] { return pax_block("10 pathxy\n") + header_only("f", "") + tar_end(); },
       "pax record without '='"},
      {"pax_size_not_a_number", [] { return pax_block(pax_record("size", "12a")) + header_only("f", "") + tar_end(); },
       "bad number in pax record size"},
      {"pax_size_overflows", [] { return pax_block(pax_record("size", "99999999999999999999999")) + header_only("f", "") + tar_end(); },
       "size: arithmetic overflow"},
      // Sparse maps (pax 0.1 records here; every encoding shares the checks): each refusal names
      // the member and the header's offset.
      {"sparse_map_backwards", [] {
         return pax_block(pax_record("GNU.sparse.size", "100") + pax_record("GNU.sparse.map", "50,10,0,10")) +
                header_only("s", std::string(20, 'd')) + tar_end();
       }, "sparse map goes backwards"},
      {"sparse_map_overlap", [] {
         return pax_block(pax_record("GNU.sparse.size", "100") + pax_record("GNU.sparse.map", "0,10,5,10")) +
                header_only("s", std::string(20, 'd')) + tar_end();
       }, "sparse map regions overlap"},
      {"sparse_map_past_logical_size", [] {
         return pax_block(pax_record("GNU.sparse.size", "100") + pax_record("GNU.sparse.map", "95,10")) +
                header_only("s", std::string(10, 'd')) + tar_end();
       }, "sparse map runs past the logical size"},
      {"sparse_data_past_member", [] {
         return pax_block(pax_record("GNU.sparse.size", "100") + pax_record("GNU.sparse.map", "0,10,20,10")) +
                header_only("s", std::string(15, 'd')) + tar_end();
       }, "sparse data runs past the member"},
      {"sparse_map10_cut", [] {
         return pax_block(pax_record("GNU.sparse.major", "1") + pax_record("GNU.sparse.minor", "0") +
                          pax_record("GNU.sparse.realsize", "100")) +
                header_only("s", "2\n0\n10") + tar_end();
       }, "sparse map (format 1.0) runs past the member's data"},
      {"sparse_unknown_version", [] {
         return pax_block(pax_record("GNU.sparse.major", "2") + pax_record("GNU.sparse.minor", "0") +
                          pax_record("GNU.sparse.realsize", "100")) + header_only("s", "") + tar_end();
       }, "GNU sparse format 2.0 is not known"},
      {"sparse_without_size", [] {
         return pax_block(pax_record("GNU.sparse.map", "0,1")) + header_only("s", "d") + tar_end();
       }, "without GNU.sparse.size or GNU.sparse.realsize"},
      {"sparse_numbytes_without_offset", [] {
         return pax_block(pax_record("GNU.sparse.size", "10") + pax_record("GNU.sparse.numbytes", "1")) +
                header_only("s", "d") + tar_end();
       }, "GNU.sparse.numbytes without a GNU.sparse.offset"},
      {"sparse_map01_odd", [] {
         return pax_block(pax_record("GNU.sparse.size", "10") + pax_record("GNU.sparse.map", "0,1,5")) +
                header_only("s", "d") + tar_end();
       }, "GNU.sparse.map has an odd count of numbers"},
      {"oldgnu_extension_past_eof", [] {
         TarHeader h; h.typeflag = 'S'; h.gnu_magic = true; h.name = "s";
         std::string area(4 * 24, '\0');
         area += '\1';
         area += octal_field(10, 12);
         h.at386 = area;
         return tar_header_block(h);
       }, "sparse extension block runs past the end of the archive"},
  };
  ASSERT_NO_THROW(nemo_tree(valid_archive()));
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    std::string msg = "<accepted>";
    try {
      nemo_tree(c.make());
    } catch (const FormatError& e) {
      msg = e.what();
    }
    EXPECT_NE(msg.find(c.phrase), std::string::npos) << msg;
    for (const auto& o : cases) {
      if (std::string(o.phrase) != c.phrase) {
        EXPECT_EQ(msg.find(o.phrase), std::string::npos) << "also " << o.name << ": " << msg;
      }
    }
  }
}

TEST(TarDefects, EveryTruncationOfARealArchiveIsRefusedOrConsistent) {
  // Cut the first 8 KiB of a valid archive at every 64 bytes: either a clean refusal or (at a
  // block boundary between members) an index whose members all lie inside the bytes kept.
  std::string a = valid_archive();
  for (size_t n = 0; n <= a.size(); n += 64) {
    SCOPED_TRACE(n);
    MemorySource src(a.substr(0, n));
    try {
      auto idx = index_tar(src);
      for (const auto& e : idx.entries) EXPECT_LE(e.data_offset + e.size, n);
    } catch (const FormatError&) {
    }
  }
}

// A member larger than 8 GiB as CPython's tarfile writes it: the ustar size field cannot hold it
// (8**11 bytes and up), so it is 0 and a pax `size` record carries the real size. The file is
// sparse: only the headers and a few marker bytes are written.
TEST(TarLarge, MemberOver8GiBViaPaxSize) {
  char tmpl[] = "/tmp/nemofs_tar_big_XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  std::string dir = tmpl;
  std::string path = dir + "/big.nemo";
  struct Cleanup {
    std::string d;
    ~Cleanup() { std::filesystem::remove_all(d); }
  } cleanup{dir};

  const uint64_t kBig = (uint64_t{8} << 30) + 1000;  // 8 GiB + 1000 bytes
  ASSERT_GE(kBig, uint64_t{1} << 33);                // 8**11: needs the pax record
  TarHeader h;
  h.name = "./huge.bin";
  h.raw_size = octal_field(0, 12);
  std::string head = tar_member("./", "", '5') +
                     pax_block(pax_record("mtime", "1795667668.25") + pax_record("size", std::to_string(kBig))) +
                     tar_header_block(h);
  const uint64_t data_off = head.size();
  const uint64_t after_off = data_off + (kBig + 511) / 512 * 512;
  std::string tail = tar_member("./after.txt", "after the big one") + tar_end();
  const uint64_t total = (after_off + tail.size() + 10239) / 10240 * 10240;

  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  ASSERT_GE(fd, 0);
  const std::string marker = "MARKER-PAST-8GiB";
  const uint64_t marker_at = (uint64_t{8} << 30) - 5;  // straddles the 8 GiB point of the member
  const std::string last = "LAST";
  auto pw = [&](const std::string& s, uint64_t off) { return ::pwrite(fd, s.data(), s.size(), static_cast<off_t>(off)) == static_cast<ssize_t>(s.size()); };
  bool ok = ::ftruncate(fd, static_cast<off_t>(total)) == 0 && pw(head, 0) && pw(marker, data_off + marker_at) &&
            pw(last, data_off + kBig - last.size()) && pw(tail, after_off);
  ::close(fd);
  ASSERT_TRUE(ok) << std::strerror(errno);

  auto cp = open_checkpoint(path);
  EXPECT_EQ(cp.format, Format::Tar);
  auto id = cp.tree.resolve("huge.bin");
  ASSERT_TRUE(id);
  const auto& src = *cp.tree.node(*id).data;
  ASSERT_EQ(src.size(), kBig);
  std::string got(marker.size(), '\0');
  ASSERT_EQ(src.read_at(marker_at, got.data(), got.size()), got.size());
  EXPECT_EQ(got, marker);
  std::string end(last.size() + 10, '?');
  ASSERT_EQ(src.read_at(kBig - last.size(), end.data(), end.size()), last.size());  // short read at the end
  EXPECT_EQ(end.substr(0, last.size()), last);
  std::string zero(8, 'x');
  src.read_at(uint64_t{8} << 30 | 512, zero.data(), 8);
  EXPECT_EQ(zero, std::string(8, '\0'));
  auto range = src.file_range(marker_at, marker.size());
  ASSERT_TRUE(range);
  EXPECT_EQ(range->offset, data_off + marker_at);
  EXPECT_EQ(read_all(cp.tree, "after.txt"), "after the big one");
}
