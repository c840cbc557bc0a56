// .safetensors: the real fixture against manifest.json, and a named-defect generator (one defect per
// file, each refused for its own reason) over in-memory files.
#include <gtest/gtest.h>

#include <cstring>

#include "formats/core/checked.h"
#include "formats/core/errors.h"
#include "formats/detect/checkpoint.h"
#include "formats/nemo/nemo.h"
#include "formats/safetensors/safetensors.h"
#include "tests/common/manifest_check.h"
#include "tests/common/tar_writer.h"

using namespace nemofs;
using namespace nemofs::testing;

namespace {

std::string le64(uint64_t v) {
  std::string s(8, '\0');
  store_le<uint64_t>(s.data(), v);
  return s;
}

std::string st_file(const std::string& header, const std::string& data) { return le64(header.size()) + header + data; }

// 8 bytes of a (F32 [2]) then 3 bytes of b (U8 [3]).
const std::string kData = std::string("\x00\x00\x80\x3f\x00\x00\x00\x40", 8) + "xyz";
const std::string kMeta = R"("__metadata__":{"format":"pt"})";
std::string entry(const std::string& name, const std::string& dtype, const std::string& shape, const std::string& offs) {
  return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape + ",\"data_offsets\":" + offs + "}";
}
std::string base_header() {
  return "{" + kMeta + "," + entry("a", "F32", "[2]", "[0,8]") + "," + entry("b", "U8", "[3]", "[8,11]") + "}";
}

Tree build(const std::string& bytes) {
  Tree t;
  build_safetensors(t, Tree::kRoot, std::make_shared<MemorySource>(bytes));
  return t;
}

std::string read_all(const Tree& t, const std::string& path) {
  auto id = t.resolve(path);
  if (!id) return "<absent>";
  const auto& src = *t.node(*id).data;
  std::string s(src.size(), '\0');
  src.read_at(0, s.data(), s.size());
  return s;
}

struct Defect {
  const char* name;
  std::string bytes;
  const char* phrase;  // must appear in this case's message, and in no other case's
};

std::vector<Defect> defects() {
  const std::string hdr = base_header();
  auto with = [&](const std::string& body) { return st_file(body, kData); };
  std::vector<Defect> d;
  d.push_back({"file_under_8_bytes", "abc", "too small for the 8-byte header length"});
  d.push_back({"header_length_past_eof", le64(1000) + "{}", "header length 1000 runs past the end of the file"});
  d.push_back({"header_over_cap", le64(100'000'001) + "{}", "exceeds the limit of 100000000 bytes"});
  d.push_back({"header_length_u64_max", le64(UINT64_MAX) + "{}", "exceeds the limit of 100000000 bytes"});
  d.push_back({"not_json", with("{\"a\": nope}"), "malformed JSON"});
  d.push_back({"number_out_of_double_range", with(R"({"__metadata__":{"k":"v"},"a":{"dtype":"F32","shape":[1e512],"data_offsets":[0,8]}})"),
               "JSON value out of range (number overflow parsing '1e512')"});
  d.push_back({"not_an_object", with("[1, 2, 3]"), "header is not a JSON object"});
  d.push_back({"not_utf8", with("{\"a\xff\": 1}"), "header is not valid UTF-8"});
  d.push_back({"overlong_utf8", with("{\"a\xc0\xaf\": 1}"), "header is not valid UTF-8"});
  d.push_back({"duplicate_tensor_key",
               with("{" + entry("a", "F32", "[2]", "[0,8]") + "," + entry("a", "U8", "[3]", "[8,11]") + "}"),
               "duplicate key \"a\""});
  d.push_back({"duplicate_field_in_entry",
               with(R"({"a":{"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]},)" +
                    entry("b", "U8", "[3]", "[8,11]") + "}"),
               "duplicate key \"dtype\""});
  d.push_back({"duplicate_metadata_key", with(R"({"__metadata__":{"k":"1","k":"2"}})"), "duplicate key \"k\""});
  d.push_back({"nesting_too_deep", with("{\"__metadata__\":" + std::string(200, '[') + std::string(200, ']') + "}"),
               "nests deeper than 128"});
  d.push_back({"metadata_not_object", with(R"({"__metadata__":["pt"]})"), "__metadata__ is not a JSON object"});
  d.push_back({"metadata_value_not_string", with(R"({"__metadata__":{"format":1}})"), "__metadata__ value of 'format' is not a string"});
  d.push_back({"entry_not_object", with(R"({"a":[1]})"), "tensor 'a': entry is not a JSON object"});
  d.push_back({"no_dtype", with(R"({"a":{"shape":[2],"data_offsets":[0,8]}})"), "no \"dtype\""});
  d.push_back({"dtype_not_string", with(R"({"a":{"dtype":32,"shape":[2],"data_offsets":[0,8]}})"), "\"dtype\" is not a string"});
  d.push_back({"unknown_dtype", with("{" + entry("a", "Q7", "[2]", "[0,8]") + "}"), "unknown dtype 'Q7'"});
  d.push_back({"nemofs_internal_dtype_C128", with("{" + entry("a", "C128", "[2]", "[0,8]") + "}"), "unknown dtype 'C128'"});
  d.push_back({"no_shape", with(R"({"a":{"dtype":"F32","data_offsets":[0,8]}})"), "no \"shape\""});
  d.push_back({"shape_not_array", with("{" + entry("a", "F32", "2", "[0,8]") + "}"), "\"shape\" is not an array"});
  d.push_back({"negative_shape", with("{" + entry("a", "F32", "[-2]", "[0,8]") + "}"), "shape entry -2 is not a non-negative integer"});
  d.push_back({"fractional_shape", with("{" + entry("a", "F32", "[2.0]", "[0,8]") + "}"), "shape entry 2.0 is not a non-negative integer"});
  d.push_back({"no_data_offsets", with(R"({"a":{"dtype":"F32","shape":[2]}})"), "no \"data_offsets\""});
  d.push_back({"data_offsets_not_pair", with("{" + entry("a", "F32", "[2]", "[0,8,9]") + "}"), "\"data_offsets\" is not a pair"});
  d.push_back({"shape_element_count_overflow",
               with("{" + entry("a", "F32", "[4294967296,4294967296,2]", "[0,8]") + "," + entry("b", "U8", "[3]", "[8,11]") + "}"),
               "element count of shape overflows"});
  d.push_back({"shape_bit_size_overflow",
               with("{" + entry("a", "F32", "[4611686018427387904]", "[0,8]") + "," + entry("b", "U8", "[3]", "[8,11]") + "}"),
               "bit size of shape overflows"});
  d.push_back({"sub_byte_not_whole_bytes", st_file("{" + entry("a", "F4", "[3]", "[0,2]") + "}", "\x12\x34"),
               "3 elements of F4 do not fill whole bytes"});
  d.push_back({"hole_at_start",
               with("{" + entry("a", "F32", "[2]", "[1,9]") + "," + entry("b", "U8", "[2]", "[9,11]") + "}"),
               "leave a hole at the start of the data section"});
  d.push_back({"hole_between_tensors",
               with("{" + entry("a", "F32", "[2]", "[0,8]") + "," + entry("b", "U8", "[2]", "[9,11]") + "}"),
               "[9, 11] leave a hole after 'a'"});
  d.push_back({"overlapping_tensors",
               with("{" + entry("a", "F32", "[2]", "[0,8]") + "," + entry("b", "U8", "[4]", "[7,11]") + "}"),
               "[7, 11] overlap 'a'"});
  d.push_back({"end_before_begin",
               with("{" + entry("a", "F32", "[2]", "[0,8]") + "," + entry("b", "U8", "[0]", "[8,7]") + "}"),
               "[8, 7] end before they begin"});
  d.push_back({"size_mismatch",
               with("{" + entry("a", "F32", "[3]", "[0,8]") + "," + entry("b", "U8", "[3]", "[8,11]") + "}"),
               "span 8 bytes but dtype and shape need 12"});
  d.push_back({"trailing_bytes", st_file(hdr, kData + "!!"), "2 trailing bytes after the last tensor"});
  d.push_back({"data_past_eof", st_file(hdr, kData.substr(0, 10)), "tensors need 11 data bytes but the file holds only 10"});
  d.push_back({"sidecar_name_collision",
               with("{" + entry("a", "F32", "[2]", "[0,8]") + "," + entry("a.json", "U8", "[3]", "[8,11]") + "}"),
               "two files would be named 'a.json'"});
  return d;
}

}  // namespace

TEST(SafetensorsFixture, ZooMatchesManifest) {
  auto cp = open_checkpoint(data_path("real/safetensors/zoo.safetensors"));
  EXPECT_EQ(cp.format, Format::Safetensors);
  auto bad = check_against_manifest(tree_view(cp.tree), fixture("safetensors/zoo.safetensors"));
  EXPECT_TRUE(bad.empty()) << ::testing::PrintToString(bad);
}

TEST(SafetensorsFixture, TensorFilesAreRangesOfTheRealFile) {
  auto cp = open_checkpoint(data_path("real/safetensors/zoo.safetensors"));
  auto id = cp.tree.resolve("model.embed.weight");
  ASSERT_TRUE(id);
  auto range = cp.tree.node(*id).data->file_range(0, 2048);
  ASSERT_TRUE(range.has_value());
  auto side = nlohmann::json::parse(read_all(cp.tree, "model.embed.weight.json"));
  EXPECT_EQ(side.at("source"), "safetensors");
  auto offs = side.at("data_offsets");
  std::string file = read_whole_file(data_path("real/safetensors/zoo.safetensors"));
  uint64_t n = load_le<uint64_t>(file.data());
  EXPECT_EQ(range->offset, 8 + n + offs[0].get<uint64_t>());
  EXPECT_EQ(offs[1].get<uint64_t>() - offs[0].get<uint64_t>(), 2048u);
}

TEST(SafetensorsFixture, NestedInNemoMatchesManifest) {
  // A .nemo holding a .safetensors member shows it under `<member>.tensors/`.
  std::string zoo = read_whole_file(data_path("real/safetensors/zoo.safetensors"));
  std::string tar = tar_member("./", "", '5') + tar_member("./weights.safetensors", zoo) + tar_end();
  Tree t;
  auto nemo = build_nemo(t, std::make_shared<MemorySource>(tar));
  EXPECT_TRUE(nemo.warnings.empty()) << ::testing::PrintToString(nemo.warnings);
  EXPECT_EQ(read_all(t, "weights.safetensors"), zoo);
  auto bad = check_against_manifest(tree_view(t), fixture("safetensors/zoo.safetensors"), "weights.safetensors.tensors/");
  EXPECT_TRUE(bad.empty()) << ::testing::PrintToString(bad);
}

TEST(SafetensorsValid, BaseCaseParses) {
  Tree t = build(st_file(base_header(), kData));
  EXPECT_EQ(read_all(t, "a"), kData.substr(0, 8));
  EXPECT_EQ(read_all(t, "b"), "xyz");
  auto side = nlohmann::json::parse(read_all(t, "b.json"));
  EXPECT_EQ(side, nlohmann::json::parse(R"({"dtype":"U8","shape":[3],"nbytes":3,"data_offsets":[8,11],"source":"safetensors"})"));
  EXPECT_EQ(nlohmann::json::parse(read_all(t, "__metadata__.json")), nlohmann::json::parse(R"({"format":"pt"})"));
  EXPECT_EQ(t.node(Tree::kRoot).children.size(), 5u);
}

TEST(SafetensorsValid, WhitespacePaddingEmptyScalarSubByteAndEscapes) {
  // Leading/trailing JSON whitespace (reference >= 0.4 accepts it), a [0, 4] tensor, a rank-0
  // tensor, F4 with its logical element count, F6 with 4 elements = 3 bytes, and a key needing escapes.
  std::string hdr = " \t\n{" + entry("e", "F32", "[0,4]", "[0,0]") + "," + entry("s", "I16", "[]", "[0,2]") + "," +
                    entry("f4", "F4", "[2,3]", "[2,5]") + "," + entry("f6", "F6_E2M3", "[4]", "[5,8]") + "," +
                    entry("x/y%", "U8", "[1]", "[8,9]") + "}        ";
  Tree t = build(st_file(hdr, "SSffFsix!"));
  EXPECT_EQ(read_all(t, "e"), "");
  EXPECT_EQ(read_all(t, "s"), "SS");
  EXPECT_EQ(read_all(t, "f4"), "ffF");
  EXPECT_EQ(read_all(t, "f6"), "six");
  EXPECT_EQ(read_all(t, "x%2Fy%25"), "!");
  EXPECT_FALSE(t.resolve("__metadata__.json"));
  EXPECT_EQ(nlohmann::json::parse(read_all(t, "f4.json")).at("nbytes"), 3);
}

TEST(SafetensorsValid, HeaderOnlyFileHasNoTensors) {
  Tree t = build(st_file(R"({"__metadata__":{}})", ""));
  EXPECT_EQ(t.node(Tree::kRoot).children.size(), 1u);
  EXPECT_EQ(build(st_file("{}", "")).node(Tree::kRoot).children.size(), 0u);
}

TEST(SafetensorsDefects, EachRefusedForItsOwnReason) {
  auto cases = defects();
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    std::string msg;
    try {
      build(c.bytes);
      ADD_FAILURE() << c.name << ": accepted";
      continue;
    } catch (const FormatError& e) {
      EXPECT_EQ(e.format(), "safetensors");
      msg = e.what();
    }
    EXPECT_NE(msg.find(c.phrase), std::string::npos) << c.name << ": message was: " << msg;
    for (const auto& other : cases) {
      if (std::strcmp(other.phrase, c.phrase) != 0) {
        EXPECT_EQ(msg.find(other.phrase), std::string::npos) << c.name << " also matches " << other.name << ": " << msg;
      }
    }
  }
}

TEST(SafetensorsDefects, TruncationsOfTheFixtureAreRefused) {
  std::string zoo = read_whole_file(data_path("real/safetensors/zoo.safetensors"));
  for (size_t n : {size_t{0}, size_t{7}, size_t{8}, size_t{100}, zoo.size() / 2, zoo.size() - 1}) {
    SCOPED_TRACE(n);
    EXPECT_THROW(build(zoo.substr(0, n)), FormatError);
  }
  EXPECT_NO_THROW(build(zoo));
}

TEST(Safetensors, HeaderReadInBlocksKeepsSequencesCutByABlockEnd) {
  // The header is read (for UTF-8, then for JSON) in 1 MiB blocks: a 4-byte character across the
  // first block end is text like any other, and a bad byte right after it is found at its offset.
  const size_t kBlock = 1 << 20;
  const std::string pre = R"({"__metadata__":{"k":")";
  const std::string emoji = "\xF0\x9F\x98\x80";
  const std::string fill(kBlock - pre.size() - 2, 'x');  // the emoji starts 2 bytes before the block end
  const std::string rest = R"(y"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  {
    Tree t = build(st_file(pre + fill + emoji + rest, kData.substr(0, 8)));
    auto meta = nlohmann::json::parse(read_all(t, "__metadata__.json"));
    EXPECT_EQ(meta["k"].get<std::string>(), fill + emoji + "y");
    EXPECT_EQ(read_all(t, "a"), kData.substr(0, 8));
  }
  try {
    build(st_file(pre + fill + emoji + "\xC3" + rest, kData.substr(0, 8)));
    FAIL() << "accepted";
  } catch (const FormatError& e) {
    EXPECT_EQ(e.offset(), 8 + pre.size() + fill.size() + emoji.size());
    EXPECT_NE(std::string(e.what()).find("header is not valid UTF-8"), std::string::npos) << e.what();
  }
}
