// Commits on a reflink filesystem (XFS made by the test on a loop device): after edits that keep,
// grow and shrink the config by 1 to 9 blocks, a tokenizer swap, a new member and a deleted
// member, every member extracts right with CPython's tarfile, GNU tar and bsdtar (compared with a
// folder the same edits were applied to), and the filesystem's used space grows by no more than
// the edited bytes plus 2 MiB: the unchanged 32 MiB member shares its blocks with a reflink
// snapshot of the archive taken before each commit instead of being copied.
//
// Needs root, losetup/loop devices and mkfs.xfs (xfsprogs): skipped with a message otherwise.
#include <gtest/gtest.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include "tests/common/manifest_check.h"
#include "tests/mount/mount_util.h"
#include "tests/mount/writable_util.h"

using namespace nemofs::testing;

namespace {

constexpr uint64_t kBig = 32u << 20;  // the unchanged member that must be shared, not copied

uint64_t used_bytes(const std::string& dir) {
  sync();
  struct statvfs s {};
  if (::statvfs(dir.c_str(), &s) != 0) return 0;
  return (s.f_blocks - s.f_bfree) * s.f_frsize;
}

// An XFS filesystem with reflink on a loop device, mounted for the test suite's lifetime.
class XfsImage {
 public:
  XfsImage() {
    if (::geteuid() != 0) {
      why_ = "not root";
      return;
    }
    if (run_shell("command -v mkfs.xfs && command -v losetup").status != 0) {
      why_ = "mkfs.xfs or losetup missing (xfsprogs, mount)";
      return;
    }
    std::string img = dir_ / "xfs.img";
    mnt_ = dir_ / "mnt";
    std::filesystem::create_directories(mnt_);
    auto r = run_shell("truncate -s 512M " + img + " && mkfs.xfs -q -m reflink=1 " + img + " && mount -o loop " + img +
                       " " + mnt_);
    if (r.status != 0) {
      why_ = "cannot make or mount an XFS loop image: " + r.err;
      return;
    }
    mounted_ = true;
  }
  ~XfsImage() {
    if (mounted_) run({"umount", mnt_});
  }
  const std::string& skip_reason() const { return why_; }
  const std::string& path() const { return mnt_; }

 private:
  TempDir dir_;
  std::string mnt_, why_;
  bool mounted_ = false;
};

}  // namespace

TEST(ReflinkCommit, EditsShareUnchangedBlocksAndEveryReaderAgrees) {
  NEMOFS_REQUIRE_FUSE();
  XfsImage xfs;
  if (!xfs.skip_reason().empty()) GTEST_SKIP() << "XFS reflink commit test skipped: " << xfs.skip_reason();
  const std::string fs = xfs.path();
  const std::string nemo = fs + "/model.nemo";
  TempDir shm;  // the model folder and the readers' extractions (the test's own temp area)
  const std::string model = shm / "model";
  // The real fixture's members, then 32 MiB of random bytes, as NeMo's tarfile writes a .nemo.
  auto made = run({"/usr/bin/python3", "-c",
                   "import io, random, sys, tarfile\n"
                   "src = tarfile.open(sys.argv[1])\n"
                   "out = tarfile.open(sys.argv[2], 'w:', format=tarfile.PAX_FORMAT)\n"
                   "for m in src.getmembers(): out.addfile(m, src.extractfile(m) if m.isfile() else None)\n"
                   "big = random.Random(7).randbytes(int(sys.argv[3]))\n"
                   "ti = tarfile.TarInfo('./zz_big.bin'); ti.size = len(big)\n"
                   "out.addfile(ti, io.BytesIO(big)); out.close()\n"
                   "tarfile.open(sys.argv[2]).extractall(sys.argv[4])\n",
                   data_path("real/nemo/asr_ctc.nemo"), nemo, std::to_string(kBig), model});
  ASSERT_EQ(made.status, 0) << made.err;

  struct Step {
    std::string what;
    std::string edit;       // shell, run in the mount and in the model folder alike
    uint64_t edited_bytes;  // bytes the edit writes (new member data)
  };
  const std::string cfg = kConfig.substr(2);
  std::vector<Step> steps;
  steps.push_back({"same size", "sed -i 's/sample_rate: 16000/sample_rate: 22050/' " + cfg, 8192});
  for (int k = 1; k <= 9; ++k) {
    // k blocks of 512 bytes more: 8 lines of 64 bytes each.
    steps.push_back({"grow by " + std::to_string(k) + " blocks",
                     "for i in $(seq " + std::to_string(8 * k) + "); do printf '# %061d\\n' $i >> " + cfg + "; done",
                     8192 + 512u * k});
  }
  steps.push_back({"shrink by 7 blocks", "truncate -s -3584 " + cfg, 8192});
  steps.push_back({"shrink by 1 block and a bit", "truncate -s -700 " + cfg, 8192});
  steps.push_back({"tokenizer swap", "cp " + data_path("real/nemo/replacement_tokenizer.model") + " " + kTokModel.substr(2),
                   static_cast<uint64_t>(std::filesystem::file_size(data_path("real/nemo/replacement_tokenizer.model")))});
  steps.push_back({"new member", "head -c 5000 /dev/zero | tr '\\0' 'n' > added.txt", 5000});
  steps.push_back({"deleted member", "rm " + kVocabTxt.substr(2), 0});

  for (const Step& s : steps) {
    SCOPED_TRACE(s.what);
    ASSERT_EQ(run_shell("cp --reflink=always " + nemo + " " + fs + "/snapshot").status, 0);
    const uint64_t before = used_bytes(fs);
    {
      Mount m(nemo, shm / "mnt");
      ASSERT_TRUE(m.ok()) << m.result().err;
      auto e = run_shell("cd " + m.path() + " && " + s.edit);
      ASSERT_EQ(e.status, 0) << e.err;
      auto u = m.umount();
      ASSERT_EQ(u.status, 0) << u.err;
      // "(33.8 MB, 33.6 MB shared, in 0.0 s)": the big member at least was shared.
      const std::string said = u.out + u.err;
      EXPECT_NE(said.find(" shared, in "), std::string::npos) << said;
      EXPECT_EQ(said.find(", 0 bytes shared"), std::string::npos) << said;
    }
    const uint64_t after = used_bytes(fs);
    EXPECT_LE(after, before + s.edited_bytes + (2u << 20))
        << "the commit took " << (after - before) << " bytes of new disk space (a full copy: " << kBig << "+)";
    ASSERT_EQ(run_shell("cd " + model + " && " + s.edit).status, 0);
    // Every reader extracts exactly the model folder.
    auto r = run_shell(
        "set -e; d=" + shm.path() + "; rm -rf $d/py $d/gnu $d/bsd; mkdir $d/py $d/gnu $d/bsd\n"
        "/usr/bin/python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' " + nemo + " $d/py\n"
        "tar -xf " + nemo + " -C $d/gnu\n"
        "bsdtar -xf " + nemo + " -C $d/bsd\n"
        "diff -r " + model + " $d/py && diff -r " + model + " $d/gnu && diff -r " + model + " $d/bsd\n",
        300);
    EXPECT_EQ(r.status, 0) << r.out << r.err;
    std::filesystem::remove(fs + "/snapshot");
  }
}
