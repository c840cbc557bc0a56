// Folders of checkpoints (issue 20, SEMANTICS section 9): a NeMo 2.0 checkpoint directory, a
// Lightning experiment folder, a folder mixing kinds, a damaged checkpoint among good ones, and
// files replaced while mounted. Every real file must read byte-identical with its size, mode (write
// bits removed) and mtime; every `<name>.tensors/` view must equal mounting that checkpoint alone,
// and where the fixture has a manifest, match it (an oracle independent of nemofs).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <set>
#include <thread>

#include <nlohmann/json.hpp>

#include "tests/common/manifest_check.h"
#include "tests/mount/mount_util.h"

using namespace nemofs::testing;
namespace fs = std::filesystem;

namespace {

void sh(const std::string& script) {
  auto r = run_shell("set -e; " + script);
  ASSERT_EQ(r.status, 0) << script << "\n" << r.err;
}

// path -> "dir" or "file:<bytes>" for everything below `root`; `skip_views` leaves out the
// `.tensors` entries a folder mount adds (names that do not exist in `real`).
std::map<std::string, std::string> snapshot(const std::string& root, const std::string& real = "") {
  std::map<std::string, std::string> out;
  for (auto it = fs::recursive_directory_iterator(root); it != fs::recursive_directory_iterator(); ++it) {
    std::string rel = it->path().lexically_relative(root).generic_string();
    if (!real.empty() && !fs::exists(fs::symlink_status(real + "/" + rel))) {
      it.disable_recursion_pending();  // a view: compared on its own
      continue;
    }
    if (it->is_symlink()) {
      out[rel] = "link:" + fs::read_symlink(it->path()).string();
      it.disable_recursion_pending();
    } else if (it->is_directory()) {
      out[rel] = "dir";
    } else {
      out[rel] = "file:" + sha256_hex(read_whole_file(it->path().string()));
    }
  }
  return out;
}

// Every real file and folder of `src` shows in `mp` as it is: bytes, size, mode without write
// bits, mtime.
void expect_passthrough(const std::string& src, const std::string& mp) {
  EXPECT_EQ(snapshot(mp, src), snapshot(src));
  for (auto it = fs::recursive_directory_iterator(src); it != fs::recursive_directory_iterator(); ++it) {
    std::string rel = it->path().lexically_relative(src).generic_string();
    struct stat a {}, b {};
    ASSERT_EQ(::lstat(it->path().c_str(), &a), 0);
    ASSERT_EQ(::lstat((mp + "/" + rel).c_str(), &b), 0) << rel;
    EXPECT_EQ(b.st_mode, S_ISLNK(a.st_mode) ? a.st_mode : a.st_mode & ~0222u) << rel;
    EXPECT_EQ(b.st_mtim.tv_sec, a.st_mtim.tv_sec) << rel;
    EXPECT_EQ(b.st_mtim.tv_nsec, a.st_mtim.tv_nsec) << rel;
    if (S_ISREG(a.st_mode)) {
      EXPECT_EQ(b.st_size, a.st_size) << rel;
    }
  }
}

// The view `<rel>.tensors` in the folder mount equals mounting `<src>/<rel>` alone.
void expect_view_equals_alone(const std::string& src, const std::string& mp, const std::string& rel) {
  TempDir tmp;
  Mount alone(src + "/" + rel, tmp / "alone", {"-o", "ro"});
  ASSERT_TRUE(alone.ok()) << rel << ": " << alone.result().err;
  auto a = snapshot(alone.path());
  ASSERT_FALSE(a.empty()) << rel;
  EXPECT_EQ(snapshot(mp + "/" + rel + ".tensors"), a) << rel;
}

std::vector<std::string> ls(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

bool has(const std::vector<std::string>& v, const std::string& s) { return std::find(v.begin(), v.end(), s) != v.end(); }

// A NeMo 2.0 checkpoint directory: context/ (model.yaml, io.json, tokenizer) + weights/ (the
// Megatron torch_dist checkpoint of the megatron_gpt fixture).
void make_nemo2(const std::string& dir) {
  sh("mkdir -p " + dir + "/context " + dir + "/x && tar -xf " + data_path("real/nemo/megatron_gpt.nemo") + " -C " +
     dir + "/x && mv " + dir + "/x/model_weights " + dir + "/weights && mv " + dir + "/x/model_config.yaml " + dir +
     "/context/model.yaml && rmdir " + dir + "/x && cp " + data_path("real/nemo/replacement_tokenizer.model") + " " +
     dir + "/context/tokenizer.model && printf '{\"root\": {\"type\": \"ref\"}}\\n' > " + dir +
     "/context/io.json && chmod 0640 " + dir + "/context/io.json");
}

}  // namespace

TEST(FolderMount, NemoTwoCheckpointDirectory) {
  NEMOFS_REQUIRE_FUSE();
  TempDir tmp;
  std::string src = tmp / "step=1000";
  make_nemo2(src);
  // The folder alone is still not a checkpoint a plain mount knows, but mounts as a folder.
  Mount m(src, tmp / "mnt");
  ASSERT_TRUE(m.ok()) << m.result().err;
  EXPECT_EQ(ls(m.path()), (std::vector<std::string>{"context", "weights", "weights.tensors"}));
  expect_passthrough(src, m.path());
  expect_view_equals_alone(src, m.path(), "weights");
  // The manifest of the .nemo the folder was made from is the oracle: its members moved
  // (model_weights/ -> weights/, model_config.yaml -> context/model.yaml) and its view
  // model_weights.tensors/ -> weights.tensors/.
  View moved{[&](const std::string& p) -> std::optional<std::string> {
    std::string q = p;
    for (auto [from, to] : {std::pair<std::string, std::string>{"model_weights.tensors/", "weights.tensors/"},
                            {"model_weights/", "weights/"},
                            {"model_config.yaml", "context/model.yaml"}})
      if (q.rfind(from, 0) == 0) q = to + q.substr(from.size());
    try {
      return read_whole_file(m.path() + "/" + q);
    } catch (...) {
      return std::nullopt;
    }
  }};
  auto bad = check_against_manifest(moved, fixture("nemo/megatron_gpt.nemo"));
  EXPECT_TRUE(bad.empty()) << ::testing::PrintToString(bad);
  // inspect lists what the mount shows.
  auto r = run({nemofs_bin(), "inspect", "--json", src});
  ASSERT_EQ(r.status, 0) << r.err;
  auto doc = nlohmann::json::parse(r.out);
  EXPECT_EQ(doc["format"], "folder");
  std::set<std::string> paths;
  for (const auto& e : doc["entries"]) paths.insert(e["path"].get<std::string>());
  std::set<std::string> shown;
  for (auto it = fs::recursive_directory_iterator(m.path()); it != fs::recursive_directory_iterator(); ++it)
    shown.insert(it->path().lexically_relative(m.path()).generic_string());
  EXPECT_EQ(paths, shown);
  auto u = m.umount();
  EXPECT_EQ(u.status, 0) << u.err;
}

TEST(FolderMount, LightningExperimentFolder) {
  NEMOFS_REQUIRE_FUSE();
  TempDir tmp;
  std::string src = tmp / "exp";
  std::string ck = src + "/lightning_logs/version_0/checkpoints";
  sh("mkdir -p " + ck + " && printf 'lr: 0.001\\nbatch_size: 4\\n' > " + src +
     "/lightning_logs/version_0/hparams.yaml && cp " + data_path("real/lightning/tiny.ckpt") + " '" + ck +
     "/epoch=0-step=10.ckpt' && cp " + data_path("real/lightning/tiny.ckpt") + " " + ck + "/last.ckpt && cp -r " +
     data_path("real/lightning/model_parallel.ckpt") + " " + ck + "/model_parallel.ckpt && touch " + src +
     "/lightning_logs/version_0/events.out.tfevents.1 && ln -s last.ckpt " + ck + "/best.ckpt");
  Mount m(src, tmp / "mnt");
  ASSERT_TRUE(m.ok()) << m.result().err;
  std::string mck = m.path() + "/lightning_logs/version_0/checkpoints";
  EXPECT_EQ(ls(mck), (std::vector<std::string>{"best.ckpt", "best.ckpt.tensors", "epoch=0-step=10.ckpt",
                                                "epoch=0-step=10.ckpt.tensors", "last.ckpt", "last.ckpt.tensors",
                                                "model_parallel.ckpt", "model_parallel.ckpt.tensors"}));
  expect_passthrough(src, m.path());
  for (const char* c : {"epoch=0-step=10.ckpt", "last.ckpt", "model_parallel.ckpt"})
    expect_view_equals_alone(src, m.path(), std::string("lightning_logs/version_0/checkpoints/") + c);
  auto bad = check_against_manifest(dir_view(mck + "/last.ckpt.tensors"), fixture("lightning/tiny.ckpt"));
  EXPECT_TRUE(bad.empty()) << ::testing::PrintToString(bad);
  bad = check_against_manifest(dir_view(mck + "/model_parallel.ckpt.tensors"), fixture("lightning/model_parallel.ckpt"));
  EXPECT_TRUE(bad.empty()) << ::testing::PrintToString(bad);
  // A link to a checkpoint stays a link; its view shows its target.
  EXPECT_EQ(fs::read_symlink(mck + "/best.ckpt").string(), "last.ckpt");
  EXPECT_EQ(snapshot(mck + "/best.ckpt.tensors"), snapshot(mck + "/last.ckpt.tensors"));
  // Empty and unknown files have no view.
  EXPECT_FALSE(fs::exists(m.path() + "/lightning_logs/version_0/hparams.yaml.tensors"));
  EXPECT_FALSE(fs::exists(m.path() + "/lightning_logs/version_0/events.out.tfevents.1.tensors"));
}

TEST(FolderMount, MixedNemoSafetensorsAndHfFolder) {
  NEMOFS_REQUIRE_FUSE();
  TempDir tmp;
  std::string src = tmp / "mix";
  sh("mkdir -p " + src + " && cp " + data_path("real/nemo/asr_ctc.nemo") + " " + src + "/model.nemo && cp " +
     data_path("real/nemo/asr_ctc_legacy_gz.nemo") + " " + src + "/old.nemo && cp " +
     data_path("real/safetensors/zoo.safetensors") + " " + src + "/zoo.safetensors && cp -r " +
     data_path("real/hf/tiny-llama") + " " + src + "/tiny-llama && cp " + data_path("real/torch/legacy.pt") + " " +
     src + "/legacy.pt && echo notes > " + src + "/notes.txt && echo '{\"a\": 1}' | gzip > " + src + "/log.json.gz");
  Mount m(src, tmp / "mnt");
  ASSERT_TRUE(m.ok()) << m.result().err;
  auto top = ls(m.path());
  for (const char* v : {"model.nemo.tensors", "old.nemo.tensors", "zoo.safetensors.tensors", "tiny-llama.tensors",
                        "legacy.pt.tensors"})
    EXPECT_TRUE(has(top, v)) << v;
  // A gzip file that is not a tar, and text, get no view.
  EXPECT_FALSE(has(top, "log.json.gz.tensors"));
  EXPECT_FALSE(has(top, "notes.txt.tensors"));
  expect_passthrough(src, m.path());
  for (const char* c : {"model.nemo", "old.nemo", "zoo.safetensors", "tiny-llama", "legacy.pt"})
    expect_view_equals_alone(src, m.path(), c);
  // A nested .nemo shows its members, with their own views, as a .nemo mount does.
  auto bad = check_against_manifest(dir_view(m.path() + "/model.nemo.tensors"), fixture("nemo/asr_ctc.nemo"));
  EXPECT_TRUE(bad.empty()) << ::testing::PrintToString(bad);
  bad = check_against_manifest(dir_view(m.path() + "/zoo.safetensors.tensors"), fixture("safetensors/zoo.safetensors"));
  EXPECT_TRUE(bad.empty()) << ::testing::PrintToString(bad);
  bad = check_against_manifest(dir_view(m.path() + "/tiny-llama.tensors"), fixture("hf/tiny-llama"));
  EXPECT_TRUE(bad.empty()) << ::testing::PrintToString(bad);
  // Each shard of the HF folder is itself a safetensors file, and gets a view (as in a .nemo).
  EXPECT_TRUE(fs::is_directory(m.path() + "/tiny-llama/model-00001-of-00003.safetensors.tensors"));
  // Read-only.
  int fd = ::open((m.path() + "/notes.txt").c_str(), O_WRONLY);
  EXPECT_LT(fd, 0);
  EXPECT_EQ(errno, EROFS);
  if (fd >= 0) ::close(fd);
}

TEST(FolderMount, DamagedCheckpointAmongGoodOnes) {
  NEMOFS_REQUIRE_FUSE();
  TempDir tmp;
  std::string src = tmp / "runs";
  sh("mkdir -p " + src + " && cp " + data_path("real/lightning/tiny.ckpt") + " " + src + "/good.ckpt && head -c 6000 " +
     data_path("real/lightning/tiny.ckpt") + " > " + src + "/bad.ckpt && cp " +
     data_path("real/safetensors/zoo.safetensors") + " " + src + "/good.safetensors");
  Mount m(src, tmp / "mnt");
  ASSERT_TRUE(m.ok()) << m.result().err;
  // The first look at the damaged view finds it absent (ENOENT); from then on the listing leaves
  // it out, while the file itself stays visible and byte-identical.
  struct stat st {};
  EXPECT_NE(::stat((m.path() + "/bad.ckpt.tensors").c_str(), &st), 0);
  EXPECT_EQ(errno, ENOENT);
  EXPECT_EQ(ls(m.path()), (std::vector<std::string>{"bad.ckpt", "good.ckpt", "good.ckpt.tensors", "good.safetensors",
                                                    "good.safetensors.tensors"}));
  expect_passthrough(src, m.path());
  expect_view_equals_alone(src, m.path(), "good.ckpt");
  expect_view_equals_alone(src, m.path(), "good.safetensors");
  // One warning, naming the file, in the mount's status.
  auto r = run({nemofs_bin(), "status", "--json"});
  ASSERT_EQ(r.status, 0) << r.err;
  size_t warnings = 0;
  for (const auto& e : nlohmann::json::parse(r.out))
    if (e["mountpoint"] == m.path() && e.contains("warnings"))
      for (const auto& w : e["warnings"]) {
        ++warnings;
        EXPECT_EQ(w.get<std::string>().rfind("bad.ckpt: no .tensors view: ", 0), 0u) << w;
      }
  EXPECT_EQ(warnings, 1u);
  // inspect: the same tree, the same warning.
  auto ins = run({nemofs_bin(), "inspect", "--json", src});
  ASSERT_EQ(ins.status, 0) << ins.err;
  auto doc = nlohmann::json::parse(ins.out);
  ASSERT_EQ(doc["warnings"].size(), 1u);
  for (const auto& e : doc["entries"]) EXPECT_NE(e["path"], "bad.ckpt.tensors");
}

TEST(FolderMount, FilesReplacedAddedAndRemovedWhileMounted) {
  NEMOFS_REQUIRE_FUSE();
  TempDir tmp;
  std::string src = tmp / "live";
  sh("mkdir -p " + src + " && cp " + data_path("real/safetensors/zoo.safetensors") + " " + src +
     "/w.safetensors && cp " + data_path("real/lightning/tiny.ckpt") + " " + src + "/gone.ckpt");
  Mount m(src, tmp / "mnt");
  ASSERT_TRUE(m.ok()) << m.result().err;
  std::string view = m.path() + "/w.safetensors.tensors";
  auto before = snapshot(view);
  ASSERT_FALSE(before.empty());
  // Hold a file of the old view open across the change.
  std::string some;
  for (const auto& [p, v] : before)
    if (v.rfind("file:", 0) == 0 && p.find(".json") == std::string::npos && fs::file_size(view + "/" + p) > 0)
      some = p;
  ASSERT_FALSE(some.empty());
  int old_fd = ::open((view + "/" + some).c_str(), O_RDONLY);
  ASSERT_GE(old_fd, 0);

  // Replace w.safetensors by another checkpoint (rename over it), add one, remove one.
  sh("cp " + data_path("real/hf/tiny-llama/model-00001-of-00003.safetensors") + " " + src + "/.w.tmp && mv " + src +
     "/.w.tmp " + src + "/w.safetensors && cp " + data_path("real/torch/zoo.pt") + " " + src + "/new.pt && rm " + src +
     "/gone.ckpt");
  std::this_thread::sleep_for(std::chrono::milliseconds(1300));  // past the 1 s name cache
  EXPECT_EQ(ls(m.path()), (std::vector<std::string>{"new.pt", "new.pt.tensors", "w.safetensors", "w.safetensors.tensors"}));
  expect_passthrough(src, m.path());
  expect_view_equals_alone(src, m.path(), "w.safetensors");
  expect_view_equals_alone(src, m.path(), "new.pt");
  EXPECT_NE(snapshot(view), before);
  // The file opened from the old view never gets bytes of the old index from the server again:
  // what the kernel cached of it is dropped, and the read that goes to nemofs answers EIO.
  ASSERT_EQ(::posix_fadvise(old_fd, 0, 0, POSIX_FADV_DONTNEED), 0);
  char buf[16];
  ssize_t n = ::pread(old_fd, buf, sizeof buf, 0);
  EXPECT_EQ(n, -1);
  EXPECT_EQ(errno, EIO);
  ::close(old_fd);

  // Rewritten in place (same inode, same size, other bytes): the view follows too.
  std::string w = src + "/w.safetensors";
  std::string bytes = read_whole_file(w);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  sh("cp " + data_path("real/hf/tiny-llama/model-00002-of-00003.safetensors") + " " + src + "/x.tmp");
  std::string other = read_whole_file(src + "/x.tmp");
  ::unlink((src + "/x.tmp").c_str());
  {
    int fd = ::open(w.c_str(), O_WRONLY | O_TRUNC);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::write(fd, other.data(), other.size()), static_cast<ssize_t>(other.size()));
    ::close(fd);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(1300));
  EXPECT_EQ(read_whole_file(m.path() + "/w.safetensors"), other);
  expect_view_equals_alone(src, m.path(), "w.safetensors");
}

TEST(FolderMount, ACheckpointFolderStillMountsAsItsCheckpoint) {
  // A folder that is itself one checkpoint (HF, DCP) keeps mounting as that checkpoint.
  auto r = run({nemofs_bin(), "inspect", "--json", data_path("real/hf/tiny-llama")});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out)["format"], "hf-safetensors-dir");
}
