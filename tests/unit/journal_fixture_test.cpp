// Journals written by a release must replay in the next ones: tests/data/journal/ holds a tiny .nemo
// and the overlay folder (`.tiny.nemo.nemofs/`: journal.json and data/ files) that this release
// wrote for a fixed set of edits. The test copies both to a temporary folder, opens a
// WritableBackend over the copy and checks that every edit is there, then commits them.
//
// The journal records the archive's identity (dev, inode, size, mtime in ns, a hash of its first
// and last 64 KiB) and Editor refuses an overlay whose identity does not match the archive
// (ESTALE, "the archive changed since the pending edits ... were made": FileIdentity::same_archive
// compares the inode, the size, the mtime and the sample hash). A copy of the fixture has a new
// inode and mtime, so replaying it as it is stored is impossible by design; the test shows that
// refusal, then rewrites only the identity fields a copy changes (dev, ino, mtime_ns) to the
// copy's, after checking that the recorded size and sample hash are the copy's as they are (the
// sample hash of the same bytes must not change between releases). Everything else in the journal
// and the data files replays unchanged. The data files' own mtimes (authoritative for copied-up
// files) are not kept by git, so they are not checked.
//
// To regenerate the fixture (only when the journal format changes on purpose; the old fixture
// should then stay too, as journal-v<N>/):
//   NEMOFS_WRITE_JOURNAL_FIXTURE=tests/data/journal build/tests/nemofs_unit_tests
//     --gtest_also_run_disabled_tests --gtest_filter='WritableJournalFixture.DISABLED_Write*'
#include <gtest/gtest.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "tests/unit/scratch_dir.h"
#include "formats/core/errors.h"
#include "formats/core/io.h"
#include "formats/detect/checkpoint.h"
#include "fs/backends/writable_backend.h"
#include "tests/common/manifest_check.h"
#include "tests/unit/backend_util.h"
#include "tests/common/tar_writer.h"

using namespace nemofs;
using namespace nemofs::testing;
namespace fsys = std::filesystem;

namespace {

const std::string kConfig = "model:\n  sample_rate: 16000\n  labels: [a, b, c]\n";
const std::string kConfigEdited = "model:\n  sample_rate: 22050\n  labels: [a, b, c]\n";
const std::string kReadme = "extras for the journal fixture\n";
const std::string kVocab = "<unk>\na\nb\nc\n";
const std::string kOldNotes = "to be deleted\n";
const std::string kNew = "a new file in a new folder\n";
constexpr int64_t kVocabMtimeNs = 1767225600123456789;  // set with setattr: journaled (not copied up)

std::string tiny_nemo() {
  return tar_member("./", "", '5') + tar_member("./model_config.yaml", kConfig) + tar_member("./extras/", "", '5') +
         tar_member("./extras/README.txt", kReadme) + tar_member("./tokenizer.vocab", kVocab) +
         tar_member("./old_notes.txt", kOldNotes) + tar_end();
}

std::unique_ptr<WritableBackend> open_backend(const std::string& archive) {
  Checkpoint cp = open_checkpoint(archive);
  WritableOptions o;
  o.archive_path = archive;
  o.uid = getuid();
  o.gid = getgid();
  return std::make_unique<WritableBackend>(std::move(cp), o);
}


using TempDir = nemofs::testing::ScratchDir;

int err_of(const std::function<void()>& f) {
  try {
    f();
    return 0;
  } catch (const SysError& e) {
    return e.err();
  }
}

}  // namespace

// Writes the fixture (see the top of the file). Disabled: run on purpose only.
TEST(WritableJournalFixture, DISABLED_WriteFixture) {
  const char* out = std::getenv("NEMOFS_WRITE_JOURNAL_FIXTURE");
  if (!out) GTEST_SKIP() << "set NEMOFS_WRITE_JOURNAL_FIXTURE to the output folder";
  TempDir tmp;
  const std::string archive = tmp.path + "/tiny.nemo";
  {
    std::ofstream f(archive, std::ios::binary);
    f << tiny_nemo();
  }
  {
    auto b = open_backend(archive);
    Ino cfg = b->lookup(kRootIno, "model_config.yaml").attr.st_ino;
    b->open(cfg, O_RDWR);
    b->write(cfg, 0, kConfig.find("16000"), "22050", 5);
    b->fsync(cfg, 0, false);
    b->release(cfg, 0);
    Ino added = b->mkdir(kRootIno, "added", 0755).attr.st_ino;
    OpenResult o;
    Ino nf = b->create(added, "new.txt", 0640, O_WRONLY | O_CREAT | O_EXCL, o).attr.st_ino;
    b->write(nf, 0, 0, kNew.data(), kNew.size());
    b->fsync(nf, 0, false);
    b->release(nf, 0);
    b->unlink(kRootIno, "old_notes.txt");
    Ino extras = b->lookup(kRootIno, "extras").attr.st_ino;
    b->rename(extras, "README.txt", kRootIno, "README.md", 0);
    Ino vocab = b->lookup(kRootIno, "tokenizer.vocab").attr.st_ino;
    SetAttrRequest r;
    r.set_mode = true;
    r.mode = 0600;
    r.set_mtime = true;
    r.mtime = timespec{kVocabMtimeNs / 1000000000, kVocabMtimeNs % 1000000000};
    b->setattr(vocab, r, nullptr);
    ASSERT_EQ(b->pending_edits(), 7u);
  }
  fsys::create_directories(out);
  fsys::copy_file(archive, std::string(out) + "/tiny.nemo", fsys::copy_options::overwrite_existing);
  fsys::remove_all(std::string(out) + "/.tiny.nemo.nemofs");
  fsys::copy(tmp.path + "/.tiny.nemo.nemofs", std::string(out) + "/.tiny.nemo.nemofs", fsys::copy_options::recursive);
}

TEST(WritableJournalFixture, AJournalOfThisReleaseReplays) {
  const std::string src = data_path("journal");
  ASSERT_TRUE(fsys::exists(src + "/tiny.nemo"));
  ASSERT_TRUE(fsys::exists(src + "/.tiny.nemo.nemofs/journal.json"));
  EXPECT_EQ(read_whole_file(src + "/tiny.nemo"), tiny_nemo()) << "the fixture archive is the one the generator writes";
  TempDir tmp;
  fsys::copy(src, tmp.path, fsys::copy_options::recursive);
  const std::string archive = tmp.path + "/tiny.nemo";
  const std::string journal_path = tmp.path + "/.tiny.nemo.nemofs/journal.json";
  const std::string journal_text = read_whole_file(journal_path);

  // As stored: the identity names the archive the generator edited (another inode): refused.
  {
    Checkpoint cp = open_checkpoint(archive);
    WritableOptions o;
    o.archive_path = archive;
    EXPECT_EQ(err_of([&] { WritableBackend b(std::move(cp), o); }), ESTALE);
    EXPECT_EQ(read_whole_file(journal_path), journal_text) << "a refused overlay is left alone";
  }

  // Only the identity fields a copy changes are rewritten.
  nlohmann::json j = nlohmann::json::parse(journal_text);
  EXPECT_EQ(j.at("version"), 1);
  EXPECT_FALSE(j.contains("committing"));
  FileIdentity copy;
  {
    UniqueFd fd = io::open(archive, O_RDONLY);
    copy = FileIdentity::of_fd(fd.get(), true);
  }
  auto& base = j.at("base");
  EXPECT_EQ(base.at("size").get<uint64_t>(), copy.size);
  EXPECT_EQ(base.at("sample_hash").get<uint64_t>(), copy.sample_hash) << "the sample hash of the same bytes changed";
  base["dev"] = copy.dev;
  base["ino"] = copy.ino;
  base["mtime_ns"] = copy.mtime_ns;
  {
    std::ofstream f(journal_path, std::ios::binary | std::ios::trunc);
    f << j.dump(1) << "\n";
  }

  auto b = open_backend(archive);
  EXPECT_EQ(b->pending_edits(), 7u);
  auto ino_of = [&](Ino parent, const char* name) { return b->lookup(parent, name).attr.st_ino; };
  EXPECT_EQ(read_all(*b, ino_of(kRootIno, "model_config.yaml")), kConfigEdited);
  Entry added = b->lookup(kRootIno, "added");
  EXPECT_TRUE(S_ISDIR(added.attr.st_mode));
  EXPECT_EQ(added.attr.st_mode & 07777, 0755u);
  for (const auto& n : j.at("nodes")) {
    if (n.at("path") == "added") {
      EXPECT_EQ(added.attr.st_mtim.tv_sec * 1000000000 + added.attr.st_mtim.tv_nsec, n.at("mtime_ns").get<int64_t>());
    }
  }
  Entry nf = b->lookup(added.attr.st_ino, "new.txt");
  EXPECT_EQ(nf.attr.st_mode & 07777, 0640u);
  EXPECT_EQ(read_all(*b, nf.attr.st_ino), kNew);
  EXPECT_EQ(err_of([&] { b->lookup(kRootIno, "old_notes.txt"); }), ENOENT);
  EXPECT_EQ(read_all(*b, ino_of(kRootIno, "README.md")), kReadme);
  EXPECT_EQ(err_of([&] { b->lookup(ino_of(kRootIno, "extras"), "README.txt"); }), ENOENT);
  Entry vocab = b->lookup(kRootIno, "tokenizer.vocab");
  EXPECT_EQ(vocab.attr.st_mode & 07777, 0600u);
  EXPECT_EQ(vocab.attr.st_mtim.tv_sec * 1000000000 + vocab.attr.st_mtim.tv_nsec, kVocabMtimeNs);
  EXPECT_EQ(read_all(*b, vocab.attr.st_ino), kVocab);

  // And they commit.
  CommitOutcome out = b->commit();
  ASSERT_TRUE(out.ok) << out.message;
  b.reset();
  Checkpoint cp = open_checkpoint(archive);
  auto file_of = [&](const std::string& p) {
    auto id = cp.tree.resolve(p);
    if (!id) return std::string("<missing>");
    const ByteSource& s = *cp.tree.node(*id).data;
    std::string o(s.size(), '\0');
    s.read_at(0, o.data(), o.size());
    return o;
  };
  EXPECT_EQ(file_of("model_config.yaml"), kConfigEdited);
  EXPECT_EQ(file_of("added/new.txt"), kNew);
  EXPECT_EQ(file_of("README.md"), kReadme);
  EXPECT_EQ(file_of("tokenizer.vocab"), kVocab);
  EXPECT_FALSE(cp.tree.resolve("old_notes.txt"));
  EXPECT_FALSE(cp.tree.resolve("extras/README.txt"));
  EXPECT_FALSE(fsys::exists(tmp.path + "/.tiny.nemo.nemofs/journal.json")) << "nothing pending after the commit";
}
