// Writable gzip .nemo (NeMo < 1.7): edited with ordinary tools like a plain one, committed as a
// gzip-compressed tar again, checked from outside with CPython's tarfile "r:gz", NeMo's restore
// fallback ("r:" fails, then "r:gz") and `gzip -t`.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <thread>

#include <nlohmann/json.hpp>

#include "tests/common/manifest_check.h"
#include "tests/mount/mount_util.h"
#include "tests/mount/writable_util.h"

using namespace nemofs::testing;
using nlohmann::json;

namespace {

const std::string kFixture = "nemo/asr_ctc_legacy_gz.nemo";

std::string head_hex(const std::string& path) { return run({"od", "-An", "-tx1", "-N2", path}).out; }

// `gzip -t` accepts it and CPython reads it as "r:gz".
void expect_valid_gzip(const std::string& path) {
  EXPECT_EQ(head_hex(path), " 1f 8b\n") << path;
  auto t = run({"gzip", "-t", path}, 300);
  EXPECT_EQ(t.status, 0) << "gzip -t: " << t.err;
}

}  // namespace

// The scenario on a gzip .nemo: sed -i, cp over the tokenizer, >> the vocab, a new member,
// a deleted member, a renamed one; `nemofs commit` while mounted, more edits, `nemofs umount`.
TEST(WritableGzipMount, EditsCommitAsGzipThatNemoRestores) {
  NEMOFS_REQUIRE_FUSE();
  TempDir tmp;
  std::string orig = data_path("real/" + kFixture);
  std::string nemo = tmp / "legacy.nemo";
  std::filesystem::copy_file(orig, nemo);
  ::chmod(nemo.c_str(), 0640);
  std::string replacement = data_path("real/nemo/replacement_tokenizer.model");
  {
    Mount m(nemo, tmp / "mnt");
    ASSERT_TRUE(m.ok()) << m.result().err;
    std::string mp = m.path();
    auto sh = [&](const std::string& s) {
      auto r = run_shell("cd " + mp + " && " + s);
      EXPECT_EQ(r.status, 0) << s << "\n" << r.out << r.err;
    };
    // A writable mount (not EROFS), reading through the gzip index.
    sh("sed -i 's/sample_rate: 16000/sample_rate: 22050/' model_config.yaml");
    sh("cp " + replacement + " " + kTokModel.substr(2));
    sh("echo appended-token >> " + kVocabTxt.substr(2));
    EXPECT_NE(read_whole_file(mp + "/model_config.yaml").find("sample_rate: 22050"), std::string::npos);
    EXPECT_EQ(read_whole_file(mp + "/" + kTokModel.substr(2)), read_whole_file(replacement));

    // Commit while mounted: the mount then serves the new gzip archive, views rebuilt from it.
    auto c = run({nemofs_bin(), "commit", mp});
    ASSERT_EQ(c.status, 0) << c.out << c.err;
    EXPECT_FALSE(exists(overlay_of(nemo)));
    expect_valid_gzip(nemo);
    auto bad = check_tensors_and_values(dir_view(mp), fixture(kFixture));
    EXPECT_TRUE(bad.empty()) << ::testing::PrintToString(bad);

    // More edits on top of the new archive: a new member, a deleted one, a renamed one (its bytes
    // come straight from the gzip stream, no copy-up).
    sh("echo notes > extras/notes.txt && rm extras/README.txt");
    sh("mv " + kLexicon.substr(2) + " lexicon.txt");
    auto u = m.umount();
    ASSERT_EQ(u.status, 0) << u.out << u.err;
    EXPECT_NE(u.out.find("committed"), std::string::npos) << u.out;
  }
  EXPECT_FALSE(exists(overlay_of(nemo)));
  EXPECT_TRUE(temporaries(tmp.path()).empty());
  expect_valid_gzip(nemo);
  struct stat st {};
  ASSERT_EQ(::stat(nemo.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0640u) << "the mode is kept";

  json spec;
  spec["gzip"] = true;
  spec["untouched"] = {".", "./extras", kWeights, kTokVocab};
  spec["content"][kConfig] = {{"orig", kConfig}, {"replace", pairs({{"sample_rate: 16000", "sample_rate: 22050"}})}};
  spec["content"][kTokModel] = {{"file", replacement}};
  spec["content"][kVocabTxt] = {{"orig", kVocabTxt}, {"append", "appended-token\n"}};
  spec["content"]["./extras/notes.txt"] = {{"text", "notes\n"}};
  spec["content"]["./lexicon.txt"] = {{"orig", kLexicon}};
  spec["absent"] = {"./extras/README.txt", kLexicon};
  spec["restore"] = true;
  auto k = check_commit(orig, nemo, spec);
  EXPECT_EQ(k.status, 0) << k.out << k.err;

  // Remount: the edits, and the tensor views still match the manifest.
  Mount again(nemo, tmp / "mnt2", {"-o", "ro"});
  ASSERT_TRUE(again.ok()) << again.result().err;
  EXPECT_NE(read_whole_file(again.path() + "/model_config.yaml").find("sample_rate: 22050"), std::string::npos);
  EXPECT_EQ(read_whole_file(again.path() + "/extras/notes.txt"), "notes\n");
  EXPECT_FALSE(exists(again.path() + "/extras/README.txt"));
  auto bad = check_tensors_and_values(dir_view(again.path()), fixture(kFixture));
  EXPECT_TRUE(bad.empty()) << ::testing::PrintToString(bad);
}

TEST(WritableGzipMount, InvalidYamlIsRefusedAndTheArchiveUnchanged) {
  NEMOFS_REQUIRE_FUSE();
  TempDir tmp;
  std::string nemo = tmp / "legacy.nemo";
  std::filesystem::copy_file(data_path("real/" + kFixture), nemo);
  std::string before = sha256_file(nemo);
  {
    Mount m(nemo, tmp / "mnt");
    ASSERT_TRUE(m.ok()) << m.result().err;
    auto r = run_shell("cd " + m.path() + " && sed -i '3s/.*/ctc_reduction: [mean_batch/' model_config.yaml");
    ASSERT_EQ(r.status, 0) << r.err;
    auto u = m.umount();
    EXPECT_EQ(u.status, 5) << u.out << u.err;
    EXPECT_NE(u.err.find("invalid YAML: model_config.yaml:"), std::string::npos) << u.err;
  }
  EXPECT_EQ(sha256_file(nemo), before);
  EXPECT_TRUE(exists(overlay_of(nemo) + "/journal.json")) << "the edit is kept";
}

TEST(WritableGzipMount, OutputOptionWritesGzipAndLeavesTheOriginal) {
  NEMOFS_REQUIRE_FUSE();
  TempDir tmp;
  std::string nemo = tmp / "legacy.nemo";
  std::filesystem::copy_file(data_path("real/" + kFixture), nemo);
  std::string before = sha256_file(nemo);
  Mount m(nemo, tmp / "mnt", {"-o", "output=" + (tmp / "out.nemo")});
  ASSERT_TRUE(m.ok()) << m.result().err;
  ASSERT_EQ(run_shell("echo new > " + m.path() + "/added.txt").status, 0);
  auto u = m.umount();
  ASSERT_EQ(u.status, 0) << u.out << u.err;
  EXPECT_EQ(sha256_file(nemo), before);
  expect_valid_gzip(tmp / "out.nemo");
  json spec;
  spec["gzip"] = true;
  spec["content"]["./added.txt"] = {{"text", "new\n"}};
  spec["untouched"] = {kConfig, kTokModel, kTokVocab, kVocabTxt, kWeights, kLexicon};
  spec["restore"] = true;
  auto c = check_commit(nemo, tmp / "out.nemo", spec);
  EXPECT_EQ(c.status, 0) << c.out << c.err;
}

// kill -9 of the daemon while it compresses a generated gzip archive (64 MiB of tar stream):
// the original is untouched, the edit survives, the next commit succeeds.
TEST(WritableGzipMount, KillNineMidCommitKeepsTheOriginalAndTheEdit) {
  NEMOFS_REQUIRE_FUSE();
  TempDir tmp;
  std::string tar = tmp / "big.tar", nemo = tmp / "big.nemo";
  auto g = run({"/usr/bin/python3", script("make_big_nemo.py"), tar, std::to_string(64u << 20), "dense"}, 300);
  ASSERT_EQ(g.status, 0) << g.err;
  ASSERT_EQ(run_shell("gzip -1 -c " + tar + " > " + nemo + " && cp " + nemo + " " + (tmp / "orig.nemo") + " && rm " + tar, 300).status, 0);
  std::string before = sha256_file(nemo);
  {
    Mount m(nemo, tmp / "mnt");
    ASSERT_TRUE(m.ok()) << m.result().err;
    ASSERT_EQ(run_shell("cd " + m.path() + " && sed -i 's/sample_rate: 16000/sample_rate: 44100/' model_config.yaml").status, 0);
    pid_t pid = daemon_pid(m.path());
    ASSERT_GT(pid, 0);
    auto k = kill_daemon_mid_commit(m.path(), pid, tmp.path(), std::chrono::seconds(30));
    ASSERT_TRUE(k.killed) << "the commit never started writing: " << k.commit.err;
    EXPECT_NE(k.commit.status, 0) << "the commit was killed, it cannot have succeeded";
    EXPECT_FALSE(temporaries(tmp.path()).empty()) << "killed before the rename: the partial archive is left";
    run({"fusermount3", "-u", "-z", m.path()});
    m.umount();
  }
  EXPECT_EQ(sha256_file(nemo), before);
  {
    Mount m(nemo, tmp / "mnt");
    ASSERT_TRUE(m.ok()) << m.result().err;
    EXPECT_TRUE(temporaries(tmp.path()).empty()) << "the next mount removes the partial archive";
    EXPECT_NE(read_whole_file(m.path() + "/model_config.yaml").find("sample_rate: 44100"), std::string::npos);
    auto u = m.umount();
    ASSERT_EQ(u.status, 0) << u.out << u.err;
  }
  expect_valid_gzip(nemo);
  json spec;
  spec["gzip"] = true;
  spec["content"][kConfig] = {{"orig", kConfig}, {"replace", pairs({{"sample_rate: 16000", "sample_rate: 44100"}})}};
  spec["untouched"] = {".", kWeights, "./tail.txt"};
  auto c = check_commit(tmp / "orig.nemo", nemo, spec);
  EXPECT_EQ(c.status, 0) << c.out << c.err;
}

TEST(WritableGzipMount, NoRoomForTheNewArchiveIsRefusedCleanly) {
  NEMOFS_REQUIRE_FUSE();
  if (geteuid() != 0) GTEST_SKIP() << "needs root to mount a small tmpfs";
  TempDir tmp;
  Tmpfs fs(tmp / "small", "2m");
  ASSERT_TRUE(fs.ok()) << "mount -t tmpfs failed";
  std::string nemo = tmp / "small/legacy.nemo";
  std::filesystem::copy_file(data_path("real/" + kFixture), nemo);
  // Leave ~96 KiB: room for the edit, not for a second ~190 KiB compressed archive.
  struct statvfs sv {};
  ASSERT_EQ(::statvfs((tmp / "small").c_str(), &sv), 0);
  uint64_t avail = static_cast<uint64_t>(sv.f_bavail) * sv.f_frsize;
  ASSERT_GT(avail, 256u << 10);
  ASSERT_EQ(run({"fallocate", "-l", std::to_string(avail - (96u << 10)), tmp / "small/filler"}).status, 0);
  std::string before = sha256_file(nemo);
  {
    Mount m(nemo, tmp / "mnt");
    ASSERT_TRUE(m.ok()) << m.result().err;
    ASSERT_EQ(run_shell("cd " + m.path() + " && sed -i 's/sample_rate: 16000/sample_rate: 44100/' model_config.yaml").status, 0);
    auto u = m.umount();
    EXPECT_EQ(u.status, 5) << u.out << u.err;
    EXPECT_NE(u.err.find("no space left"), std::string::npos) << u.err;
    EXPECT_EQ(std::count(u.err.begin(), u.err.end(), '\n'), 1) << u.err;
  }
  EXPECT_EQ(sha256_file(nemo), before);
  EXPECT_TRUE(temporaries(tmp / "small").empty());
  ::unlink((tmp / "small/filler").c_str());
  {
    Mount m(nemo, tmp / "mnt");
    ASSERT_TRUE(m.ok()) << m.result().err;
    EXPECT_NE(read_whole_file(m.path() + "/model_config.yaml").find("sample_rate: 44100"), std::string::npos);
    auto u = m.umount();
    EXPECT_EQ(u.status, 0) << u.out << u.err;
  }
  expect_valid_gzip(nemo);
}
