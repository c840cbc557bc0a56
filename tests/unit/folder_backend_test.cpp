// The folder backend without FUSE (SEMANTICS section 9): listing only sniffs, a view is indexed
// once on first access even when many threads race to it, a changed checkpoint gets a new view
// under new inode numbers and the old one answers ESTALE / EIO, a damaged one is left out with
// one warning; and the sniff that decides which entries get a view.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <thread>

#include "formats/detect/folder.h"
#include "fs/backends/folder_backend.h"
#include "tests/common/manifest_check.h"
#include "tests/unit/backend_util.h"

using namespace nemofs;
using namespace nemofs::testing;
namespace sfs = std::filesystem;

namespace {

struct Dir {
  std::string path;
  Dir() {
    char tmpl[] = "/tmp/nemofs-folder-XXXXXX";
    path = ::mkdtemp(tmpl);
  }
  ~Dir() { sfs::remove_all(path); }
  std::string operator/(const std::string& rel) const { return path + "/" + rel; }
};

std::vector<std::string> names(FolderBackend& b, Ino ino) {
  std::vector<std::string> out;
  b.readdir(ino, 0, [&](const DirEntryOut& e, uint64_t) {
    if (e.name != "." && e.name != "..") out.push_back(e.name);
    return true;
  });
  return out;
}

int err_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const SysError& e) {
    return e.err();
  }
  return 0;
}

}  // namespace

TEST(FolderSniff, DecidesViewsByContent) {
  Dir d;
  sfs::copy_file(data_path("real/safetensors/zoo.safetensors"), d / "weights.bin");  // any name
  sfs::copy_file(data_path("real/torch/zoo.pt"), d / "zoo.pt");
  sfs::copy_file(data_path("real/nemo/asr_ctc_legacy_gz.nemo"), d / "old.nemo");
  ASSERT_EQ(std::system(("echo hello | gzip > " + (d / "log.gz")).c_str()), 0);
  ASSERT_EQ(std::system(("printf 'a: 1\\n' > " + (d / "a.yaml") + " && touch " + (d / "empty.ckpt")).c_str()), 0);
  sfs::create_directory(d / "hf");
  sfs::copy_file(data_path("real/safetensors/zoo.safetensors"), d / "hf/model.safetensors");
  sfs::create_directory(d / "plain");
  std::vector<std::string> warnings;
  auto entries = list_folder(d.path, sniff_folder_entry, &warnings);
  std::vector<std::string> got;
  for (const auto& e : entries) got.push_back(e.name);
  EXPECT_EQ(got, (std::vector<std::string>{"a.yaml", "empty.ckpt", "hf", "hf.tensors", "log.gz", "old.nemo",
                                           "old.nemo.tensors", "plain", "weights.bin", "weights.bin.tensors", "zoo.pt",
                                           "zoo.pt.tensors"}));
  EXPECT_TRUE(warnings.empty());
  // A real entry that already has the view's name wins, with a warning.
  sfs::create_directory(d / "zoo.pt.tensors");
  entries = list_folder(d.path, sniff_folder_entry, &warnings);
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("zoo.pt: no .tensors view"), std::string::npos) << warnings[0];
  size_t views = 0;
  for (const auto& e : entries) views += e.kind == FolderEntry::Kind::View;
  EXPECT_EQ(views, 3u);
  EXPECT_TRUE(is_plain_folder(d.path));
  EXPECT_FALSE(is_plain_folder(d / "hf"));
}

TEST(FolderBackend, ListingIndexesNothingAndTheFirstAccessIndexesOnceUnderRaces) {
  Dir d;
  for (int i = 0; i < 8; ++i) sfs::copy_file(data_path("real/torch/zoo.pt"), d / ("c" + std::to_string(i) + ".pt"));
  std::vector<std::string> warned;
  FolderBackend b(d.path, getuid(), getgid(), [&](const std::string& w) { warned.push_back(w); });
  EXPECT_EQ(names(b, kRootIno).size(), 16u);
  EXPECT_EQ(b.views_built(), 0u);
  // getattr of a listed view root does not index it either.
  Entry root = b.lookup(kRootIno, "c0.pt");
  (void)root;
  EXPECT_EQ(b.views_built(), 0u);
  // 16 threads look up the same view at once: one index.
  std::atomic<Ino> seen{0};
  std::atomic<int> mismatches{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < 16; ++t)
    ts.emplace_back([&] {
      Ino ino = b.lookup(kRootIno, "c1.pt.tensors").attr.st_ino;
      Ino expected = 0;
      if (!seen.compare_exchange_strong(expected, ino) && expected != ino) ++mismatches;
    });
  for (auto& t : ts) t.join();
  EXPECT_EQ(mismatches.load(), 0);
  EXPECT_EQ(b.views_built(), 1u);
  EXPECT_TRUE(warned.empty()) << warned[0];
}

TEST(FolderBackend, AChangedCheckpointGetsANewViewAndTheOldOneAnswersStaleOrEio) {
  Dir d;
  sfs::copy_file(data_path("real/safetensors/zoo.safetensors"), d / "w.safetensors");
  FolderBackend b(d.path, getuid(), getgid(), nullptr);
  Entry v1 = b.lookup(kRootIno, "w.safetensors.tensors");
  std::string first_name;
  Ino first_file = 0;
  b.readdir(v1.attr.st_ino, 0, [&](const DirEntryOut& e, uint64_t) {
    if (first_file == 0 && S_ISREG(e.attr.st_mode) && e.attr.st_size > 0) {
      first_name = e.name;
      first_file = e.attr.st_ino;
    }
    return true;
  });
  ASSERT_NE(first_file, 0u);
  b.open(first_file, O_RDONLY);
  std::string bytes = read_all(b, first_file);
  EXPECT_FALSE(bytes.empty());
  // Replace the file by another checkpoint (rename over it).
  sfs::copy_file(data_path("real/hf/tiny-llama/model-00001-of-00003.safetensors"), d / "tmp");
  sfs::rename(d / "tmp", d / "w.safetensors");
  // The open of a file of the old view notices and answers ESTALE; then the old view is retired.
  EXPECT_EQ(err_of([&] { b.open(first_file, O_RDONLY); }), ESTALE);
  EXPECT_EQ(err_of([&] { read_all(b, first_file); }), EIO);
  EXPECT_EQ(err_of([&] { b.getattr(first_file); }), ESTALE);
  // The view's folder keeps its number; a look inside indexes the new file, whose nodes get new
  // numbers.
  Checkpoint alone = open_checkpoint(d / "w.safetensors");
  std::vector<std::string> want;
  for (const auto& [n, id] : alone.tree.node(Tree::kRoot).children) want.push_back(n);
  EXPECT_EQ(names(b, v1.attr.st_ino), want);
  EXPECT_EQ(b.views_built(), 2u);
  Entry v2 = b.lookup(kRootIno, "w.safetensors.tensors");
  EXPECT_EQ(v2.attr.st_ino, v1.attr.st_ino);
  Entry again = b.lookup(v2.attr.st_ino, first_name);
  EXPECT_NE(again.attr.st_ino, first_file);
  EXPECT_EQ(b.views_built(), 2u);
}

TEST(FolderBackend, ADamagedCheckpointWarnsOnceAndItsViewIsLeftOut) {
  Dir d;
  std::string good = read_whole_file(data_path("real/lightning/tiny.ckpt"));
  {
    std::FILE* f = std::fopen((d / "bad.ckpt").c_str(), "wb");
    std::fwrite(good.data(), 1, good.size() / 2, f);
    std::fclose(f);
  }
  std::vector<std::string> warned;
  FolderBackend b(d.path, getuid(), getgid(), [&](const std::string& w) { warned.push_back(w); });
  EXPECT_EQ(names(b, kRootIno), (std::vector<std::string>{"bad.ckpt", "bad.ckpt.tensors"}));
  EXPECT_EQ(err_of([&] { b.lookup(kRootIno, "bad.ckpt.tensors"); }), ENOENT);
  EXPECT_EQ(err_of([&] { b.lookup(kRootIno, "bad.ckpt.tensors"); }), ENOENT);
  EXPECT_EQ(names(b, kRootIno), (std::vector<std::string>{"bad.ckpt"}));
  ASSERT_EQ(warned.size(), 1u);
  EXPECT_EQ(warned[0].rfind("bad.ckpt: no .tensors view: ", 0), 0u) << warned[0];
  // Repaired: the view comes back.
  {
    std::FILE* f = std::fopen((d / "bad.ckpt").c_str(), "wb");
    std::fwrite(good.data(), 1, good.size(), f);
    std::fclose(f);
  }
  EXPECT_EQ(names(b, kRootIno), (std::vector<std::string>{"bad.ckpt", "bad.ckpt.tensors"}));
  EXPECT_NO_THROW(b.lookup(kRootIno, "bad.ckpt.tensors"));
}
