// Writable .nemo mounts: edits with ordinary tools, the durable overlay, and the commit, checked
// from outside with CPython's tarfile (tests/mount/check_commit.py) against the real fixtures.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "tests/common/manifest_check.h"
#include "tests/mount/mount_util.h"
#include "tests/mount/writable_util.h"

using namespace nemofs::testing;
using nlohmann::json;

namespace {

std::string copy_fixture(const TempDir& t, const std::string& name) {
  std::string dst = t / name;
  std::filesystem::copy_file(data_path("real/nemo/" + name), dst);
  return dst;
}

// kill -9 of the daemon, then the dead mount cleared.
void kill_daemon(const std::string& mp) {
  pid_t pid = daemon_pid(mp);
  ASSERT_GT(pid, 0);
  ASSERT_EQ(::kill(pid, SIGKILL), 0);
  for (int i = 0; i < 500 && ::kill(pid, 0) == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  run({"fusermount3", "-u", "-z", mp});
}

}  // namespace

// The main scenario: sed -i, vim (in place and with the backup/rename dance), a truncating
// write, cp over a member, an append, create/delete/mkdir/mv/chmod/truncate, then nemofs umount.
TEST(WritableMount, OrdinaryToolsThenUmountCommits) {
  NEMOFS_REQUIRE_FUSE();
  ASSERT_EQ(run_shell("command -v vim").status, 0) << "vim is needed (install vim or vim-tiny)";
  TempDir tmp;
  std::string orig = data_path("real/nemo/asr_ctc.nemo");
  std::string nemo = copy_fixture(tmp, "asr_ctc.nemo");
  std::string replacement = data_path("real/nemo/replacement_tokenizer.model");
  Mount m(nemo, tmp / "mnt");
  ASSERT_TRUE(m.ok()) << m.result().err;
  std::string mp = m.path();

  auto sh = [&](const std::string& script) {
    auto r = run_shell("cd " + mp + " && " + script);
    EXPECT_EQ(r.status, 0) << script << "\n" << r.out << r.err;
  };
  sh("sed -i 's/sample_rate: 16000/sample_rate: 22050/' model_config.yaml");
  sh("vim -n -es -c '%s/log_prediction: true/log_prediction: false/' -c 'wq' model_config.yaml");
  sh("vim -es -u NONE -c 'set backup writebackup backupcopy=no backupskip=' "
     "-c '%s/ctc_reduction: mean_batch/ctc_reduction: sum/' -c 'wq' model_config.yaml");
  // The backup proves vim renamed the original away and wrote a new file; it is junk, not committed.
  EXPECT_TRUE(exists(mp + "/model_config.yaml~"));
  // Reads see each edit at once.
  std::string cfg = read_whole_file(mp + "/model_config.yaml");
  EXPECT_NE(cfg.find("sample_rate: 22050"), std::string::npos);
  EXPECT_NE(cfg.find("log_prediction: false"), std::string::npos);
  EXPECT_NE(cfg.find("ctc_reduction: sum"), std::string::npos);

  sh("/usr/bin/python3 -c \"open('" + kTokVocab.substr(2) + "', 'w').write('rewritten vocab\\n')\"");
  sh("cp " + replacement + " " + kTokModel.substr(2));
  sh("echo appended-token >> " + kVocabTxt.substr(2));
  sh("echo notes > extras/notes.txt && rm extras/README.txt");
  sh("mkdir newdir && echo 0123456789abcdef > newdir/f.bin && truncate -s 10 newdir/f.bin");
  sh("mkdir gone && rmdir gone");
  sh("echo moved > tmp.txt && mv tmp.txt moved.txt && chmod 600 moved.txt");
  EXPECT_EQ(read_whole_file(mp + "/" + kTokModel.substr(2)), read_whole_file(replacement));
  EXPECT_EQ(read_whole_file(mp + "/newdir/f.bin"), "0123456789");
  EXPECT_FALSE(exists(mp + "/extras/README.txt"));

  auto u = m.umount();
  ASSERT_EQ(u.status, 0) << u.out << u.err;
  EXPECT_NE(u.out.find("committed"), std::string::npos) << u.out;
  EXPECT_FALSE(exists(overlay_of(nemo))) << "the overlay is gone after a successful commit";

  json spec;
  spec["untouched"] = {".", "./extras", kLexicon, kWeights};
  spec["content"][kConfig] = {{"orig", kConfig},
                              {"replace", pairs({{"sample_rate: 16000", "sample_rate: 22050"},
                                                 {"log_prediction: true", "log_prediction: false"},
                                                 {"ctc_reduction: mean_batch", "ctc_reduction: sum"}})}};
  spec["content"][kTokVocab] = {{"text", "rewritten vocab\n"}};
  spec["content"][kTokModel] = {{"file", replacement}};
  spec["content"][kVocabTxt] = {{"orig", kVocabTxt}, {"append", "appended-token\n"}};
  spec["content"]["./extras/notes.txt"] = {{"text", "notes\n"}};
  spec["content"]["./newdir/f.bin"] = {{"text", "0123456789"}};
  spec["content"]["./moved.txt"] = {{"text", "moved\n"}};
  spec["absent"] = {"./extras/README.txt", "./model_config.yaml~", "./tmp.txt", "./gone"};
  spec["mode"]["./moved.txt"] = 0600;
  spec["restore"] = true;
  auto c = check_commit(orig, nemo, spec);
  EXPECT_EQ(c.status, 0) << c.out << c.err;

  // The committed archive mounts and shows the edits.
  Mount again(nemo, tmp / "mnt2", {"-o", "ro"});
  ASSERT_TRUE(again.ok()) << again.result().err;
  EXPECT_EQ(read_whole_file(again.path() + "/moved.txt"), "moved\n");
}

TEST(WritableMount, SecondWritableMountIsRefusedReadOnlyIsNot) {
  NEMOFS_REQUIRE_FUSE();
  TempDir tmp;
  std::string nemo = copy_fixture(tmp, "asr_ctc.nemo");
  Mount a(nemo, tmp / "a");
  ASSERT_TRUE(a.ok()) << a.result().err;
  Mount b(nemo, tmp / "b");
  EXPECT_EQ(b.result().status, 4) << b.result().err;
  EXPECT_NE(b.result().err.find("already mounted writable"), std::string::npos) << b.result().err;
  Mount c(nemo, tmp / "c", {"-o", "ro"});
  EXPECT_TRUE(c.ok()) << c.result().err;
}

TEST(WritableMount, InvalidYamlIsRefusedAndKeptThenFixedAndCommitted) {
  NEMOFS_REQUIRE_FUSE();
  TempDir tmp;
  std::string nemo = copy_fixture(tmp, "asr_ctc.nemo");
  std::string before = sha256_file(nemo);
  {
    Mount m(nemo, tmp / "mnt");
    ASSERT_TRUE(m.ok()) << m.result().err;
    std::string cfg = read_whole_file(m.path() + "/model_config.yaml");
    // Line 3 becomes an unclosed flow sequence.
    auto r = run_shell("cd " + m.path() + " && sed -i '3s/.*/ctc_reduction: [mean_batch/' model_config.yaml");
    ASSERT_EQ(r.status, 0) << r.err;
    auto c = run({nemofs_bin(), "commit", m.path()});
    EXPECT_EQ(c.status, 5) << c.out << c.err;
    EXPECT_NE(c.err.find("model_config.yaml:"), std::string::npos) << c.err;
    auto u = m.umount();
    EXPECT_EQ(u.status, 5) << u.out << u.err;
    // file:line:column, one line.
    EXPECT_TRUE(u.err.find("model_config.yaml:4:") != std::string::npos ||
                u.err.find("model_config.yaml:3:") != std::string::npos)
        << u.err;
    EXPECT_EQ(std::count(u.err.begin(), u.err.end(), '\n'), 1) << u.err;
    EXPECT_EQ(sha256_file(nemo), before);
  }
  {
    Mount m(nemo, tmp / "mnt");
    ASSERT_TRUE(m.ok()) << m.result().err;
    std::string cfg = read_whole_file(m.path() + "/model_config.yaml");
    EXPECT_NE(cfg.find("ctc_reduction: [mean_batch\n"), std::string::npos) << "the edit came back";
    auto r = run_shell("cd " + m.path() + " && sed -i '3s/.*/ctc_reduction: [mean_batch]/' model_config.yaml");
    ASSERT_EQ(r.status, 0) << r.err;
    auto u = m.umount();
    EXPECT_EQ(u.status, 0) << u.out << u.err;
  }
  EXPECT_NE(sha256_file(nemo), before);
  json spec;
  spec["content"][kConfig] = {{"orig", kConfig}, {"replace", pairs({{"ctc_reduction: mean_batch", "ctc_reduction: [mean_batch]"}})}};
  spec["untouched"] = {kTokModel, kTokVocab, kVocabTxt, kWeights, kLexicon};
  spec["restore"] = true;
  auto c = check_commit(data_path("real/nemo/asr_ctc.nemo"), nemo, spec);
  EXPECT_EQ(c.status, 0) << c.out << c.err;
}

TEST(WritableMount, CommitWhileMountedKeepsServingTheNewArchive) {
  NEMOFS_REQUIRE_FUSE();
  TempDir tmp;
  std::string nemo = copy_fixture(tmp, "megatron_gpt.nemo");
  Mount m(nemo, tmp / "mnt");
  ASSERT_TRUE(m.ok()) << m.result().err;
  auto r = run_shell("cd " + m.path() + " && sed -i 's/num_layers: 2/num_layers: 4/' model_config.yaml && "
                     "echo extra > model_weights/extra.txt");
  ASSERT_EQ(r.status, 0) << r.err;
  auto st = run({nemofs_bin(), "status"});
  EXPECT_NE(st.out.find("pending edits: 2"), std::string::npos) << st.out;
  auto c = run({nemofs_bin(), "commit", m.path()});
  ASSERT_EQ(c.status, 0) << c.out << c.err;
  EXPECT_FALSE(exists(overlay_of(nemo)));
  json spec;
  spec["content"][kConfig] = {{"orig", kConfig}, {"replace", pairs({{"num_layers: 2", "num_layers: 4"}})}};
  spec["content"]["./model_weights/extra.txt"] = {{"text", "extra\n"}};
  spec["untouched"] = {".", "./model_weights", "./model_weights/.metadata", "./model_weights/__0_0.distcp",
                       "./model_weights/common.pt", "./model_weights/metadata.json"};
  spec["restore"] = true;
  spec["expect_artifacts"] = false;
  auto k = check_commit(data_path("real/nemo/megatron_gpt.nemo"), nemo, spec);
  EXPECT_EQ(k.status, 0) << k.out << k.err;
  // Still mounted, serving the same content, and writable on top of the new archive.
  EXPECT_NE(read_whole_file(m.path() + "/model_config.yaml").find("num_layers: 4"), std::string::npos);
  EXPECT_EQ(read_whole_file(m.path() + "/model_weights/extra.txt"), "extra\n");
  st = run({nemofs_bin(), "status"});
  EXPECT_NE(st.out.find("pending edits: 0"), std::string::npos) << st.out;
  r = run_shell("cd " + m.path() + " && rm model_weights/extra.txt");
  ASSERT_EQ(r.status, 0) << r.err;
  auto u = m.umount();
  ASSERT_EQ(u.status, 0) << u.out << u.err;
  json spec2;
  spec2["absent"] = {"./model_weights/extra.txt"};
  spec2["content"][kConfig] = spec["content"][kConfig];
  spec2["untouched"] = spec["untouched"];
  k = check_commit(data_path("real/nemo/megatron_gpt.nemo"), nemo, spec2);
  EXPECT_EQ(k.status, 0) << k.out << k.err;
}

TEST(WritableMount, ArchiveChangedUnderTheMountRefusesTheCommit) {
  NEMOFS_REQUIRE_FUSE();
  TempDir tmp;
  std::string nemo = copy_fixture(tmp, "asr_ctc.nemo");
  Mount m(nemo, tmp / "mnt");
  ASSERT_TRUE(m.ok()) << m.result().err;
  ASSERT_EQ(run_shell("echo x > " + m.path() + "/new.txt").status, 0);
  // Someone else rewrites the archive in place.
  ASSERT_EQ(run_shell("printf 'Z' | dd of=" + nemo + " bs=1 seek=100000 conv=notrunc status=none").status, 0);
  std::string changed = sha256_file(nemo);
  auto u = m.umount();
  EXPECT_EQ(u.status, 5) << u.out << u.err;
  EXPECT_NE(u.err.find("changed on disk"), std::string::npos) << u.err;
  EXPECT_EQ(sha256_file(nemo), changed);
  EXPECT_TRUE(exists(overlay_of(nemo) + "/journal.json"));
  // The edits do not apply to the changed archive: a writable mount is refused, read-only is fine.
  Mount again(nemo, tmp / "mnt");
  EXPECT_EQ(again.result().status, 4) << again.result().err;
  EXPECT_NE(again.result().err.find("changed since the pending edits"), std::string::npos) << again.result().err;
}

TEST(WritableMount, KillNineKeepsEveryEdit) {
  NEMOFS_REQUIRE_FUSE();
  TempDir tmp;
  std::string nemo = copy_fixture(tmp, "asr_ctc.nemo");
  std::string before = sha256_file(nemo);
  {
    Mount m(nemo, tmp / "mnt");
    ASSERT_TRUE(m.ok()) << m.result().err;
    auto r = run_shell("cd " + m.path() + " && sed -i 's/sample_rate: 16000/sample_rate: 8000/' model_config.yaml && "
                       "echo keep > kept.txt && rm " + kVocabTxt.substr(2) + " && mkdir d && echo y > d/y");
    ASSERT_EQ(r.status, 0) << r.err;
    kill_daemon(m.path());
    m.umount();  // nothing left to unmount
  }
  EXPECT_EQ(sha256_file(nemo), before);
  Mount m(nemo, tmp / "mnt");
  ASSERT_TRUE(m.ok()) << m.result().err;
  EXPECT_NE(read_whole_file(m.path() + "/model_config.yaml").find("sample_rate: 8000"), std::string::npos);
  EXPECT_EQ(read_whole_file(m.path() + "/kept.txt"), "keep\n");
  EXPECT_EQ(read_whole_file(m.path() + "/d/y"), "y\n");
  EXPECT_FALSE(exists(m.path() + "/" + kVocabTxt.substr(2)));
  auto u = m.umount();
  ASSERT_EQ(u.status, 0) << u.out << u.err;
  json spec;
  spec["content"]["./kept.txt"] = {{"text", "keep\n"}};
  spec["content"]["./d/y"] = {{"text", "y\n"}};
  spec["content"][kConfig] = {{"orig", kConfig}, {"replace", pairs({{"sample_rate: 16000", "sample_rate: 8000"}})}};
  spec["absent"] = {kVocabTxt};
  spec["untouched"] = {kTokModel, kTokVocab, kWeights, kLexicon, "./extras", "./extras/README.txt"};
  auto c = check_commit(data_path("real/nemo/asr_ctc.nemo"), nemo, spec);
  EXPECT_EQ(c.status, 0) << c.out << c.err;
}

TEST(WritableMount, JunkIsKeptButNotCommittedUnlessAsked) {
  NEMOFS_REQUIRE_FUSE();
  TempDir tmp;
  std::string nemo = copy_fixture(tmp, "asr_ctc.nemo");
  std::string before = sha256_file(nemo);
  const std::string junk = "touch .model_config.yaml.swp 4913 notes~ .DS_Store ._model_config.yaml";
  {
    Mount m(nemo, tmp / "mnt");
    ASSERT_TRUE(m.ok()) << m.result().err;
    ASSERT_EQ(run_shell("cd " + m.path() + " && " + junk).status, 0);
    EXPECT_TRUE(exists(m.path() + "/4913"));
    auto u = m.umount();
    EXPECT_EQ(u.status, 0) << u.out << u.err;
    EXPECT_NE(u.out.find("no changes"), std::string::npos) << u.out;
  }
  EXPECT_EQ(sha256_file(nemo), before) << "junk alone does not rewrite the archive";
  EXPECT_FALSE(exists(overlay_of(nemo)));
  {
    Mount m(nemo, tmp / "mnt", {"-o", "commit_junk"});
    ASSERT_TRUE(m.ok()) << m.result().err;
    ASSERT_EQ(run_shell("cd " + m.path() + " && " + junk).status, 0);
    auto u = m.umount();
    EXPECT_EQ(u.status, 0) << u.out << u.err;
  }
  json spec;
  spec["content"]["./4913"] = {{"text", ""}};
  spec["content"]["./.DS_Store"] = {{"text", ""}};
  spec["content"]["./notes~"] = {{"text", ""}};
  auto c = check_commit(data_path("real/nemo/asr_ctc.nemo"), nemo, spec);
  EXPECT_EQ(c.status, 0) << c.out << c.err;
}

TEST(WritableMount, OutputOptionLeavesTheOriginalAsItWas) {
  NEMOFS_REQUIRE_FUSE();
  TempDir tmp;
  std::string nemo = copy_fixture(tmp, "asr_ctc.nemo");
  std::string before = sha256_file(nemo);
  Mount m(nemo, tmp / "mnt", {"-o", "output=" + (tmp / "out.nemo")});
  ASSERT_TRUE(m.ok()) << m.result().err;
  ASSERT_EQ(run_shell("echo new > " + m.path() + "/added.txt").status, 0);
  auto u = m.umount();
  ASSERT_EQ(u.status, 0) << u.out << u.err;
  EXPECT_EQ(sha256_file(nemo), before);
  EXPECT_FALSE(exists(overlay_of(nemo)));
  json spec;
  spec["content"]["./added.txt"] = {{"text", "new\n"}};
  spec["untouched"] = {kConfig, kTokModel, kTokVocab, kVocabTxt, kWeights, kLexicon};
  spec["restore"] = true;
  auto c = check_commit(nemo, tmp / "out.nemo", spec);
  EXPECT_EQ(c.status, 0) << c.out << c.err;
}

TEST(WritableMount, ErrnoOfUnsupportedAndInvalidOperations) {
  NEMOFS_REQUIRE_FUSE();
  TempDir tmp;
  std::string nemo = copy_fixture(tmp, "asr_ctc.nemo");
  Mount m(nemo, tmp / "mnt");
  ASSERT_TRUE(m.ok()) << m.result().err;
  std::string mp = m.path();
  auto errno_of = [&](const std::string& py) {
    auto r = run({"/usr/bin/python3", "-c",
                  "import os, errno, sys\nos.chdir(sys.argv[1])\ntry:\n  " + py +
                      "\n  print('OK')\nexcept OSError as e:\n  print(errno.errorcode[e.errno])",
                  mp});
    std::string s = r.out;
    while (!s.empty() && s.back() == '\n') s.pop_back();
    return s;
  };
  EXPECT_EQ(errno_of("os.symlink('model_config.yaml', 'l')"), "EPERM");
  EXPECT_EQ(errno_of("os.link('model_config.yaml', 'h')"), "EPERM");
  EXPECT_EQ(errno_of("os.rmdir('extras')"), "ENOTEMPTY");
  EXPECT_EQ(errno_of("os.mkdir('extras')"), "EEXIST");
  EXPECT_EQ(errno_of("os.unlink('extras')"), "EISDIR");
  EXPECT_EQ(errno_of("os.rename('extras', 'extras/sub')"), "EINVAL");
  EXPECT_EQ(errno_of("os.rename('model_config.yaml', 'extras')"), "EISDIR");
  EXPECT_EQ(errno_of("os.unlink('nope')"), "ENOENT");
  EXPECT_EQ(errno_of("os.mkfifo('fifo')"), "EPERM");
  EXPECT_EQ(errno_of("os.chown('model_config.yaml', 12345, -1)"), "EPERM");
  EXPECT_EQ(errno_of("os.chmod('model_config.yaml', 0o600)"), "OK");
  struct stat st {};
  ASSERT_EQ(::stat((mp + "/model_config.yaml").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
}
