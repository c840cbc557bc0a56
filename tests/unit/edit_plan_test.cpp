// The edit library's commit planning (fs/edit/plan.h) on an Editor over asr_ctc.nemo, without a
// backend: which members are copied verbatim, which get a new header, in which order, and what a
// commit leaves out or refuses.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <regex>

#include "formats/core/errors.h"
#include "formats/detect/checkpoint.h"
#include "formats/tar/tar_writer.h"
#include "fs/edit/editor.h"
#include "fs/edit/plan.h"
#include "tests/common/manifest_check.h"

using namespace nemofs;
using namespace nemofs::testing;

namespace {

constexpr const char* kConfig = "model_config.yaml";
constexpr const char* kVocab = "b61a41f8cc8053f1a730cce9c90087c4_vocab.txt";

struct Session {
  std::string dir, archive;
  std::unique_ptr<Editor> ed;
  Session() {
    char t[] = "/tmp/nemofs-plan-XXXXXX";
    dir = ::mkdtemp(t);
    archive = dir + "/asr_ctc.nemo";
    std::filesystem::copy_file(data_path("real/nemo/asr_ctc.nemo"), archive);
    EditOptions o;
    o.archive_path = archive;
    ed = std::make_unique<Editor>(open_checkpoint(archive), o);
  }
  ~Session() {
    ed.reset();
    std::filesystem::remove_all(dir);
  }
  MemberTree& ns() { return ed->ns(); }
  const std::deque<TarEntry>& entries() { return ns().archive()->nemo->index.entries; }
  MemberNode& node(const std::string& path) {
    MemberNode* n = ns().resolve(path);
    if (!n) throw std::runtime_error(path + " not in the namespace");
    return *n;
  }
  MemberNode& new_file(const std::string& name, const std::string& body) {
    MemberNode& n = ed->new_file(ed->dir_for_new_entry(kRootIno, name), name, 0644);
    if (!body.empty()) ed->write(n, 0, body.data(), body.size());
    return n;
  }
  // The index of the archive entry named `path` (normalised).
  size_t entry_index(const std::string& path) {
    const auto& es = entries();
    for (size_t i = 0; i < es.size(); ++i)
      if (normalize_member_name(es[i].name, es[i].header_offset) == path) return i;
    throw std::runtime_error(path + " not in the archive");
  }
};

bool is_verbatim_of(const CommitItem& it, const TarEntry& e) {
  return it.kind == CommitItem::Kind::Verbatim && it.from == e.header_offset && it.to == e.end_offset &&
         it.entry.name == e.name;
}

const CommitItem* item_for(const CommitPlan& p, const std::string& label) {
  for (const auto& it : p.items)
    if (it.label == label) return &it;
  return nullptr;
}

}  // namespace

TEST(EditPlan, NoEditsIsEveryMemberVerbatimInArchiveOrder) {
  Session s;
  CommitPlan p = plan_commit(s.ns(), false);
  const auto& es = s.entries();
  ASSERT_EQ(p.items.size(), es.size());
  ASSERT_GT(es.size(), 5u);
  for (size_t i = 0; i < es.size(); ++i) EXPECT_TRUE(is_verbatim_of(p.items[i], es[i])) << i << ": " << es[i].name;
  // Together the ranges are the archive's members, back to back from offset 0.
  EXPECT_EQ(p.items.front().from, 0u);
  for (size_t i = 1; i < p.items.size(); ++i) EXPECT_EQ(p.items[i].from, p.items[i - 1].to);
  EXPECT_EQ(s.ed->pending_edits(), 0u);
  EXPECT_FALSE(check_plan_yaml(p));
}

TEST(EditPlan, AnEditedMemberGetsANewHeaderInPlaceAndTheOthersStayVerbatim) {
  Session s;
  MemberNode& cfg = s.node(kConfig);
  std::string text(cfg.file()->size, '\0');
  ASSERT_EQ(cfg.file()->base->read_at(0, text.data(), text.size()), text.size());
  auto at = text.find("sample_rate: 16000");
  ASSERT_NE(at, std::string::npos);
  s.ed->write(cfg, at, "sample_rate: 22050", 18);

  CommitPlan p = plan_commit(s.ns(), false);
  const auto& es = s.entries();
  size_t ci = s.entry_index(kConfig);
  ASSERT_EQ(p.items.size(), es.size());
  for (size_t i = 0; i < es.size(); ++i) {
    if (i == ci) continue;
    EXPECT_TRUE(is_verbatim_of(p.items[i], es[i])) << es[i].name;
  }
  const CommitItem& it = p.items[ci];
  ASSERT_EQ(it.kind, CommitItem::Kind::Member);
  EXPECT_EQ(it.label, kConfig);
  EXPECT_EQ(it.member.path, kConfig);
  EXPECT_FALSE(it.member.dir);
  EXPECT_EQ(it.member.size, text.size());
  EXPECT_GE(it.data_fd, 0) << "the bytes come from the overlay's copy";
  EXPECT_EQ(it.data_off, 0u);
  // A header in the archive's own style, made from the member as it is now.
  EXPECT_EQ(it.header, tar_header(it.member, s.ns().archive()->style));
  EXPECT_EQ(it.header.size() % 512, 0u);
  const TarEntry& old = es[ci];
  std::string old_header(old.data_offset - old.header_offset, '\0');
  ASSERT_EQ(s.ns().archive()->stream->read_at(old.header_offset, old_header.data(), old_header.size()), old_header.size());
  EXPECT_NE(it.header, old_header) << "the copied-up member has a new mtime";
  // The edited bytes are what the item will write.
  std::string now(it.member.size, '\0');
  ASSERT_EQ(::pread(it.data_fd, now.data(), now.size(), 0), static_cast<ssize_t>(now.size()));
  text.replace(at, 18, "sample_rate: 22050");
  EXPECT_EQ(now, text);
  EXPECT_FALSE(check_plan_yaml(p));
}

TEST(EditPlan, ANewFileIsAppendedAfterTheOriginals) {
  Session s;
  s.new_file("zz_new.txt", "hello\n");
  s.new_file("aa_new.txt", "");
  CommitPlan p = plan_commit(s.ns(), false);
  const auto& es = s.entries();
  ASSERT_EQ(p.items.size(), es.size() + 2);
  for (size_t i = 0; i < es.size(); ++i) EXPECT_TRUE(is_verbatim_of(p.items[i], es[i])) << es[i].name;
  // New entries follow in namespace (name) order.
  const CommitItem& a = p.items[es.size()];
  const CommitItem& z = p.items[es.size() + 1];
  EXPECT_EQ(a.kind, CommitItem::Kind::Member);
  EXPECT_EQ(a.member.path, "aa_new.txt");
  EXPECT_EQ(a.member.size, 0u);
  EXPECT_EQ(z.kind, CommitItem::Kind::Member);
  EXPECT_EQ(z.member.path, "zz_new.txt");
  EXPECT_EQ(z.member.size, 6u);
  EXPECT_EQ(z.member.mode, 0644u);
  EXPECT_EQ(z.header, tar_header(z.member, s.ns().archive()->style));
}

TEST(EditPlan, ADeletedMemberIsAbsent) {
  Session s;
  s.ed->unlink(kRootIno, kVocab);
  CommitPlan p = plan_commit(s.ns(), false);
  const auto& es = s.entries();
  size_t vi = s.entry_index(kVocab);
  ASSERT_EQ(p.items.size(), es.size() - 1);
  EXPECT_EQ(item_for(p, kVocab), nullptr);
  for (size_t i = 0, j = 0; i < es.size(); ++i) {
    if (i == vi) continue;
    EXPECT_TRUE(is_verbatim_of(p.items[j++], es[i])) << es[i].name;
  }
}

TEST(EditPlan, ARenamedMemberKeepsItsBytesUnderANewHeaderAfterTheOriginals) {
  Session s;
  Ino extras = s.node("extras").ino;
  s.ed->rename(extras, "README.txt", extras, "README.md", false);
  CommitPlan p = plan_commit(s.ns(), false);
  EXPECT_EQ(item_for(p, "extras/README.txt"), nullptr);
  const CommitItem* it = item_for(p, "extras/README.md");
  ASSERT_NE(it, nullptr);
  EXPECT_EQ(it, &p.items.back());
  EXPECT_EQ(it->kind, CommitItem::Kind::Member);
  const TarEntry& old = s.entries()[s.entry_index("extras/README.txt")];
  EXPECT_EQ(it->member.size, old.size);
  // Not copied up: the bytes are the old member's range of the archive.
  EXPECT_EQ(it->data_fd, s.ns().archive()->fd);
  EXPECT_EQ(it->data_off, old.data_offset);
  EXPECT_EQ(it->member.mtime_sec * 1000000000 + it->member.mtime_nsec, entry_mtime_ns(old)) << "a rename keeps the member's mtime";
}

TEST(EditPlan, JunkIsLeftOutUnlessCommitJunk) {
  Session s;
  s.new_file(".model_config.yaml.swp", "b0VIM 9.0");
  s.new_file("backup~", "x");
  EXPECT_EQ(s.ed->pending_edits(), 0u) << "junk is not a pending edit";
  CommitPlan p = plan_commit(s.ns(), false);
  EXPECT_EQ(p.items.size(), s.entries().size());
  EXPECT_EQ(item_for(p, ".model_config.yaml.swp"), nullptr);
  EXPECT_EQ(item_for(p, "backup~"), nullptr);
  CommitPlan all = plan_commit(s.ns(), true);
  ASSERT_EQ(all.items.size(), s.entries().size() + 2);
  ASSERT_NE(item_for(all, ".model_config.yaml.swp"), nullptr);
  EXPECT_EQ(item_for(all, ".model_config.yaml.swp")->member.size, 9u);
  EXPECT_NE(item_for(all, "backup~"), nullptr);
}

TEST(EditPlan, CheckPlanYamlRefusesAnInvalidEditWithFileLineColumn) {
  Session s;
  MemberNode& cfg = s.node(kConfig);
  const std::string bad = "sample_rate: 16000\nlabels: [a, b\nother: 1\n";
  s.ed->truncate(cfg, 0);
  s.ed->write(cfg, 0, bad.data(), bad.size());
  CommitPlan p = plan_commit(s.ns(), false);
  auto why = check_plan_yaml(p);
  ASSERT_TRUE(why);
  // yaml-cpp reports the unclosed flow sequence where it gives up (3:6 with the yaml-cpp used here).
  EXPECT_TRUE(std::regex_search(*why, std::regex("^invalid YAML: model_config\\.yaml:[23]:[0-9]+: "))) << *why;
  // A commit refuses it too, and keeps the edit.
  CommitOutcome out = s.ed->commit(false);
  EXPECT_FALSE(out.ok);
  EXPECT_EQ(out.err, EINVAL);
  EXPECT_NE(out.message.find("model_config.yaml:"), std::string::npos) << out.message;
  EXPECT_EQ(s.ed->pending_edits(), 1u);
  // A valid edit passes.
  const std::string good = "sample_rate: 16000\nlabels: [a, b]\nother: 1\n";
  s.ed->truncate(cfg, 0);
  s.ed->write(cfg, 0, good.data(), good.size());
  EXPECT_FALSE(check_plan_yaml(plan_commit(s.ns(), false)));
}
