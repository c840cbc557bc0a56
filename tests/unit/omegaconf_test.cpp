// OmegaConf configs and pickled nn.Modules (tests/data/omegaconf): what the tree shows against
// what omegaconf and torch themselves said when gen.py made the fixtures (expected.json):
// <key>.json = OmegaConf.to_container(resolve=False, enums by name) with key order kept,
// <key>.yaml = OmegaConf.to_yaml byte for byte, tensor files = module.state_dict().
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "formats/core/errors.h"
#include "formats/detect/checkpoint.h"
#include "formats/pickle/pickle.h"
#include "tests/common/manifest_check.h"

using namespace nemofs;
using namespace nemofs::testing;

namespace {

nlohmann::ordered_json expected_json() {
  return nlohmann::ordered_json::parse(read_whole_file(data_path("omegaconf/expected.json")));
}

std::vector<std::string> check_fixture(const std::string& dir, const std::string& file,
                                       const nlohmann::ordered_json& want) {
  std::vector<std::string> bad;
  auto cp = open_checkpoint(dir + "/" + file);
  View view = tree_view(cp.tree);
  for (const auto& [path, value] : want.at("values").items()) {
    auto got = view.read_file(path);
    if (!got) {
      bad.push_back(file + ": " + path + " is missing");
      continue;
    }
    if (path.size() > 5 && path.substr(path.size() - 5) == ".yaml") {
      if (*got != value.get<std::string>())
        bad.push_back(file + ": " + path + " differs from OmegaConf.to_yaml:\n--- got\n" + *got + "--- want\n" +
                      value.get<std::string>());
    } else {
      auto j = nlohmann::ordered_json::parse(*got);
      if (j != value)  // ordered_json: key order counts
        bad.push_back(file + ": " + path + " is " + j.dump() + ", to_container gives " + value.dump());
    }
  }
  for (const auto& path : want.at("absent"))
    if (view.read_file(path.get<std::string>())) bad.push_back(file + ": " + path.get<std::string>() + " should not exist");
  nlohmann::json tensors_only = {{"tensors", nlohmann::json::parse(want.at("tensors").dump())},
                                 {"values", nlohmann::json::object()}};
  for (auto& b : check_tensors_and_values(view, tensors_only)) bad.push_back(file + ": " + b);
  if (!cp.warnings.empty()) bad.push_back(file + ": warnings: " + ::testing::PrintToString(cp.warnings));
  return bad;
}

}  // namespace

TEST(OmegaConf, FixturesShowWhatOmegaConfAndTorchSay) {
  auto want = expected_json();
  for (const auto& [file, f] : want.at("fixtures").items()) {
    auto bad = check_fixture(data_path("omegaconf"), file, f);
    EXPECT_TRUE(bad.empty()) << ::testing::PrintToString(bad);
  }
}

// Re-runs gen.py with Debian's torch and omegaconf when they are importable and compares the fresh
// checkpoints with what they say now (guards against fixtures that drifted from the generator).
TEST(OmegaConf, GeneratorAgreesWhenTorchIsInstalled) {
  if (std::system("/usr/bin/python3 -c 'import torch, omegaconf' >/dev/null 2>&1") != 0)
    GTEST_SKIP() << "python3-torch / python3-omegaconf not installed: fresh generation not checked "
                    "(the committed fixtures are checked by FixturesShowWhatOmegaConfAndTorchSay)";
  auto dir = std::filesystem::temp_directory_path() / ("nemofs-omegaconf-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  std::string cmd = "/usr/bin/python3 " + data_path("omegaconf/gen.py") + " " + dir.string();
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  auto want = nlohmann::ordered_json::parse(read_whole_file((dir / "expected.json").string()));
  for (const auto& [file, f] : want.at("fixtures").items()) {
    auto bad = check_fixture(dir.string(), file, f);
    EXPECT_TRUE(bad.empty()) << ::testing::PrintToString(bad);
  }
  std::filesystem::remove_all(dir);
}

TEST(OmegaConf, MalformedConfigsStayInert) {
  // A DictConfig without _content renders as any other inert object and gets no YAML.
  using namespace std::string_literals;
  std::string p = "\x80\x02" "comegaconf.dictconfig\nDictConfig\n)\x81}X\x01\x00\x00\x00xK\x01sb."s;
  auto doc = pickle::unpickle(p);
  auto j = pickle::to_json(*doc.root);
  EXPECT_EQ(j.at("__class__"), "omegaconf.dictconfig.DictConfig");
  pickle::RenderBudget b;
  EXPECT_FALSE(pickle::to_yaml(*doc.root, b));
  EXPECT_FALSE(pickle::holds_omegaconf(*doc.root));
}

TEST(OmegaConf, ModulesAreFoldersWithTheirRestAsJson) {
  auto cp = open_checkpoint(data_path("omegaconf/buffers.pt"));
  View view = tree_view(cp.tree);
  auto m = view.read_file("__module__.json");
  ASSERT_TRUE(m);
  auto j = nlohmann::ordered_json::parse(*m);
  EXPECT_EQ(j.at("__class__"), "__main__.WithBuffers");
  EXPECT_EQ(j.at("state").at("scale"), 0.5);
  EXPECT_FALSE(j.at("state").contains("_parameters"));
  EXPECT_EQ(j.at("modules").at("proj").at("__class__"), "torch.nn.modules.linear.Linear");
  EXPECT_EQ(j.at("modules").at("proj").at("state").at("in_features"), 3);
  // nested: the module is a folder beside the config's .json/.yaml
  auto n = open_checkpoint(data_path("omegaconf/nested_module.pt"));
  EXPECT_TRUE(tree_view(n.tree).read_file("model/__module__.json"));
  EXPECT_TRUE(tree_view(n.tree).read_file("model/0.weight.json"));
}
