// Read-only mounts of every real fixture, compared with manifest.json through the mounted folder.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "tests/common/manifest_check.h"
#include "tests/mount/mount_util.h"

using namespace nemofs::testing;

namespace {

[[maybe_unused]] void expect_fixture_matches(const std::string& file) {
  NEMOFS_REQUIRE_FUSE();
  TempDir tmp;
  Mount m(data_path("real/" + file), tmp / "mnt");
  ASSERT_TRUE(m.ok()) << m.result().err;
  auto bad = check_against_manifest(dir_view(m.path()), fixture(file));
  EXPECT_TRUE(bad.empty()) << file << ":\n" << ::testing::PrintToString(bad);
  auto u = m.umount();
  EXPECT_EQ(u.status, 0) << u.err;
}

}  // namespace

TEST(ReadOnlyMount, NemoAsrCtcMembers) {
  NEMOFS_REQUIRE_FUSE();
  TempDir tmp;
  Mount m(data_path("real/nemo/asr_ctc.nemo"), tmp / "mnt", {"-o", "ro"});
  ASSERT_TRUE(m.ok()) << m.result().err;
  auto bad = check_files(dir_view(m.path()), fixture("nemo/asr_ctc.nemo"));
  EXPECT_TRUE(bad.empty()) << ::testing::PrintToString(bad);
  // Tensor files and sidecars are read-only.
  struct stat st {};
  ASSERT_EQ(::stat((m.path() + "/model_config.yaml").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0222, 0u);
}

TEST(ReadOnlyMount, BadSourceIsRefusedWithOneLineAndNothingMounted) {
  NEMOFS_REQUIRE_FUSE();
  TempDir tmp;
  std::string junk = tmp / "junk.nemo";
  ASSERT_EQ(run_shell("head -c 5000 /dev/urandom > " + junk).status, 0);
  ::mkdir((tmp / "mnt").c_str(), 0755);
  auto r = run({nemofs_bin(), "mount", junk, tmp / "mnt"});
  EXPECT_EQ(r.status, 3);
  EXPECT_NE(r.err.find(junk), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  auto mounts = run_shell("grep -c ' " + tmp.path() + "/mnt ' /proc/self/mounts");
  EXPECT_EQ(mounts.out, "0\n");
}

TEST(ReadOnlyMount, UmountOfSomethingElseIsRefused) {
  TempDir tmp;
  auto r = run({nemofs_bin(), "umount", tmp.path()});
  EXPECT_EQ(r.status, 6) << r.err;
}

TEST(ReadOnlyMount, SafetensorsZoo) { expect_fixture_matches("safetensors/zoo.safetensors"); }
TEST(ReadOnlyMount, HfTinyLlamaFolder) { expect_fixture_matches("hf/tiny-llama"); }
TEST(ReadOnlyMount, TorchZoo) { expect_fixture_matches("torch/zoo.pt"); }
TEST(ReadOnlyMount, TorchNested) { expect_fixture_matches("torch/nested.pt"); }
TEST(ReadOnlyMount, TorchLegacy) { expect_fixture_matches("torch/legacy.pt"); }
TEST(ReadOnlyMount, LightningTiny) { expect_fixture_matches("lightning/tiny.ckpt"); }
TEST(ReadOnlyMount, NemoAsrCtcWithTensorViews) { expect_fixture_matches("nemo/asr_ctc.nemo"); }
TEST(ReadOnlyMount, DcpSingle) { expect_fixture_matches("dcp/single"); }
TEST(ReadOnlyMount, DcpSharded1d) { expect_fixture_matches("dcp/sharded_1d"); }
TEST(ReadOnlyMount, DcpSharded2d) { expect_fixture_matches("dcp/sharded_2d"); }
TEST(ReadOnlyMount, DcpFsdp2Adam) { expect_fixture_matches("dcp/fsdp2_adam"); }
TEST(ReadOnlyMount, LightningModelParallel) { expect_fixture_matches("lightning/model_parallel.ckpt"); }
TEST(ReadOnlyMount, NemoMegatronWithDistributedView) { expect_fixture_matches("nemo/megatron_gpt.nemo"); }
TEST(ReadOnlyMount, NemoLegacyGzipWithTensorViews) { expect_fixture_matches("nemo/asr_ctc_legacy_gz.nemo"); }

// A mount point whose name mountinfo escapes (a space is \040 there): `nemofs umount` and `status`
// find the mount by it (io::mounts), and the daemon finds its own line at INIT to raise the
// mount's read-ahead (where sysfs is writable: root on a normal system).
TEST(ReadOnlyMount, MountPointWithASpaceIsFoundInMountinfo) {
  NEMOFS_REQUIRE_FUSE();
  TempDir tmp;
  Mount m(data_path("real/safetensors/zoo.safetensors"), tmp / "mnt point");
  ASSERT_TRUE(m.ok()) << m.result().err;
  auto st = run({nemofs_bin(), "status", "--json"});
  EXPECT_NE(st.out.find("mnt point"), std::string::npos) << st.out;
  struct stat s {};
  ASSERT_EQ(::stat(m.path().c_str(), &s), 0);
  const std::string bdi = "/sys/class/bdi/" + std::to_string(major(s.st_dev)) + ":" + std::to_string(minor(s.st_dev)) +
                          "/read_ahead_kb";
  if (::access(bdi.c_str(), W_OK) == 0) {
    auto ra = run({"cat", bdi});
    EXPECT_EQ(ra.out, "4096\n") << bdi;
  }
  auto u = m.umount();
  EXPECT_EQ(u.status, 0) << u.err;
}
