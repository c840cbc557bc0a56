// .nemo (plain tar) over the real fixtures, checked against manifest.json, plus tar defect cases.
#include <gtest/gtest.h>

#include "formats/core/errors.h"
#include "formats/detect/checkpoint.h"
#include "tests/common/manifest_check.h"

using namespace nemofs;
using namespace nemofs::testing;

TEST(NemoFixture, AsrCtcMembersMatchManifest) {
  auto cp = open_checkpoint(data_path("real/nemo/asr_ctc.nemo"));
  EXPECT_EQ(cp.format, Format::Tar);
  auto bad = check_files(tree_view(cp.tree), fixture("nemo/asr_ctc.nemo"));
  EXPECT_TRUE(bad.empty()) << ::testing::PrintToString(bad);
}

TEST(NemoFixture, MegatronMembersMatchManifest) {
  auto cp = open_checkpoint(data_path("real/nemo/megatron_gpt.nemo"));
  auto bad = check_files(tree_view(cp.tree), fixture("nemo/megatron_gpt.nemo"));
  EXPECT_TRUE(bad.empty()) << ::testing::PrintToString(bad);
}
