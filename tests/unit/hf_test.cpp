// Hugging Face sharded folders: the real tiny-llama fixture against manifest.json, and index/shard
// defects over an in-memory file set.
#include <gtest/gtest.h>

#include <map>

#include "formats/core/checked.h"
#include "formats/core/errors.h"
#include "formats/detect/checkpoint.h"
#include "formats/hf/hf.h"
#include "formats/nemo/nemo.h"
#include "tests/common/manifest_check.h"
#include "tests/common/mem_file_set.h"
#include "tests/common/tar_writer.h"

using namespace nemofs;
using namespace nemofs::testing;

namespace {

std::string shard(const std::vector<std::pair<std::string, std::string>>& tensors, const std::string& meta = R"({"format":"pt"})") {
  // U8 tensors, 1-D, contents = the given bytes.
  std::string hdr = "{\"__metadata__\":" + meta;
  std::string data;
  for (const auto& [name, bytes] : tensors) {
    hdr += ",\"" + name + "\":{\"dtype\":\"U8\",\"shape\":[" + std::to_string(bytes.size()) + "],\"data_offsets\":[" +
           std::to_string(data.size()) + "," + std::to_string(data.size() + bytes.size()) + "]}";
    data += bytes;
  }
  hdr += "}";
  std::string len(8, '\0');
  store_le<uint64_t>(len.data(), hdr.size());
  return len + hdr + data;
}

std::string index_json(const std::map<std::string, std::string>& wm, const std::string& meta = R"({"total_size": 7})") {
  nlohmann::json j;
  j["metadata"] = nlohmann::json::parse(meta);
  j["weight_map"] = wm;
  return j.dump(2);
}

MemFileSet valid_folder() {
  MemFileSet fs;
  fs.files["config.json"] = "{}";
  fs.files["model-00001-of-00002.safetensors"] = shard({{"a", "AAA"}, {"b", "BB"}});
  fs.files["model-00002-of-00002.safetensors"] = shard({{"c", "CC"}});
  fs.files[kHfIndexName] = index_json({{"a", "model-00001-of-00002.safetensors"},
                                      {"b", "model-00001-of-00002.safetensors"},
                                      {"c", "model-00002-of-00002.safetensors"}});
  return fs;
}

std::string read_all(const Tree& t, const std::string& path) {
  auto id = t.resolve(path);
  if (!id) return "<absent>";
  const auto& src = *t.node(*id).data;
  std::string s(src.size(), '\0');
  src.read_at(0, s.data(), s.size());
  return s;
}

std::string refusal(const MemFileSet& fs) {
  Tree t;
  try {
    build_hf(t, Tree::kRoot, fs);
  } catch (const FormatError& e) {
    return e.what();
  }
  return "<accepted>";
}

}  // namespace

TEST(HfFixture, TinyLlamaMatchesManifest) {
  auto cp = open_checkpoint(data_path("real/hf/tiny-llama"));
  EXPECT_EQ(cp.format, Format::HfDir);
  auto bad = check_against_manifest(tree_view(cp.tree), fixture("hf/tiny-llama"));
  EXPECT_TRUE(bad.empty()) << ::testing::PrintToString(bad);
  // A pure tensor view: every tensor + sidecar, the index metadata, nothing else.
  EXPECT_EQ(cp.tree.node(Tree::kRoot).children.size(), 2 * fixture("hf/tiny-llama").at("tensors").size() + 1);
  EXPECT_FALSE(cp.tree.resolve("config.json"));
  auto meta = nlohmann::json::parse(read_all(cp.tree, "__metadata__.json"));
  auto index = nlohmann::json::parse(read_whole_file(data_path("real/hf/tiny-llama/model.safetensors.index.json")));
  EXPECT_EQ(meta, index.at("metadata"));
  for (const auto& [name, file] : index.at("weight_map").items()) {
    auto side = nlohmann::json::parse(read_all(cp.tree, name + ".json"));
    EXPECT_EQ(side.at("shard"), file) << name;
    EXPECT_TRUE(cp.tree.node(*cp.tree.resolve(name)).data->file_range(0, 1)) << name;
  }
  EXPECT_TRUE(cp.warnings.empty()) << ::testing::PrintToString(cp.warnings);
}

TEST(HfValid, UnionOfShards) {
  auto fs = valid_folder();
  Tree t;
  build_hf(t, Tree::kRoot, fs);
  EXPECT_EQ(read_all(t, "a"), "AAA");
  EXPECT_EQ(read_all(t, "b"), "BB");
  EXPECT_EQ(read_all(t, "c"), "CC");
  EXPECT_EQ(nlohmann::json::parse(read_all(t, "__metadata__.json")), nlohmann::json::parse(R"({"total_size": 7})"));
  EXPECT_EQ(t.node(Tree::kRoot).children.size(), 7u);
}

TEST(HfValid, UnindexedShardIgnoredWithWarning) {
  auto fs = valid_folder();
  fs.files["stale.safetensors"] = shard({{"a", "OLD"}});
  Tree t;
  std::vector<std::string> warnings;
  build_hf(t, Tree::kRoot, fs, &warnings);
  EXPECT_EQ(read_all(t, "a"), "AAA");
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("stale.safetensors"), std::string::npos);
}

TEST(HfValid, WithoutIndexAllShardsAndCommonMetadata) {
  MemFileSet fs;
  fs.files["one.safetensors"] = shard({{"a", "A"}});
  fs.files["two.safetensors"] = shard({{"b", "B"}});
  fs.files["sub/three.safetensors"] = shard({{"c", "C"}});  // not directly in the folder: not a shard
  Tree t;
  build_hf(t, Tree::kRoot, fs);
  EXPECT_EQ(read_all(t, "a"), "A");
  EXPECT_EQ(read_all(t, "b"), "B");
  EXPECT_FALSE(t.resolve("c"));
  EXPECT_EQ(nlohmann::json::parse(read_all(t, "__metadata__.json")), nlohmann::json::parse(R"({"format":"pt"})"));
  fs.files["two.safetensors"] = shard({{"b", "B"}}, R"({"format":"np"})");
  Tree t2;
  build_hf(t2, Tree::kRoot, fs);
  EXPECT_FALSE(t2.resolve("__metadata__.json"));
}

TEST(HfDefects, EachRefusedForItsOwnReason) {
  struct Case {
    const char* name;
    std::function<void(MemFileSet&)> breakit;
    const char* phrase;
  };
  const std::string s1 = "model-00001-of-00002.safetensors", s2 = "model-00002-of-00002.safetensors";
  std::vector<Case> cases = {
      {"index_not_json", [&](MemFileSet& f) { f.files[kHfIndexName] = "{\"weight_map\": "; }, "malformed JSON"},
      {"index_duplicate_key",
       [&](MemFileSet& f) { f.files[kHfIndexName] = "{\"weight_map\": {\"a\": \"" + s1 + "\", \"a\": \"" + s2 + "\"}}"; },
       "duplicate key \"a\""},
      {"index_not_object", [&](MemFileSet& f) { f.files[kHfIndexName] = "[]"; }, "index.json is not a JSON object"},
      {"index_without_weight_map", [&](MemFileSet& f) { f.files[kHfIndexName] = "{\"metadata\": {}}"; }, "has no \"weight_map\""},
      {"weight_map_not_object", [&](MemFileSet& f) { f.files[kHfIndexName] = "{\"weight_map\": []}"; }, "\"weight_map\" is not a JSON object"},
      {"weight_map_value_not_string", [&](MemFileSet& f) { f.files[kHfIndexName] = "{\"weight_map\": {\"a\": 1}}"; },
       "weight_map entry 'a' is not a file name string"},
      {"metadata_not_object",
       [&](MemFileSet& f) { f.files[kHfIndexName] = "{\"metadata\": 3, \"weight_map\": {\"a\": \"" + s1 + "\"}}"; },
       "\"metadata\" is not a JSON object"},
      {"shard_name_climbs_out", [&](MemFileSet& f) { f.files[kHfIndexName] = index_json({{"a", "../x.safetensors"}}); },
       "is not a plain relative path"},
      {"shard_name_absolute", [&](MemFileSet& f) { f.files[kHfIndexName] = index_json({{"a", "/x.safetensors"}}); },
       "is not a relative file name"},
      {"shard_missing", [&](MemFileSet& f) { f.files.erase(s2); }, "shard 'model-00002-of-00002.safetensors' does not exist"},
      {"tensor_in_other_shard",
       [&](MemFileSet& f) { f.files[kHfIndexName] = index_json({{"a", s2}, {"b", s1}, {"c", s2}}); },
       "puts tensor 'a' in 'model-00002-of-00002.safetensors', but it is in 'model-00001-of-00002.safetensors'"},
      {"tensor_in_no_shard",
       [&](MemFileSet& f) { f.files[kHfIndexName] = index_json({{"a", s1}, {"b", s1}, {"c", s2}, {"z", s2}}); },
       "puts tensor 'z' in 'model-00002-of-00002.safetensors', but no shard holds it"},
      {"tensor_in_two_shards", [&](MemFileSet& f) { f.files[s2] = shard({{"c", "CC"}, {"a", "AAA"}}); },
       "tensor 'a' is in two shards"},
      {"corrupt_shard", [&](MemFileSet& f) { f.files[s2] += "junk"; }, "shard 'model-00002-of-00002.safetensors': 4 trailing bytes"},
      {"sidecar_collision_across_shards", [&](MemFileSet& f) {
         f.files[s2] = shard({{"c", "CC"}, {"a.json", "J"}});
         f.files[kHfIndexName] = index_json({{"a", s1}, {"b", s1}, {"c", s2}, {"a.json", s2}});
       }, "two files would be named 'a.json'"},
      {"no_shards_without_index", [&](MemFileSet& f) { f.files.clear(); f.files["x.safetensors.txt"] = ""; }, "no safetensors shards"},
  };
  EXPECT_EQ(refusal(valid_folder()), "<accepted>");
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    auto fs = valid_folder();
    c.breakit(fs);
    std::string msg = refusal(fs);
    EXPECT_NE(msg.find(c.phrase), std::string::npos) << msg;
    for (const auto& o : cases) {
      if (std::string(o.phrase) != c.phrase) {
        EXPECT_EQ(msg.find(o.phrase), std::string::npos) << "also " << o.name << ": " << msg;
      }
    }
  }
}

TEST(HfDefects, DuplicateAcrossShardsWithoutIndex) {
  MemFileSet fs;
  fs.files["one.safetensors"] = shard({{"a", "A"}});
  fs.files["two.safetensors"] = shard({{"a", "B"}});
  EXPECT_NE(refusal(fs).find("tensor 'a' is in two shards: 'one.safetensors' and 'two.safetensors'"), std::string::npos) << refusal(fs);
}

TEST(HfValid, FolderInsideANemoGetsATensorsView) {
  std::string zoo = read_whole_file(data_path("real/safetensors/zoo.safetensors"));
  std::string tar = tar_member("./", "", '5') + tar_member("./weights/", "", '5') +
                    tar_member("./weights/model.safetensors", zoo) + tar_member("./weights/config.json", "{}") + tar_end();
  Tree t;
  auto nemo = build_nemo(t, std::make_shared<MemorySource>(tar));
  EXPECT_TRUE(nemo.warnings.empty()) << ::testing::PrintToString(nemo.warnings);
  auto bad = check_against_manifest(tree_view(t), fixture("safetensors/zoo.safetensors"), "weights.tensors/");
  EXPECT_TRUE(bad.empty()) << ::testing::PrintToString(bad);
  EXPECT_EQ(nlohmann::json::parse(read_all(t, "weights.tensors/model.embed.weight.json")).at("shard"), "model.safetensors");
}
