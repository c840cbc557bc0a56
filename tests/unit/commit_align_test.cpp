// Alignment padding for block sharing (fs/edit/commit.h, formats/tar/tar_writer.h): the pad's bytes
// and what every reader makes of them, and align_for_sharing's arithmetic over commit plans.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "formats/core/byte_source.h"
#include "formats/tar/tar.h"
#include "formats/tar/tar_writer.h"
#include "fs/edit/commit.h"
#include "tests/unit/scratch_dir.h"

using namespace nemofs;

namespace {

std::string member(const std::string& name, const std::string& data) {
  TarMember m{name, false, 0644, 1700000000, 0, data.size()};
  TarStyle style;
  return tar_header(m, style) + data + std::string(tar_padding(data.size()), '\0');
}

CommitItem verbatim_of(const TarEntry& e) {
  CommitItem it;
  it.kind = CommitItem::Kind::Verbatim;
  it.label = e.name;
  it.from = e.header_offset;
  it.to = e.end_offset;
  it.entry = e;
  return it;
}

CommitItem edited(const std::string& name, uint64_t size) {
  CommitItem it;
  it.kind = CommitItem::Kind::Member;
  it.label = name;
  it.member = TarMember{name, false, 0644, 1700000000, 0, size};
  it.header = tar_header(it.member, TarStyle{});
  it.data_fd = 99;  // an overlay file: not the old archive
  return it;
}

uint64_t item_bytes(const CommitItem& it) {
  return it.kind == CommitItem::Kind::Verbatim ? it.to - it.from
                                               : it.header.size() + it.member.size + tar_padding(it.member.size);
}

}  // namespace

TEST(TarPad, ExactSizesAndDetection) {
  for (uint64_t n : {1024u, 1536u, 4096u, 4608u, 65536u}) {
    std::string p = tar_pad(n);
    ASSERT_EQ(p.size(), n);
    EXPECT_TRUE(tar_checksum_ok(reinterpret_cast<const unsigned char*>(p.data())));
    MemorySource src(p + member("a", "x"));
    EXPECT_EQ(tar_pad_at(src, 0), n);
    // index_tar folds the pad into the member after it, like any pax global header.
    auto idx = index_tar(src);
    ASSERT_EQ(idx.entries.size(), 1u);
    EXPECT_EQ(idx.entries[0].name, "./a");
    EXPECT_EQ(idx.entries[0].header_offset, 0u);
    EXPECT_EQ(idx.entries[0].data_offset, n + 512);
  }
  EXPECT_THROW(tar_pad(512), std::invalid_argument);
  EXPECT_THROW(tar_pad(1000), std::invalid_argument);
  // Another writer's global header (git archive's commit comment) is not ours.
  std::string other = tar_pad(1024);
  other.replace(512 + 5, 7, "COMMENT");
  EXPECT_EQ(tar_pad_at(MemorySource(other + member("a", "x")), 0), 0u);
  EXPECT_EQ(tar_pad_at(MemorySource(member("a", std::string(600, 'y'))), 0), 0u);
}

// CPython's tarfile, GNU tar and bsdtar list the members and nothing else, and extract the bytes.
TEST(TarPad, EveryReaderSkipsIt) {
  nemofs::testing::ScratchDir tmp;
  const std::string tar = tar_pad(4608) + member("a.txt", "alpha\n") + tar_pad(1024) + member("b.txt", "beta\n") +
                          std::string(tar_end_size(0), '\0');
  const std::string path = tmp.path + "/t.tar";
  {
    FILE* f = std::fopen(path.c_str(), "wb");
    ASSERT_TRUE(f);
    std::fwrite(tar.data(), 1, tar.size(), f);
    std::fclose(f);
  }
  const std::string d = tmp.path;
  const std::string script =
      "set -e; cd " + d + "; mkdir py gnu bsd\n"
      "test \"$(/usr/bin/python3 -c 'import tarfile; print(\",\".join(tarfile.open(\"t.tar\").getnames()))')\" = ./a.txt,./b.txt\n"
      "/usr/bin/python3 -c 'import tarfile; tarfile.open(\"t.tar\").extractall(\"py\")'\n"
      "tar -xf t.tar -C gnu; bsdtar -xf t.tar -C bsd\n"
      "test \"$(tar -tf t.tar | tr '\\n' ,)\" = ./a.txt,./b.txt,\n"
      "test \"$(bsdtar -tf t.tar | tr '\\n' ,)\" = ./a.txt,./b.txt,\n"
      "for r in py gnu bsd; do test \"$(ls -A $r | tr '\\n' ,)\" = a.txt,b.txt, && test \"$(cat $r/a.txt)\" = alpha && "
      "test \"$(cat $r/b.txt)\" = beta; done\n";
  EXPECT_EQ(std::system(script.c_str()), 0);
}

// An old archive: a small config, then a big member, then a small tail.
struct OldArchive {
  std::string bytes;
  TarIndex idx;
  OldArchive() {
    bytes = member("model_config.yaml", std::string(700, 'c')) + member("weights", std::string(300000, 'w')) +
            member("tail.txt", "t");
    bytes += std::string(tar_end_size(bytes.size()), '\0');
    idx = index_tar(MemorySource(bytes));
  }
};

TEST(AlignForSharing, ShiftedBigMembersKeepTheirOffsetModuloTheBlock) {
  OldArchive old;
  MemorySource src(old.bytes);
  for (uint64_t grow : {0u, 512u, 1024u, 3584u, 4096u, 9u * 512}) {
    for (uint64_t block : {4096u, 65536u}) {
      SCOPED_TRACE("grow " + std::to_string(grow) + " block " + std::to_string(block));
      std::vector<CommitItem> items = {edited("model_config.yaml", 700 + grow), verbatim_of(old.idx.entries[1]),
                                       verbatim_of(old.idx.entries[2])};
      const uint64_t added = align_for_sharing(items, src, 3, block);
      uint64_t pos = 0;
      for (size_t i = 0; i < items.size(); ++i) {
        pos += items[i].pad.size();
        if (i == 1) EXPECT_EQ(pos % block, items[i].from % block);  // the big member: congruent
        if (i != 1) EXPECT_TRUE(items[i].pad.empty()) << i;          // small ones: never padded
        pos += item_bytes(items[i]);
      }
      EXPECT_EQ(added, items[1].pad.size());
      if (!items[1].pad.empty()) {
        EXPECT_GE(items[1].pad.size(), 1024u);
        EXPECT_LE(items[1].pad.size(), block + 512);
      }
    }
  }
}

TEST(AlignForSharing, EarlierPadsAreDroppedNotPiledUp) {
  // The same archive after a commit that padded the big member: the pad is part of its headers.
  std::string padded_bytes = member("model_config.yaml", std::string(700, 'c')) + tar_pad(2560) +
                             member("weights", std::string(300000, 'w')) + member("tail.txt", "t");
  padded_bytes += std::string(tar_end_size(padded_bytes.size()), '\0');
  MemorySource padded(padded_bytes);
  TarIndex idx = index_tar(padded);
  ASSERT_EQ(idx.entries.size(), 3u);
  // The config unchanged in size: the old pad is dropped and one of the same size put back (the
  // weights keep their offset modulo the block), not a second one beside it.
  std::vector<CommitItem> items = {edited("model_config.yaml", 700), verbatim_of(idx.entries[1]),
                                   verbatim_of(idx.entries[2])};
  EXPECT_EQ(align_for_sharing(items, padded, 3, 4096), 2560u);
  EXPECT_EQ(items[1].from, idx.entries[1].header_offset + 2560);
  EXPECT_EQ(items[1].pad.size(), 2560u);
  // Grown by one block: a pad one block smaller.
  std::vector<CommitItem> again = {edited("model_config.yaml", 700 + 512), verbatim_of(idx.entries[1]),
                                   verbatim_of(idx.entries[2])};
  align_for_sharing(again, padded, 3, 4096);
  EXPECT_EQ(again[1].from, idx.entries[1].header_offset + 2560);
  EXPECT_EQ(again[1].pad.size(), 2048u);
  // Grown so that the weights land aligned without one: no pad at all.
  std::vector<CommitItem> aligned = {edited("model_config.yaml", 700 + 2560), verbatim_of(idx.entries[1]),
                                     verbatim_of(idx.entries[2])};
  EXPECT_EQ(align_for_sharing(aligned, padded, 3, 4096), 0u);
  EXPECT_TRUE(aligned[1].pad.empty());
  EXPECT_EQ(aligned[1].from, idx.entries[1].header_offset + 2560);
}

TEST(AlignForSharing, RenamedMemberReadFromTheOldArchiveIsAlignedToo) {
  OldArchive old;
  MemorySource src(old.bytes);
  const TarEntry& w = old.idx.entries[1];
  CommitItem renamed = edited("renamed_weights_with_a_much_longer_name", w.size);
  renamed.data_fd = 3;  // the old archive's descriptor
  renamed.data_off = w.data_offset;
  std::vector<CommitItem> items = {verbatim_of(old.idx.entries[0]), renamed};
  align_for_sharing(items, src, 3, 4096);
  const uint64_t data_at = item_bytes(items[0]) + items[1].pad.size() + items[1].header.size();
  EXPECT_EQ(data_at % 4096, w.data_offset % 4096);
  // The same member from an overlay file (edited): nothing to share, no pad.
  items[1].data_fd = 7;
  align_for_sharing(items, src, 3, 4096);
  EXPECT_TRUE(items[1].pad.empty());
}
