// `nemofs export` and the `-o safetensors` mount view, black box through the built binary: every
// real fixture exported and read back with the strict parser, stdout, selection paths, refusals,
// ENOSPC on a small tmpfs, and the mount view byte-identical to the export.
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <dirent.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <thread>

#include "formats/core/errors.h"
#include "formats/detect/checkpoint.h"
#include "formats/safetensors/safetensors.h"
#include "formats/safetensors/safetensors_writer.h"
#include "tests/common/manifest_check.h"
#include "tests/common/torch_writer.h"
#include "tests/mount/mount_util.h"

namespace nemofs::testing {
namespace {

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f << bytes;
  ASSERT_TRUE(f.good()) << path;
}

std::vector<std::string> list_dir(const std::string& dir) {
  std::vector<std::string> out;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (auto* e = ::readdir(d))
      if (std::string(e->d_name) != "." && std::string(e->d_name) != "..") out.push_back(e->d_name);
    ::closedir(d);
  }
  return out;
}

std::vector<std::string> keys_of(const std::string& file) {
  FileSource src(file);
  std::vector<std::string> keys;
  for (const auto& t : parse_safetensors(src).tensors) keys.push_back(t.name);
  std::sort(keys.begin(), keys.end());
  return keys;
}

class ExportCli : public ::testing::TestWithParam<std::string> {};

// The file the CLI writes parses strictly, holds the manifest's tensors (the unit tier compares
// them key by key), and stdout gives the same bytes.
TEST_P(ExportCli, WritesAStrictSafetensorsFile) {
  TempDir tmp;
  std::string src = data_path("real/" + GetParam());
  auto r = run({nemofs_bin(), "export", src, tmp / "out.safetensors"});
  ASSERT_EQ(r.status, 0) << r.err;
  std::string bytes = read_whole_file(tmp / "out.safetensors");
  FileSource f(tmp / "out.safetensors");
  SafetensorsHeader h = parse_safetensors(f);
  EXPECT_FALSE(h.tensors.empty());
  // The library's layout of the same tree (checked against the manifest in the unit tier).
  auto cp = open_checkpoint(src);
  auto img = make_safetensors(
      tree_tensors(cp.tree, default_export_dir(cp.tree, cp.format == Format::Tar || cp.format == Format::GzipTar)),
      default_safetensors_metadata());
  EXPECT_EQ(bytes.size(), img->size());
  EXPECT_TRUE(bytes == read_exact(*img, 0, img->size(), "test"));
  auto s = run_shell("'" + nemofs_bin() + "' export '" + src + "' - > '" + (tmp / "stdout.safetensors") + "'");
  ASSERT_EQ(s.status, 0) << s.err;
  EXPECT_TRUE(read_whole_file(tmp / "stdout.safetensors") == bytes);
  struct stat st {};
  ASSERT_EQ(::stat((tmp / "out.safetensors").c_str(), &st), 0);
  mode_t mask = ::umask(0);
  ::umask(mask);
  EXPECT_EQ(st.st_mode & 0777, static_cast<mode_t>(0666 & ~mask));
  EXPECT_EQ(list_dir(tmp.path()).size(), 2u) << "a temp file was left behind";
}

INSTANTIATE_TEST_SUITE_P(Real, ExportCli, ::testing::ValuesIn(all_fixture_files()),
                         [](const auto& info) { return fixture_test_name(info.param); });

TEST(Export, SelectFolders) {
  TempDir tmp;
  std::string ckpt = data_path("real/lightning/tiny.ckpt");
  auto r = run({nemofs_bin(), "export", ckpt, tmp / "sd.safetensors", "--select", "state_dict"});
  ASSERT_EQ(r.status, 0) << r.err;
  auto keys = keys_of(tmp / "sd.safetensors");
  ASSERT_FALSE(keys.empty());
  for (const auto& k : keys) EXPECT_EQ(k.find("state_dict"), std::string::npos) << k;
  EXPECT_NE(std::find(keys.begin(), keys.end(), "l1.weight"), keys.end());
  // The whole tree: keys keep their folder path, dots between components.
  r = run({nemofs_bin(), "export", ckpt, tmp / "all.safetensors"});
  ASSERT_EQ(r.status, 0) << r.err;
  auto all = keys_of(tmp / "all.safetensors");
  EXPECT_NE(std::find(all.begin(), all.end(), "state_dict.l1.weight"), all.end());
  EXPECT_GT(all.size(), keys.size());  // optimizer states too
  // A .nemo member view chosen explicitly, and the archive root.
  std::string nemo = data_path("real/nemo/asr_ctc.nemo");
  r = run({nemofs_bin(), "export", nemo, tmp / "v.safetensors", "--select=model_weights.ckpt.tensors/"});
  ASSERT_EQ(r.status, 0) << r.err;
  r = run({nemofs_bin(), "export", nemo, tmp / "d.safetensors"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_TRUE(read_whole_file(tmp / "v.safetensors") == read_whole_file(tmp / "d.safetensors"));
  r = run({nemofs_bin(), "export", nemo, tmp / "root.safetensors", "--select", "/"});
  ASSERT_EQ(r.status, 0) << r.err;
  auto root = keys_of(tmp / "root.safetensors");
  ASSERT_FALSE(root.empty());
  EXPECT_EQ(root[0].rfind("model_weights.ckpt.tensors.", 0), 0u) << root[0];
}

TEST(Export, BadPathsAndArgumentsAreRefused) {
  TempDir tmp;
  std::string ckpt = data_path("real/lightning/tiny.ckpt");
  for (const char* sel : {"nope", "state_dict/l1.weight", "state_dict/../x"}) {
    auto r = run({nemofs_bin(), "export", ckpt, tmp / "x.safetensors", "--select", sel});
    EXPECT_EQ(r.status, 1) << sel;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  }
  EXPECT_EQ(run({nemofs_bin(), "export", ckpt}).status, 1);
  EXPECT_EQ(run({nemofs_bin(), "export", ckpt, tmp.path()}).status, 1);  // DEST a folder
  EXPECT_EQ(run({nemofs_bin(), "export", tmp / "missing", tmp / "x.safetensors"}).status, 2);
  EXPECT_EQ(run({nemofs_bin(), "export", ckpt, tmp / "no/such/dir/x.safetensors"}).status, 5);
  EXPECT_TRUE(list_dir(tmp.path()).empty());
}

TEST(Export, CollidingKeysAreRefused) {
  TempDir tmp;
  // {"a": {"b": t}, "a.b": t}: both would be the key "a.b".
  PickleBuilder p;
  p.proto(2).op('}').str("a").op('}').str("b").tensor_v2("FloatStorage", "0", 2, 0, {2}, {1}).op('s').op('s');
  p.str("a.b").tensor_v2("FloatStorage", "0", 2, 0, {2}, {1}).op('s').stop();
  write_file(tmp / "c.pt", torch_save_zip(p.s, {{"0", std::string(8, '\1')}}));
  auto r = run({nemofs_bin(), "export", tmp / "c.pt", tmp / "c.safetensors"});
  EXPECT_EQ(r.status, 3) << r.err;
  EXPECT_NE(r.err.find("two tensors would have the key \"a.b\""), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_EQ(list_dir(tmp.path()).size(), 1u);
  // Each on its own exports.
  EXPECT_EQ(run({nemofs_bin(), "export", tmp / "c.pt", tmp / "a.safetensors", "--select", "a"}).status, 0);
}

TEST(Export, NoSpaceLeavesNoFile) {
  if (::geteuid() != 0) GTEST_SKIP() << "mounting a tmpfs needs root";
  TempDir tmp;
  // A 3 MiB source, a 1 MiB filesystem.
  std::vector<SafetensorsInput> in{{"w", "U8", {3u << 20}, std::make_shared<MemorySource>(std::string(3u << 20, 'x')), "w"}};
  auto img = make_safetensors(in, default_safetensors_metadata());
  write_file(tmp / "big.safetensors", read_exact(*img, 0, img->size(), "test"));
  std::string small = tmp / "small";
  ::mkdir(small.c_str(), 0755);
  if (::mount("tmpfs", small.c_str(), "tmpfs", 0, "size=1m") != 0) GTEST_SKIP() << "cannot mount a tmpfs here";
  auto r = run({nemofs_bin(), "export", tmp / "big.safetensors", small + "/out.safetensors"});
  auto r2 = run({nemofs_bin(), "export", tmp / "big.safetensors", small + "/out.safetensors", "--no-sync"});
  auto left = list_dir(small);
  ::umount2(small.c_str(), MNT_DETACH);
  EXPECT_EQ(r.status, 5) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_NE(r.err.find("nothing was written"), std::string::npos) << r.err;
  EXPECT_EQ(r2.status, 5) << r2.err;  // without the sync the full disk is still seen (at the write)
  EXPECT_TRUE(left.empty()) << left.size() << " file(s) left on the full filesystem";
}

// --no-sync writes the same bytes through the same temp file + rename, and only skips the syncs:
// seen in the system calls the exporter makes (strace), not in timings.
TEST(Export, NoSyncSkipsOnlyTheSync) {
  if (::access("/usr/bin/strace", X_OK) != 0) GTEST_SKIP() << "strace is not installed (scripts/install-deps.sh)";
  TempDir tmp;
  std::string src = data_path("real/nemo/asr_ctc.nemo");
  auto syncs = [&](const std::string& log) {
    std::string t = read_whole_file(log);
    size_t n = 0;
    for (const char* call : {"fdatasync(", "fsync("})
      for (size_t at = t.find(call); at != std::string::npos; at = t.find(call, at + 1)) ++n;
    return n;
  };
  // LeakSanitizer cannot run under ptrace: a sanitizer build's exporter runs without it here.
  const char* asan = ::getenv("ASAN_OPTIONS");
  std::string env = std::string("ASAN_OPTIONS=") + (asan && *asan ? std::string(asan) + ":" : "") + "detect_leaks=0";
  auto r = run({"/usr/bin/env", env, "/usr/bin/strace", "-f", "-qq", "-e", "trace=fdatasync,fsync", "-o",
                tmp / "sync.log", nemofs_bin(), "export", src, tmp / "a.safetensors"});
  ASSERT_EQ(r.status, 0) << r.err;
  r = run({"/usr/bin/env", env, "/usr/bin/strace", "-f", "-qq", "-e", "trace=fdatasync,fsync", "-o",
           tmp / "nosync.log", nemofs_bin(), "export", src, tmp / "b.safetensors", "--no-sync"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_GE(syncs(tmp / "sync.log"), 2u) << read_whole_file(tmp / "sync.log");  // the file, then its folder
  EXPECT_EQ(syncs(tmp / "nosync.log"), 0u) << read_whole_file(tmp / "nosync.log");
  EXPECT_TRUE(read_whole_file(tmp / "a.safetensors") == read_whole_file(tmp / "b.safetensors"));
  auto left = list_dir(tmp.path());
  EXPECT_EQ(left.size(), 4u) << "a temp file was left behind";
}

// The mount view: the same bytes as the export, for a plain checkpoint and inside a .nemo's
// `<member>.tensors/` view.
TEST(SafetensorsView, ByteIdenticalToExport) {
  NEMOFS_REQUIRE_FUSE();
  TempDir tmp;
  struct Case {
    std::string src, view;
  };
  for (const Case& c : {Case{"real/dcp/sharded_2d", "model.safetensors"},
                        Case{"real/torch/nested.pt", "model.safetensors"},
                        Case{"real/nemo/asr_ctc.nemo", "model_weights.ckpt.tensors/model.safetensors"},
                        Case{"real/nemo/asr_ctc_legacy_gz.nemo", "model_weights.ckpt.tensors/model.safetensors"},
                        Case{"real/nemo/megatron_gpt.nemo", "model_weights.tensors/model.safetensors"}}) {
    SCOPED_TRACE(c.src);
    std::string src = data_path(c.src);
    auto r = run({nemofs_bin(), "export", src, tmp / "e.safetensors"});
    ASSERT_EQ(r.status, 0) << r.err;
    Mount m(src, tmp / "mp", {"-o", "ro,safetensors"});
    ASSERT_TRUE(m.ok()) << m.result().err;
    EXPECT_TRUE(read_whole_file(m.path() + "/" + c.view) == read_whole_file(tmp / "e.safetensors"));
    {
      FileSource view(m.path() + "/" + c.view);  // closed before the umount (an open file keeps it busy)
      EXPECT_NO_THROW(parse_safetensors(view));
    }
    ASSERT_EQ(m.umount().status, 0);
  }
  // Without the option nothing changes.
  Mount plain(data_path("real/dcp/sharded_2d"), tmp / "mp2");
  ASSERT_TRUE(plain.ok()) << plain.result().err;
  struct stat st {};
  EXPECT_NE(::stat((plain.path() + "/model.safetensors").c_str(), &st), 0);
}

TEST(SafetensorsView, CheckpointEntryOfThatNameWins) {
  NEMOFS_REQUIRE_FUSE();
  TempDir tmp;
  std::vector<SafetensorsInput> in{{"model.safetensors", "U8", {3}, std::make_shared<MemorySource>("abc"), ""},
                                   {"w", "U8", {1}, std::make_shared<MemorySource>("z"), ""}};
  auto img = make_safetensors(in, default_safetensors_metadata());
  write_file(tmp / "s.safetensors", read_exact(*img, 0, img->size(), "test"));
  Mount m(tmp / "s.safetensors", tmp / "mp", {"-o", "ro,safetensors"});
  ASSERT_TRUE(m.ok()) << m.result().err;
  EXPECT_NE(m.result().err.find("model.safetensors: the checkpoint has an entry of that name"), std::string::npos)
      << m.result().err;
  EXPECT_EQ(read_whole_file(m.path() + "/model.safetensors"), "abc");
}

// A folder of checkpoints (SEMANTICS section 9): each checkpoint's view gets the file(s) a mount
// of it alone shows, built lazily with the view's index; a checkpoint replaced while mounted gets
// a new one.
TEST(SafetensorsView, FolderOfCheckpointsGetsOnePerView) {
  NEMOFS_REQUIRE_FUSE();
  TempDir tmp;
  std::string dir = tmp / "run";
  auto r = run_shell("mkdir -p '" + dir + "/sub' && cp '" + data_path("real/nemo/asr_ctc.nemo") + "' '" + dir +
                     "/a.nemo' && cp -r '" + data_path("real/dcp/sharded_2d") + "' '" + dir + "/sub/weights' && cp '" +
                     data_path("real/torch/nested.pt") + "' '" + dir + "/w.pt' && echo hi > '" + dir + "/notes.txt'");
  ASSERT_EQ(r.status, 0) << r.err;
  struct Case {
    std::string ckpt, view;
  };
  const std::vector<Case> cases{{"a.nemo", "a.nemo.tensors/model_weights.ckpt.tensors/model.safetensors"},
                                {"sub/weights", "sub/weights.tensors/model.safetensors"},
                                {"w.pt", "w.pt.tensors/model.safetensors"}};
  auto exported = [&](const std::string& ckpt) {
    auto e = run({nemofs_bin(), "export", dir + "/" + ckpt, tmp / "e.safetensors"});
    EXPECT_EQ(e.status, 0) << e.err;
    return read_whole_file(tmp / "e.safetensors");
  };
  {
    Mount m(dir, tmp / "mp", {"-o", "ro,safetensors"});
    ASSERT_TRUE(m.ok()) << m.result().err;
    // Nothing but the views' own files: the folder's listing is unchanged.
    auto top = list_dir(m.path());
    std::sort(top.begin(), top.end());
    EXPECT_EQ(top, (std::vector<std::string>{"a.nemo", "a.nemo.tensors", "notes.txt", "sub", "w.pt", "w.pt.tensors"}));
    for (const auto& c : cases) {
      SCOPED_TRACE(c.view);
      std::string want = exported(c.ckpt);
      ASSERT_FALSE(want.empty());
      EXPECT_TRUE(read_whole_file(m.path() + "/" + c.view) == want);
      FileSource view(m.path() + "/" + c.view);
      EXPECT_NO_THROW(parse_safetensors(view));
    }
    // Replaced while mounted: the view is indexed again, with a model.safetensors of the new file.
    r = run_shell("cp '" + data_path("real/torch/zoo.pt") + "' '" + dir + "/.w.tmp' && mv '" + dir + "/.w.tmp' '" +
                  dir + "/w.pt'");
    ASSERT_EQ(r.status, 0) << r.err;
    std::this_thread::sleep_for(std::chrono::milliseconds(1300));  // past the 1 s name cache
    std::string want = exported("w.pt");
    EXPECT_TRUE(read_whole_file(m.path() + "/w.pt.tensors/model.safetensors") == want);
    EXPECT_EQ(m.umount().status, 0);
  }
  // Without the option nothing changes.
  Mount plain(dir, tmp / "mp2");
  ASSERT_TRUE(plain.ok()) << plain.result().err;
  struct stat st {};
  EXPECT_NE(::stat((plain.path() + "/w.pt.tensors/model.safetensors").c_str(), &st), 0);
  EXPECT_EQ(::stat((plain.path() + "/w.pt.tensors").c_str(), &st), 0);
}

TEST(SafetensorsView, WritableNemoNeedsRo) {
  NEMOFS_REQUIRE_FUSE();
  TempDir tmp;
  std::string copy = tmp / "m.nemo";
  write_file(copy, read_whole_file(data_path("real/nemo/megatron_gpt.nemo")));
  Mount m(copy, tmp / "mp", {"-o", "safetensors"});
  EXPECT_EQ(m.result().status, 1) << m.result().err;
}

}  // namespace
}  // namespace nemofs::testing
