// Properties every tree must have, whatever the format (hardening issue):
// - every file's bytes can be read in full: inspect never lists what a read cannot deliver;
// - a tensor file's size is product(shape) x dtype bits / 8, as its sidecar says;
// - every zero-copy extent lies inside the real file it names.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include "formats/core/tensor.h"
#include "formats/detect/checkpoint.h"
#include "tests/common/manifest_check.h"

using namespace nemofs;
using namespace nemofs::testing;

class TreeProperties : public ::testing::TestWithParam<std::string> {};

TEST_P(TreeProperties, EveryFileReadableTensorsSizedExtentsInside) {
  Checkpoint cp = open_checkpoint(data_path("real/" + GetParam()));
  size_t files = 0, tensors = 0;
  cp.tree.walk([&](NodeId id, const Node& n) {
    if (n.type != NodeType::File) return;
    ++files;
    std::string path = cp.tree.path_of(id);
    uint64_t size = n.data->size();
    std::string buf(size, '\0');
    ASSERT_EQ(n.data->read_at(0, buf.data(), size), size) << path;
    char extra;
    EXPECT_EQ(n.data->read_at(size, &extra, 1), 0u) << path;
    if (size > 0) {
      if (auto fr = n.data->file_range(0, size)) {
        struct stat st {};
        ASSERT_EQ(::fstat(fr->fd, &st), 0);
        EXPECT_LE(fr->offset + size, static_cast<uint64_t>(st.st_size)) << path;
      }
    }
    auto side = cp.tree.lookup(n.parent, n.name + ".json");
    if (!side) return;
    const auto& s = *cp.tree.node(*side).data;
    std::string text(s.size(), '\0');
    s.read_at(0, text.data(), text.size());
    auto j = nlohmann::json::parse(text, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("dtype") || !j.contains("shape")) return;
    ++tensors;
    auto dt = dtype_by_name(j["dtype"].get<std::string>());
    ASSERT_TRUE(dt) << path << " dtype " << j["dtype"];
    std::vector<uint64_t> shape = j["shape"].get<std::vector<uint64_t>>();
    EXPECT_EQ(tensor_nbytes(*dt, shape, "test", std::nullopt), size) << path;
    EXPECT_EQ(j["nbytes"].get<uint64_t>(), size) << path;
  });
  EXPECT_GT(files, 0u);
  std::printf("%s: %zu files, %zu tensors\n", GetParam().c_str(), files, tensors);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, TreeProperties,
                         ::testing::Values("nemo/asr_ctc.nemo", "nemo/asr_ctc_legacy_gz.nemo", "nemo/megatron_gpt.nemo",
                                           "safetensors/zoo.safetensors", "hf/tiny-llama", "torch/zoo.pt",
                                           "torch/nested.pt", "torch/legacy.pt", "lightning/tiny.ckpt",
                                           "dcp/single", "dcp/sharded_1d", "dcp/sharded_2d", "dcp/fsdp2_adam",
                                           "lightning/model_parallel.ckpt"),
                         [](const auto& info) {
                           std::string s = info.param;
                           for (char& c : s)
                             if (!isalnum(static_cast<unsigned char>(c))) c = '_';
                           return s;
                         });
