// Distributed checkpoint fixtures (plain DCP, FSDP2, 2-D mesh, Lightning ModelParallelStrategy,
// the torch_dist folder inside a Megatron .nemo) checked against manifest.json through
// open_checkpoint.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "formats/dcp/sharded.h"
#include "formats/detect/checkpoint.h"
#include "tests/common/manifest_check.h"

using namespace nemofs;
using namespace nemofs::testing;

namespace {

void expect_matches(const std::string& file) {
  auto cp = open_checkpoint(data_path("real/" + file));
  EXPECT_EQ(cp.format, Format::Dcp);
  auto bad = check_tensors_and_values(tree_view(cp.tree), fixture(file));
  EXPECT_TRUE(bad.empty()) << file << ":\n" << ::testing::PrintToString(bad);
  EXPECT_TRUE(cp.warnings.empty()) << ::testing::PrintToString(cp.warnings);
}

nlohmann::json sidecar(const Tree& t, const std::string& path) {
  auto bytes = tree_view(t).read_file(path + ".json");
  EXPECT_TRUE(bytes.has_value()) << path;
  return bytes ? nlohmann::json::parse(*bytes) : nlohmann::json();
}

}  // namespace

TEST(DcpFixture, SingleMatchesManifest) { expect_matches("dcp/single"); }
TEST(DcpFixture, Sharded1dMatchesManifest) { expect_matches("dcp/sharded_1d"); }
TEST(DcpFixture, Sharded2dMatchesManifest) { expect_matches("dcp/sharded_2d"); }
TEST(DcpFixture, Fsdp2AdamMatchesManifest) { expect_matches("dcp/fsdp2_adam"); }
TEST(DcpFixture, LightningModelParallelMatchesManifest) { expect_matches("lightning/model_parallel.ckpt"); }

TEST(DcpFixture, MegatronNemoTensorViewMatchesManifest) {
  auto cp = open_checkpoint(data_path("real/nemo/megatron_gpt.nemo"));
  auto bad = check_against_manifest(tree_view(cp.tree), fixture("nemo/megatron_gpt.nemo"));
  EXPECT_TRUE(bad.empty()) << ::testing::PrintToString(bad);
  EXPECT_TRUE(cp.warnings.empty()) << ::testing::PrintToString(cp.warnings);
  // common.pt is merged into the view, as Megatron's loader merges the common state.
  EXPECT_TRUE(cp.tree.resolve("model_weights.tensors/optimizer.json"));
}

TEST(DcpFixture, ShardedSidecarListsChunks) {
  auto cp = open_checkpoint(data_path("real/dcp/sharded_2d"));
  auto s = sidecar(cp.tree, "model/embed.weight");
  EXPECT_EQ(s.at("source"), "dcp");
  EXPECT_EQ(s.at("fqn"), "model.embed.weight");
  EXPECT_EQ(s.at("chunks").size(), 4u);
  for (const auto& c : s.at("chunks")) EXPECT_EQ(c.at("sizes"), nlohmann::json({5, 3}));
}

TEST(DcpFixture, LightningMetaPtIsMerged) {
  auto cp = open_checkpoint(data_path("real/lightning/model_parallel.ckpt"));
  EXPECT_TRUE(cp.tree.resolve("epoch.json"));
  EXPECT_TRUE(cp.tree.resolve("global_step.json"));
}

TEST(DcpFixture, OracleSeesAWrongView) {
  // The oracle must be able to fail: the 1-D checkpoint is not the FSDP2 one.
  auto cp = open_checkpoint(data_path("real/dcp/sharded_1d"));
  EXPECT_FALSE(check_tensors_and_values(tree_view(cp.tree), fixture("dcp/fsdp2_adam")).empty());
}
