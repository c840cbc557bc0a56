// Sparse tar members through real mounts: the seed's repack workflow run with bsdtar (which writes
// files with holes as pax 1.0 sparse members), and a member of 9 GiB logical size holding a few MiB
// of data (GNU tar -S): it mounts, reads right past 8 GiB, and a YAML edit commit keeps it sparse
// (the archive stays small on disk) and byte for byte.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>

#include "tests/mount/mount_util.h"
#include "tests/mount/writable_util.h"

using namespace nemofs::testing;

namespace {

std::string pread_str(const std::string& path, uint64_t off, size_t n) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return "<open failed>";
  std::string s(n, '\0');
  ssize_t got = ::pread(fd, s.data(), n, static_cast<off_t>(off));
  ::close(fd);
  if (got < 0) return "<read failed>";
  s.resize(static_cast<size_t>(got));
  return s;
}

uint64_t file_size(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
}

uint64_t allocated(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_blocks) * 512 : 0;
}

}  // namespace

TEST(SparseMember, BsdtarRepackOfATreeWithHolesMountsAndReadsLikeTheTree) {
  NEMOFS_REQUIRE_FUSE();
  TempDir tmp;
  std::string tree = tmp / "tree";
  ASSERT_EQ(run({std::string(NEMOFS_TEST_DATA_DIR) + "/tar_tree/make_tree.sh", tree}).status, 0);
  // The seed's workflow: cd model_contents && tar cf ../model_modified.nemo *
  ASSERT_EQ(run_shell("cd " + tree + " && bsdtar cf ../repack.nemo *").status, 0);
  Mount m(tmp / "repack.nemo", tmp / "mnt", {"-o", "ro"});
  ASSERT_TRUE(m.ok()) << m.result().err;
  for (std::string f : {"sparse.bin", "model_config.yaml", "empty.bin", "dir/random.bin", "dir/naïve_日本語_ü.txt"}) {
    SCOPED_TRACE(f);
    EXPECT_EQ(run({"cmp", tree + "/" + f, m.path() + "/" + f}).status, 0);
  }
  EXPECT_EQ(file_size(m.path() + "/sparse.bin"), 3u * 1024 * 1024 + 5);
  EXPECT_FALSE(exists(m.path() + "/sym"));
  EXPECT_FALSE(exists(m.path() + "/hard.txt"));
}

TEST(SparseMember, NineGiBLogicalSizeReadsPast8GiBAndSurvivesAYamlCommit) {
  NEMOFS_REQUIRE_FUSE();
  TempDir tmp;
  std::string src = tmp / "src";
  const uint64_t kLogical = 9ull << 30, k8G = 8ull << 30;
  // A few MiB of data: at the start, at 4 GiB, straddling 8 GiB, at the very end.
  std::string make =
      "set -e; mkdir -p " + src + " && cd " + src + " && printf 'model:\\n  lr: 0.1\\n' > model_config.yaml && "
      "truncate -s " + std::to_string(kLogical) + " big.bin && "
      "head -c 2097152 /dev/urandom | dd of=big.bin conv=notrunc status=none && "
      "head -c 1048576 /dev/urandom | dd of=big.bin bs=1M seek=4096 conv=notrunc status=none && "
      "head -c 1048576 /dev/urandom | dd of=big.bin bs=512K seek=16383 conv=notrunc status=none && "
      "printf LAST | dd of=big.bin bs=1 seek=" + std::to_string(kLogical - 4) + " conv=notrunc status=none && "
      "tar --format=posix -S -cf ../big.nemo .";
  auto r = run_shell(make, 300);
  ASSERT_EQ(r.status, 0) << r.err;
  const std::string nemo = tmp / "big.nemo";
  const uint64_t archive_size = file_size(nemo);
  ASSERT_LT(archive_size, 16u << 20);
  auto sparse_map = [&](const std::string& a) {
    return run({"/usr/bin/python3", "-c",
                "import tarfile, sys\nm = tarfile.open(sys.argv[1]).getmember('./big.bin')\nprint(m.size, m.sparse)", a})
        .out;
  };
  const std::string map_before = sparse_map(nemo);
  ASSERT_NE(map_before.find(std::to_string(kLogical)), std::string::npos) << map_before;

  const std::string want_8g = pread_str(src + "/big.bin", k8G - 4096, 8192);
  const std::string want_end = pread_str(src + "/big.bin", kLogical - 4096, 4096);
  {
    Mount m(nemo, tmp / "mnt");
    ASSERT_TRUE(m.ok()) << m.result().err;
    const std::string big = m.path() + "/big.bin";
    EXPECT_EQ(file_size(big), kLogical);
    EXPECT_EQ(pread_str(big, k8G - 4096, 8192), want_8g);          // straddles 8 GiB
    EXPECT_EQ(pread_str(big, kLogical - 4096, 4096), want_end);    // the end, past 8 GiB
    EXPECT_EQ(pread_str(big, (6ull << 30) + 12345, 100), std::string(100, '\0'));  // a hole
    EXPECT_EQ(pread_str(big, kLogical, 10), "");
    ASSERT_EQ(run_shell("sed -i 's/lr: 0.1/lr: 0.05/' " + m.path() + "/model_config.yaml").status, 0);
    auto u = m.umount();
    ASSERT_EQ(u.status, 0) << u.err;
  }
  // Committed: the edit is in, the sparse member is byte for byte as it was (same map), and the
  // archive is still small on disk.
  EXPECT_LT(file_size(nemo), archive_size + (1u << 20));
  EXPECT_LT(allocated(nemo), 16u << 20);
  EXPECT_EQ(sparse_map(nemo), map_before);
  {
    Mount m(nemo, tmp / "mnt2", {"-o", "ro"});
    ASSERT_TRUE(m.ok()) << m.result().err;
    EXPECT_EQ(pread_str(m.path() + "/model_config.yaml", 0, 100), "model:\n  lr: 0.05\n");
    EXPECT_EQ(pread_str(m.path() + "/big.bin", k8G - 4096, 8192), want_8g);
    EXPECT_EQ(pread_str(m.path() + "/big.bin", kLogical - 4096, 4096), want_end);
  }
}
