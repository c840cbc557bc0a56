// torch.save zip / legacy / Lightning fixtures and the .nemo tensor view, checked against
// manifest.json through open_checkpoint (what `nemofs inspect` and the mount show).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "formats/detect/checkpoint.h"
#include "tests/common/manifest_check.h"

using namespace nemofs;
using namespace nemofs::testing;

namespace {

void expect_matches(const std::string& file, Format want_format) {
  auto cp = open_checkpoint(data_path("real/" + file));
  EXPECT_EQ(cp.format, want_format);
  auto bad = check_against_manifest(tree_view(cp.tree), fixture(file));
  EXPECT_TRUE(bad.empty()) << file << ":\n" << ::testing::PrintToString(bad);
  EXPECT_TRUE(cp.warnings.empty()) << ::testing::PrintToString(cp.warnings);
}

nlohmann::json sidecar(const Tree& t, const std::string& path) {
  auto bytes = tree_view(t).read_file(path + ".json");
  EXPECT_TRUE(bytes.has_value()) << path;
  return bytes ? nlohmann::json::parse(*bytes) : nlohmann::json();
}

}  // namespace

TEST(TorchFixture, ZooMatchesManifest) { expect_matches("torch/zoo.pt", Format::TorchZip); }
TEST(TorchFixture, NestedMatchesManifest) { expect_matches("torch/nested.pt", Format::TorchZip); }
TEST(TorchFixture, LegacyMatchesManifest) { expect_matches("torch/legacy.pt", Format::TorchLegacy); }
TEST(TorchFixture, LightningMatchesManifest) { expect_matches("lightning/tiny.ckpt", Format::TorchZip); }

TEST(TorchFixture, LightningShowsEveryTopLevelKey) {
  auto cp = open_checkpoint(data_path("real/lightning/tiny.ckpt"));
  for (const auto& k : fixture("lightning/tiny.ckpt").at("keys")) {
    std::string key = k.get<std::string>();
    EXPECT_TRUE(cp.tree.resolve(key) || cp.tree.resolve(key + ".json")) << key;
  }
}

TEST(TorchFixture, AsrNemoTensorViewMatchesManifest) {
  auto cp = open_checkpoint(data_path("real/nemo/asr_ctc.nemo"));
  auto bad = check_tensors_and_values(tree_view(cp.tree), fixture("nemo/asr_ctc.nemo"));
  EXPECT_TRUE(bad.empty()) << ::testing::PrintToString(bad);
  size_t n = 0;
  for (const auto& [path, t] : fixture("nemo/asr_ctc.nemo").at("tensors").items())
    if (path.rfind("model_weights.ckpt.tensors/", 0) == 0) ++n;
  EXPECT_GT(n, 10u);
  EXPECT_TRUE(cp.warnings.empty()) << ::testing::PrintToString(cp.warnings);
}

TEST(TorchFixture, ContiguousTensorsAreZeroCopyThroughTheTar) {
  auto cp = open_checkpoint(data_path("real/nemo/asr_ctc.nemo"));
  auto id = cp.tree.resolve("model_weights.ckpt.tensors/preprocessor.featurizer.fb");
  ASSERT_TRUE(id);
  const auto& src = *cp.tree.node(*id).data;
  auto fr = src.file_range(0, src.size());
  ASSERT_TRUE(fr.has_value());
  // The bytes at that range of the .nemo file are the tensor's bytes.
  std::string all = read_whole_file(data_path("real/nemo/asr_ctc.nemo"));
  std::string via_tree = *tree_view(cp.tree).read_file("model_weights.ckpt.tensors/preprocessor.featurizer.fb");
  EXPECT_EQ(all.substr(fr->offset, src.size()), via_tree);
  EXPECT_EQ(fr->offset % 64, 0u);  // torch aligns storages to 64 bytes; the tar keeps it mod 512
}

TEST(TorchFixture, ZooSidecarsDescribeTheStoredForm) {
  auto cp = open_checkpoint(data_path("real/torch/zoo.pt"));
  auto t = sidecar(cp.tree, "view.transposed");
  EXPECT_EQ(t["source"], "torch-zip");
  EXPECT_EQ(t["stride"], nlohmann::json::parse("[1, 10]"));
  EXPECT_EQ(t["contiguous"], false);
  auto s = sidecar(cp.tree, "view.slice");
  EXPECT_EQ(s["storage_offset"], 30);
  EXPECT_EQ(s["contiguous"], true);
  EXPECT_EQ(s["storage"], t["storage"]);  // same storage, shared
  auto e = sidecar(cp.tree, "expanded");
  EXPECT_EQ(e["stride"], nlohmann::json::parse("[0, 1]"));
  auto f8 = sidecar(cp.tree, "model.w_float8_e4m3fn");
  EXPECT_EQ(f8["torch_dtype"], "float8_e4m3fn");
  // Zero-copy where contiguous, gathered otherwise.
  auto id = cp.tree.resolve("view.slice");
  ASSERT_TRUE(id);
  EXPECT_TRUE(cp.tree.node(*id).data->file_range(0, 160).has_value());
  auto tid = cp.tree.resolve("view.transposed");
  EXPECT_FALSE(cp.tree.node(*tid).data->file_range(0, 480).has_value());
}

TEST(TorchFixture, StridedReadsAtAnyOffsetAgreeWithWholeReads) {
  auto cp = open_checkpoint(data_path("real/torch/zoo.pt"));
  for (const char* name : {"view.transposed", "view.column", "channels_last", "expanded", "model.w_f16"}) {
    auto id = cp.tree.resolve(name);
    ASSERT_TRUE(id) << name;
    const auto& src = *cp.tree.node(*id).data;
    std::string whole(src.size(), '\0');
    ASSERT_EQ(src.read_at(0, whole.data(), whole.size()), whole.size());
    for (uint64_t off = 0; off < src.size(); off += 7) {
      for (size_t len : {1u, 3u, 5u, 64u, 1000u}) {
        std::string part(len, '\0');
        size_t got = src.read_at(off, part.data(), len);
        ASSERT_EQ(got, std::min<uint64_t>(len, src.size() - off));
        ASSERT_EQ(part.substr(0, got), whole.substr(off, got)) << name << " at " << off << "+" << len;
      }
    }
    char c;
    EXPECT_EQ(src.read_at(src.size(), &c, 1), 0u);
  }
}

TEST(TorchFixture, NestedValuesRenderAsJson) {
  auto cp = open_checkpoint(data_path("real/torch/nested.pt"));
  auto v = tree_view(cp.tree);
  EXPECT_EQ(nlohmann::json::parse(*v.read_file("tuple.json")), nlohmann::json::parse(R"([1, "a", null])"));
  EXPECT_TRUE(cp.tree.resolve("list_of_tensors/0"));
}
