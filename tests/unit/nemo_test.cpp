// .nemo (plain tar) over the real fixtures, checked against manifest.json, plus tar defect cases.
#include <gtest/gtest.h>

#include "formats/core/errors.h"
#include "formats/detect/checkpoint.h"
#include "formats/nemo/nemo.h"
#include "tests/common/manifest_check.h"
#include "tests/common/tar_writer.h"

using namespace nemofs;
using namespace nemofs::testing;

TEST(NemoFixture, AsrCtcMembersMatchManifest) {
  auto cp = open_checkpoint(data_path("real/nemo/asr_ctc.nemo"));
  EXPECT_EQ(cp.format, Format::Tar);
  auto bad = check_files(tree_view(cp.tree), fixture("nemo/asr_ctc.nemo"));
  EXPECT_TRUE(bad.empty()) << ::testing::PrintToString(bad);
}

TEST(NemoFixture, MegatronMembersMatchManifest) {
  auto cp = open_checkpoint(data_path("real/nemo/megatron_gpt.nemo"));
  auto bad = check_files(tree_view(cp.tree), fixture("nemo/megatron_gpt.nemo"));
  EXPECT_TRUE(bad.empty()) << ::testing::PrintToString(bad);
}

namespace {

// Every node of a tree: path, kind, size, mode, mtime and its first bytes.
std::vector<std::string> listing(const Tree& t) {
  std::vector<std::string> out;
  t.walk([&](NodeId id, const Node& n) {
    std::string line = t.path_of(id) + (n.type == NodeType::Dir ? "/" : "") + " " + std::to_string(n.mode) + " " +
                       std::to_string(n.mtime);
    if (n.type == NodeType::File) {
      std::string head(static_cast<size_t>(std::min<uint64_t>(n.data->size(), 64)), '\0');
      n.data->read_at(0, head.data(), head.size());
      line += " " + std::to_string(n.data->size()) + " " + head;
    }
    out.push_back(line);
  });
  return out;
}

}  // namespace

// Issue 19 (memory): a read-only open keeps no tar index, yet shows exactly the tree a writable one
// does; the index a writable one keeps names every member's node.
TEST(NemoMemory, ReadOnlyOpenShowsTheSameTreeWithoutTheIndex) {
  for (const char* f : {"real/nemo/asr_ctc.nemo", "real/nemo/megatron_gpt.nemo"}) {
    SCOPED_TRACE(f);
    auto rw = open_checkpoint(data_path(f));
    auto ro = open_checkpoint(data_path(f), /*writable=*/false);
    EXPECT_TRUE(rw.writable_candidate);
    EXPECT_FALSE(ro.writable_candidate);
    EXPECT_EQ(listing(ro.tree), listing(rw.tree));
    EXPECT_GT(listing(ro.tree).size(), 3u);
    EXPECT_EQ(ro.warnings, rw.warnings);
    auto rwn = std::static_pointer_cast<NemoArchive>(rw.keepalive);
    auto ron = std::static_pointer_cast<NemoArchive>(ro.keepalive);
    EXPECT_TRUE(ron->index.entries.empty());
    EXPECT_TRUE(ron->entry_of_node.empty());
    EXPECT_FALSE(rwn->index.entries.empty());
    EXPECT_EQ(ron->index.end_of_entries, rwn->index.end_of_entries);
    EXPECT_EQ(ron->index.end_marker, rwn->index.end_marker);
    size_t members = 0;
    rwn->for_each_member(rw.tree, [&](const std::string& path, size_t i) {
      ++members;
      EXPECT_EQ(normalize_member_name(rwn->index.entries.at(i).name, 0), path);
      EXPECT_EQ(rwn->entry_of(rw.tree, path), i);
    });
    EXPECT_GT(members, 0u);
  }
}

TEST(NemoMemory, RareFieldsLiveBesideTheEntry) {
  TarHeader p;
  p.name = "./plain.txt";
  p.size = 3;
  std::string a = tar_header_block(p) + pad512("abc");
  a += tar_member("./paxed.txt", "x");  // with a pax mtime, as CPython writes it
  TarHeader l;
  l.name = "./link";
  l.typeflag = '2';
  l.linkname = "plain.txt";
  a += tar_header_block(l) + tar_end();
  auto idx = index_tar(MemorySource(a));
  ASSERT_EQ(idx.entries.size(), 3u);
  EXPECT_FALSE(idx.entries[0].rare);  // a plain member pays for none of them
  EXPECT_EQ(idx.entries[0].linkname(), "");
  EXPECT_EQ(idx.entries[0].mtime_text(), "");
  EXPECT_TRUE(idx.entries[0].regions().empty());
  ASSERT_TRUE(idx.entries[1].rare);
  EXPECT_EQ(idx.entries[1].mtime_text(), "1795667668.1344376");
  EXPECT_EQ(idx.entries[1].mtime, 1795667668);
  ASSERT_TRUE(idx.entries[2].rare);
  EXPECT_EQ(idx.entries[2].linkname(), "plain.txt");
  // The streamed form hands out the same entries, and keeps the end for the caller.
  TarIndex tail;
  std::vector<std::string> names;
  index_tar(MemorySource(a), tail, [&](TarEntry&& e) { names.push_back(e.name); });
  EXPECT_EQ(names, (std::vector<std::string>{"./plain.txt", "./paxed.txt", "./link"}));
  EXPECT_TRUE(tail.entries.empty());
  EXPECT_EQ(tail.end_of_entries, idx.end_of_entries);
  EXPECT_TRUE(tail.end_marker);
}

TEST(NemoMemory, TreeCopiesKeepFoldersAndFilesHaveNoChildren) {
  Tree t;
  NodeId d = t.mkdirs("a/b");
  t.add_file(d, "f", std::make_shared<MemorySource>("xyz"));
  Tree copy = t;  // a view is grafted from a copy
  Tree g;
  g.graft(Tree::kRoot, "v", copy);
  EXPECT_EQ(g.size(), t.size() + 1);
  EXPECT_EQ(listing(copy), listing(t));
  auto f = g.resolve("v/a/b/f");
  ASSERT_TRUE(f);
  EXPECT_TRUE(g.node(*f).children.empty());
  EXPECT_EQ(g.node(*f).children.find("x"), g.node(*f).children.end());
  EXPECT_EQ(g.node(*g.resolve("v/a")).children.count("b"), 1u);
}
