// open_folder_files (formats/detect/folder.h): a folder of checkpoints given as a set of objects, as a
// remote prefix or repository that is no single checkpoint mounts (SEMANTICS sections 9 and 11).
// Here over in-memory sets holding the real fixtures' bytes: every view must be the tree a mount
// of that checkpoint alone shows (open_checkpoint of the local file), whatever the object keys.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>

#include "formats/core/errors.h"
#include "formats/detect/checkpoint.h"
#include "formats/detect/folder.h"
#include "tests/common/manifest_check.h"
#include "tests/common/mem_file_set.h"

namespace nemofs {
namespace {

using testing::data_path;
using testing::MemFileSet;

// Counts reads: which objects were looked into.
class CountingSource final : public ByteSource {
 public:
  explicit CountingSource(std::string bytes) : mem_(std::move(bytes)) {}
  uint64_t size() const override { return mem_.size(); }
  size_t read_at(uint64_t off, void* buf, size_t len) const override {
    ++reads;
    return mem_.read_at(off, buf, len);
  }
  std::string describe() const override { return "counting"; }
  mutable std::atomic<int> reads{0};

 private:
  MemorySource mem_;
};

// A source whose reads fail as a server that went away does.
class FailingSource final : public ByteSource {
 public:
  uint64_t size() const override { return 4096; }
  size_t read_at(uint64_t, void*, size_t) const override { throw SysError(EIO, "mem://run/x: HTTP 503 server error"); }
  std::string describe() const override { return "failing"; }
};

// A fixture's bytes (tests/data/real/REL).
std::string slurp(const std::string& rel) {
  std::ifstream f(data_path("real/" + rel), std::ios::binary);
  if (!f) throw std::runtime_error("cannot read fixture " + rel);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

SourcePtr fixture(const std::string& rel) { return std::make_shared<MemorySource>(slurp(rel), rel); }

// path -> "dir" or "file SIZE HEAD" (the first bytes: enough to tell tensors apart) below `from`.
std::map<std::string, std::string> listing(const Tree& t, NodeId from = Tree::kRoot) {
  std::map<std::string, std::string> out;
  const std::string base = t.path_of(from);
  t.walk(
      [&](NodeId id, const Node& n) {
        if (id == from) return;
        std::string p = t.path_of(id);
        if (!base.empty()) p = p.substr(base.size() + 1);
        if (n.type == NodeType::Dir) {
          out[p] = "dir";
        } else {
          std::string head(std::min<uint64_t>(n.data->size(), 64), '\0');
          n.data->read_at(0, head.data(), head.size());
          out[p] = "file " + std::to_string(n.data->size()) + " " + head;
        }
      },
      from);
  return out;
}

std::shared_ptr<MemFileSet> run_folder() {
  auto set = std::make_shared<MemFileSet>();
  set->sources["tiny.ckpt"] = fixture("lightning/tiny.ckpt");
  set->sources["zoo.pt"] = fixture("torch/zoo.pt");
  set->sources["zoo.safetensors"] = fixture("safetensors/zoo.safetensors");
  set->sources["asr_ctc.nemo"] = fixture("nemo/asr_ctc.nemo");
  set->sources["step=1000/weights/.metadata"] = fixture("dcp/single/.metadata");
  set->sources["step=1000/weights/__0_0.distcp"] = fixture("dcp/single/__0_0.distcp");
  set->sources["step=1000/context/model.yaml"] = std::make_shared<MemorySource>("model:\n  hidden_size: 8\n");
  set->sources["notes.pt"] = std::make_shared<MemorySource>("named like a torch file, but text\n");
  set->sources["broken.ckpt"] = std::make_shared<MemorySource>(std::string("PK\x03\x04", 4) + std::string(200, '\0'));
  return set;
}

TEST(FolderFiles, EveryViewIsTheCheckpointAlone) {
  auto set = run_folder();
  Checkpoint cp = open_folder_files(set, false, 4);
  EXPECT_EQ(cp.format, Format::Folder);
  auto all = listing(cp.tree);
  // Every object is a file, byte for byte.
  for (const auto& [rel, src] : set->sources) {
    ASSERT_TRUE(all.count(rel)) << rel;
    EXPECT_EQ(all[rel].substr(0, 5), "file ") << rel;
  }
  // Each view is what the checkpoint shows when it is opened alone.
  const std::vector<std::pair<std::string, std::string>> views = {
      {"tiny.ckpt", "lightning/tiny.ckpt"},          {"zoo.pt", "torch/zoo.pt"},
      {"zoo.safetensors", "safetensors/zoo.safetensors"}, {"asr_ctc.nemo", "nemo/asr_ctc.nemo"},
      {"step=1000/weights", "dcp/single"}};
  for (const auto& [rel, local] : views) {
    auto id = cp.tree.resolve(rel + ".tensors");
    ASSERT_TRUE(id) << rel;
    Checkpoint alone = open_checkpoint(data_path("real/" + local), /*writable=*/false);
    EXPECT_EQ(listing(cp.tree, *id), listing(alone.tree)) << rel;
    EXPECT_GT(listing(alone.tree).size(), 1u) << rel;
  }
  // Named like a checkpoint but text: no view, no warning. Damaged: no view, one warning.
  EXPECT_FALSE(cp.tree.resolve("notes.pt.tensors"));
  EXPECT_FALSE(cp.tree.resolve("broken.ckpt.tensors"));
  EXPECT_FALSE(cp.tree.resolve("step=1000.tensors"));  // context/ + weights/: not itself a checkpoint
  ASSERT_EQ(cp.warnings.size(), 1u);
  EXPECT_EQ(cp.warnings[0].rfind("broken.ckpt: no .tensors view: ", 0), 0u) << cp.warnings[0];
}

TEST(FolderFiles, SameTreeWhateverTheThreads) {
  auto one = open_folder_files(run_folder(), false, 1);
  auto many = open_folder_files(run_folder(), false, 8);
  EXPECT_EQ(listing(one.tree), listing(many.tree));
  EXPECT_EQ(one.warnings, many.warnings);
}

TEST(FolderFiles, OnlyCheckpointNamesAreRead) {
  auto set = std::make_shared<MemFileSet>();
  auto log = std::make_shared<CountingSource>(slurp("torch/zoo.pt"));  // a torch file, named as a log
  auto yaml = std::make_shared<CountingSource>("a: 1\n");
  auto ckpt = std::make_shared<CountingSource>(slurp("torch/zoo.pt"));
  set->sources["events.out"] = log;
  set->sources["cfg/model.yaml"] = yaml;
  set->sources["last.ckpt"] = ckpt;
  Checkpoint cp = open_folder_files(set, false, 2);
  EXPECT_EQ(log->reads.load(), 0);
  EXPECT_EQ(yaml->reads.load(), 0);
  EXPECT_GT(ckpt->reads.load(), 0);
  EXPECT_TRUE(cp.tree.resolve("last.ckpt.tensors"));
  EXPECT_FALSE(cp.tree.resolve("events.out.tensors"));
  for (const char* n : {".nemo", ".ckpt", ".pt", ".pth", ".bin", ".safetensors"}) EXPECT_TRUE(checkpoint_object_name(std::string("x") + n)) << n;
  for (const char* n : {".pt", "x.yaml", "x.distcp", "x.pt.bak", "x.json"}) EXPECT_FALSE(checkpoint_object_name(n)) << n;
}

TEST(FolderFiles, HostileKeysAreLeftOutWithAWarning) {
  auto set = std::make_shared<MemFileSet>();
  for (const char* k : {"../escape.pt", "a/../../b", "./x", "a//b", "trailing/", "ok.txt", "dir", "dir/inner.txt"})
    set->sources[k] = std::make_shared<MemorySource>("x");
  Checkpoint cp = open_folder_files(set, false, 2);
  auto all = listing(cp.tree);
  // Keys come sorted: "dir" (a file) is added before "dir/inner.txt", which would need a folder of
  // that name: left out.
  EXPECT_EQ(all, (std::map<std::string, std::string>{{"dir", "file 1 x"}, {"ok.txt", "file 1 x"}}));
  std::string joined;
  for (const auto& w : cp.warnings) joined += w + "\n";
  for (const char* k : {"../escape.pt", "a/../../b", "./x", "a//b", "trailing/"})
    EXPECT_NE(joined.find(std::string(k) + ": not shown (not a relative path)"), std::string::npos) << joined;
  EXPECT_NE(joined.find("dir/inner.txt: not shown (a file and a folder of the same name)"), std::string::npos) << joined;
  EXPECT_EQ(cp.warnings.size(), 6u) << joined;
}

TEST(FolderFiles, AFailingSourceFailsTheWhole) {
  auto set = run_folder();
  set->sources["zz.ckpt"] = std::make_shared<FailingSource>();
  EXPECT_THROW(open_folder_files(set, false, 4), SysError);
  EXPECT_THROW(open_folder_files(set, false, 1), SysError);
}

TEST(FolderFiles, SafetensorsViewPerCheckpoint) {
  Checkpoint cp = open_folder_files(run_folder(), true, 3);
  for (const char* v : {"zoo.pt.tensors/model.safetensors", "tiny.ckpt.tensors/model.safetensors",
                        "step=1000/weights.tensors/model.safetensors"})
    EXPECT_TRUE(cp.tree.resolve(v)) << v;
  EXPECT_FALSE(cp.tree.resolve("model.safetensors"));  // none for the folder itself
}

}  // namespace
}  // namespace nemofs
