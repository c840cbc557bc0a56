// Writable .nemo mounts under stress: kill -9 in the middle of committing a 1 GiB archive, a full
// filesystem, a sparse member larger than 8 GiB. Archives are generated under /tmp by
// tests/mount/make_big_nemo.py (CPython's tarfile headers).
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

RunResult make_nemo(const std::string& out, uint64_t size, const char* kind) {
  return run({"/usr/bin/python3", script("make_big_nemo.py"), out, std::to_string(size), kind}, 300);
}

json config_edit() {
  json spec;
  spec["content"]["./model_config.yaml"] = {
      {"orig", "./model_config.yaml"},
      {"replace", json::array({json::array({"sample_rate: 16000", "sample_rate: 44100"})})}};
  return spec;
}

const char* kSed = "sed -i 's/sample_rate: 16000/sample_rate: 44100/' ";

}  // namespace

TEST(WritableMountHeavy, KillNineInTheMiddleOfCommittingAOneGiBArchive) {
  NEMOFS_REQUIRE_FUSE();
  TempDir tmp;
  std::string nemo = tmp / "big.nemo", copy = tmp / "orig.nemo";
  auto g = make_nemo(nemo, 1ull << 30, "dense");
  ASSERT_EQ(g.status, 0) << g.err;
  ASSERT_EQ(run({"cp", "--reflink=auto", nemo, copy}, 300).status, 0);
  std::string before = sha256_file(nemo);
  {
    Mount m(nemo, tmp / "mnt");
    ASSERT_TRUE(m.ok()) << m.result().err;
    ASSERT_EQ(run_shell(std::string("cd ") + m.path() + " && " + kSed + "model_config.yaml").status, 0);
    pid_t pid = daemon_pid(m.path());
    ASSERT_GT(pid, 0);
    auto k = kill_daemon_mid_commit(m.path(), pid, tmp.path(), std::chrono::seconds(60));
    ASSERT_TRUE(k.killed) << "the commit never started writing: " << k.commit.err;
    EXPECT_NE(k.commit.status, 0) << "the commit was killed, it cannot have succeeded";
    EXPECT_FALSE(temporaries(tmp.path()).empty()) << "killed before the rename: the partial archive is left";
    run({"fusermount3", "-u", "-z", m.path()});
    m.umount();
  }
  EXPECT_EQ(sha256_file(nemo), before);
  Mount m(nemo, tmp / "mnt");
  ASSERT_TRUE(m.ok()) << m.result().err;
  EXPECT_TRUE(temporaries(tmp.path()).empty()) << "the next mount removes the partial archive";
  EXPECT_NE(read_whole_file(m.path() + "/model_config.yaml").find("sample_rate: 44100"), std::string::npos);
  auto u = m.umount();
  ASSERT_EQ(u.status, 0) << u.out << u.err;
  json spec = config_edit();
  spec["untouched"] = {".", "./model_weights.ckpt", "./tail.txt"};
  auto c = check_commit(copy, nemo, spec);
  EXPECT_EQ(c.status, 0) << c.out << c.err;
}

TEST(WritableMount, NoRoomForTheNewArchiveIsRefusedCleanly) {
  NEMOFS_REQUIRE_FUSE();
  if (geteuid() != 0) GTEST_SKIP() << "needs root to mount a small tmpfs";
  TempDir tmp;
  Tmpfs fs(tmp / "small", "2m");
  ASSERT_TRUE(fs.ok()) << "mount -t tmpfs failed";
  std::string nemo = tmp / "small/asr_ctc.nemo";
  std::filesystem::copy_file(data_path("real/nemo/asr_ctc.nemo"), nemo);
  // Leave ~128 KiB: room for the edit, not for a second 320 KiB archive.
  struct statvfs sv {};
  ASSERT_EQ(::statvfs((tmp / "small").c_str(), &sv), 0);
  uint64_t avail = static_cast<uint64_t>(sv.f_bavail) * sv.f_frsize;
  ASSERT_GT(avail, 256u << 10);
  ASSERT_EQ(run({"fallocate", "-l", std::to_string(avail - (128u << 10)), tmp / "small/filler"}).status, 0);
  std::string before = sha256_file(nemo);
  {
    Mount m(nemo, tmp / "mnt");
    ASSERT_TRUE(m.ok()) << m.result().err;
    ASSERT_EQ(run_shell(std::string("cd ") + m.path() + " && " + kSed + "model_config.yaml").status, 0);
    auto u = m.umount();
    EXPECT_EQ(u.status, 5) << u.out << u.err;
    EXPECT_NE(u.err.find("no space left"), std::string::npos) << u.err;
    EXPECT_NE(u.err.find("unchanged"), std::string::npos) << u.err;
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
  json spec = config_edit();
  spec["untouched"] = {".", "./model_weights.ckpt"};
  spec["restore"] = true;
  auto c = check_commit(data_path("real/nemo/asr_ctc.nemo"), nemo, spec);
  EXPECT_EQ(c.status, 0) << c.out << c.err;
}

TEST(WritableMount, SparseMemberLargerThan8GiBSurvivesAYamlEdit) {
  NEMOFS_REQUIRE_FUSE();
  TempDir tmp;
  const uint64_t size = (8ull << 30) + 12345;  // needs the pax size record
  std::string nemo = tmp / "huge.nemo", copy = tmp / "orig.nemo";
  auto g = make_nemo(nemo, size, "sparse");
  ASSERT_EQ(g.status, 0) << g.err;
  ASSERT_EQ(run({"cp", "--sparse=always", nemo, copy}, 300).status, 0);
  struct stat st {};
  ASSERT_EQ(::stat(nemo.c_str(), &st), 0);
  ASSERT_LT(static_cast<uint64_t>(st.st_blocks) * 512, 64ull << 20) << "the generated archive is not sparse";
  {
    Mount m(nemo, tmp / "mnt");
    ASSERT_TRUE(m.ok()) << m.result().err;
    ASSERT_EQ(::stat((m.path() + "/model_weights.ckpt").c_str(), &st), 0);
    EXPECT_EQ(static_cast<uint64_t>(st.st_size), size);
    ASSERT_EQ(run_shell(std::string("cd ") + m.path() + " && " + kSed + "model_config.yaml").status, 0);
    auto u = m.umount();
    ASSERT_EQ(u.status, 0) << u.out << u.err;
  }
  ASSERT_EQ(::stat(nemo.c_str(), &st), 0);
  EXPECT_LT(static_cast<uint64_t>(st.st_blocks) * 512, 64ull << 20) << "the commit kept the holes";
  auto s = run({"/usr/bin/python3", script("check_sparse_member.py"), copy, nemo, "./model_weights.ckpt"}, 300);
  EXPECT_EQ(s.status, 0) << s.out << s.err;
  EXPECT_GE(std::stoull(s.out.empty() ? "0" : s.out), 3u * 4096) << "the markers were compared";
  json spec = config_edit();
  spec["untouched"] = {".", "./tail.txt"};
  auto c = check_commit(copy, nemo, spec);
  EXPECT_EQ(c.status, 0) << c.out << c.err;
}
