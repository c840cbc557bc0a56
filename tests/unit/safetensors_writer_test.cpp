// The safetensors writer (formats/safetensors/safetensors_writer.h) against outside references:
// the reference crate's own serialization test vectors, files written by safetensors 0.8.0 /
// transformers (tests/data/real), and every real fixture's manifest read back through the
// project's strict parser.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "formats/core/errors.h"
#include "formats/core/tensor.h"
#include "formats/detect/checkpoint.h"
#include "formats/safetensors/safetensors.h"
#include "formats/safetensors/safetensors_writer.h"
#include "tests/common/manifest_check.h"

namespace nemofs {
namespace {

using testing::data_path;

std::string all_bytes(const ByteSource& src) {
  std::string out(src.size(), '\0');
  if (!out.empty()) EXPECT_EQ(src.read_at(0, out.data(), out.size()), out.size());
  return out;
}

std::string le_f32(std::initializer_list<float> v) {
  std::string s;
  for (float f : v) {
    char b[4];
    std::memcpy(b, &f, 4);
    s.append(b, 4);
  }
  return s;
}

SafetensorsInput input(std::string key, std::string dtype, std::vector<uint64_t> shape, std::string bytes) {
  return SafetensorsInput{key, std::move(dtype), std::move(shape), std::make_shared<MemorySource>(std::move(bytes)), key};
}

// safetensors/src/tensor.rs test_serialization: "attn.0", F32 [1, 2, 3], no metadata.
TEST(SafetensorsWriter, ReferenceVectorOneTensor) {
  std::vector<SafetensorsInput> t{input("attn.0", "F32", {1, 2, 3}, le_f32({0, 1, 2, 3, 4, 5}))};
  auto img = make_safetensors(t, {});
  const unsigned char want[] = {64,  0,   0,   0,   0,   0,   0,   0,   123, 34,  97,  116, 116, 110, 46,  48,  34,
                                58,  123, 34,  100, 116, 121, 112, 101, 34,  58,  34,  70,  51,  50,  34,  44,  34,
                                115, 104, 97,  112, 101, 34,  58,  91,  49,  44,  50,  44,  51,  93,  44,  34,  100,
                                97,  116, 97,  95,  111, 102, 102, 115, 101, 116, 115, 34,  58,  91,  48,  44,  50,
                                52,  93,  125, 125, 0,   0,   0,   0,   0,   0,   128, 63,  0,   0,   0,   64,  0,
                                0,   64,  64,  0,   0,   128, 64,  0,   0,   160, 64};
  EXPECT_EQ(all_bytes(*img), std::string(reinterpret_cast<const char*>(want), sizeof want));
}

// test_serialization_forced_alignement: the header padded with spaces to a multiple of 8.
TEST(SafetensorsWriter, ReferenceVectorPadding) {
  std::vector<SafetensorsInput> t{input("attn0", "F32", {1, 1, 2, 3}, le_f32({0, 1, 2, 3, 4, 5}))};
  auto img = make_safetensors(t, {});
  std::string h = img->header().substr(8);
  EXPECT_EQ(h, std::string("{\"attn0\":{\"dtype\":\"F32\",\"shape\":[1,1,2,3],\"data_offsets\":[0,24]}}") + "       ");
  EXPECT_EQ(static_cast<unsigned char>(img->header()[0]), 72);
}

// test_empty: no tensors, with and without metadata.
TEST(SafetensorsWriter, ReferenceVectorEmpty) {
  auto a = make_safetensors({}, {});
  EXPECT_EQ(all_bytes(*a), std::string("\x08\0\0\0\0\0\0\0{}      ", 16));
  auto b = make_safetensors({}, {{"framework", "pt"}});
  EXPECT_EQ(all_bytes(*b), std::string("\x28\0\0\0\0\0\0\0", 8) + "{\"__metadata__\":{\"framework\":\"pt\"}}     ");
}

// Re-lays an existing safetensors file's tensors and compares with the file itself.
void expect_reproduces(const std::string& rel, const SafetensorsMetadata& meta) {
  SCOPED_TRACE(rel);
  auto src = std::make_shared<FileSource>(data_path(rel));
  SafetensorsHeader h = parse_safetensors(*src);
  std::vector<SafetensorsInput> in;
  // Handed over in reverse name order: the writer, not the input, decides the layout.
  for (auto it = h.tensors.rbegin(); it != h.tensors.rend(); ++it)
    in.push_back({it->name, it->dtype, it->shape, make_sub(src, h.data_start + it->begin, it->nbytes), it->name});
  auto img = make_safetensors(std::move(in), meta);
  EXPECT_EQ(img->size(), src->size());
  EXPECT_TRUE(all_bytes(*img) == all_bytes(*src)) << "bytes differ from the file written by the reference";
}

TEST(SafetensorsWriter, ReproducesTransformersShardsByteForByte) {
  for (const char* shard : {"real/hf/tiny-llama/model-00001-of-00003.safetensors",
                            "real/hf/tiny-llama/model-00002-of-00003.safetensors",
                            "real/hf/tiny-llama/model-00003-of-00003.safetensors"})
    expect_reproduces(shard, default_safetensors_metadata());
}

TEST(SafetensorsWriter, ReproducesSaveFileZooByteForByte) {
  // Written by safetensors 0.8.0 save_file with two metadata pairs (in this order in the file):
  // every dtype the reference sorts, a 0-d and an empty tensor.
  expect_reproduces("real/safetensors/zoo.safetensors", {{"producer", "fixture-dev"}, {"format", "pt"}});
}

TEST(SafetensorsWriter, EscapesKeysAsSerdeJson) {
  std::string key = "q\"b\\s\b\t\n\f\r\x01\x1f\x7f/é";
  auto img = make_safetensors({input(key, "U8", {1}, "x")}, {});
  std::string h = img->header().substr(8);
  EXPECT_NE(h.find("\"q\\\"b\\\\s\\b\\t\\n\\f\\r\\u0001\\u001f\x7f/é\""), std::string::npos) << h;
  SafetensorsHeader back = parse_safetensors(*img);
  ASSERT_EQ(back.tensors.size(), 1u);
  EXPECT_EQ(back.tensors[0].name, key);
}

TEST(SafetensorsWriter, RefusesWhatSafetensorsCannotHold) {
  EXPECT_THROW(make_safetensors({input("c", "C128", {1}, std::string(16, 0))}, {}), FormatError);
  EXPECT_THROW(make_safetensors({input("a", "F32", {2}, "abcd")}, {}), FormatError);  // 4 bytes, 8 needed
  EXPECT_THROW(make_safetensors({input(std::string("\xff", 1), "U8", {1}, "x")}, {}), FormatError);
  EXPECT_THROW(make_safetensors({input("__metadata__", "U8", {1}, "x")}, {}), FormatError);
  try {
    make_safetensors({input("k", "U8", {1}, "x"), input("k", "I8", {1}, "y")}, {});
    FAIL() << "duplicate key accepted";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("two tensors would have the key"), std::string::npos) << e.what();
  }
  // A key that alone passes the reference reader's header limit.
  EXPECT_THROW(make_safetensors({input(std::string(100'000'001, 'k'), "U8", {1}, "x")}, {}), FormatError);
}

// torch's float4_e2m1fn_x2 (nemofs F4_X2, shape in bytes): the reference's torch binding
// (bindings/python TensorSpec) writes it as F4 with the last dimension doubled, the bytes as they
// are; it sorts as F4 (after every wider dtype, before BOOL).
TEST(SafetensorsWriter, Float4X2IsWrittenAsF4) {
  auto img = make_safetensors({input("q", "F4_X2", {2, 3}, "abcdef"), input("b", "BOOL", {1}, std::string(1, '\1')),
                               input("w", "F32", {1}, le_f32({1.0f}))},
                              {});
  std::string h = img->header().substr(8);
  EXPECT_NE(h.find("\"q\":{\"dtype\":\"F4\",\"shape\":[2,6],\"data_offsets\":[4,10]}"), std::string::npos) << h;
  SafetensorsHeader back = parse_safetensors(*img);
  ASSERT_EQ(back.tensors.size(), 3u);
  std::string bytes = all_bytes(*img);
  EXPECT_EQ(bytes.substr(img->data_start() + 4, 6), "abcdef");
  EXPECT_THROW(make_safetensors({input("s", "F4_X2", {}, "a")}, {}), FormatError);  // 0-d: no F4 shape
}

TEST(SafetensorsWriter, TreeKeysUnescapeAndCollide) {
  Tree tree;
  TensorMeta m{"U8", {1}, 1, nlohmann::json::object()};
  NodeId opt = tree.mkdirs("optimizer_states/0/state/0");
  add_tensor(tree, opt, "exp_avg", std::make_shared<MemorySource>("a"), m);
  add_tensor(tree, Tree::kRoot, "a/b%c", std::make_shared<MemorySource>("b"), m);  // file a%2Fb%25c
  add_json(tree, Tree::kRoot, "step", 3);
  auto ts = tree_tensors(tree, Tree::kRoot);
  std::vector<std::string> keys;
  for (auto& t : ts) keys.push_back(t.key);
  std::sort(keys.begin(), keys.end());
  EXPECT_EQ(keys, (std::vector<std::string>{"a/b%c", "optimizer_states.0.state.0.exp_avg"}));
  EXPECT_EQ(tree_tensors(tree, *tree.resolve("optimizer_states/0")).front().key, "state.0.exp_avg");

  NodeId x = tree.mkdirs("optimizer_states.0/state");
  add_tensor(tree, x, "0.exp_avg", std::make_shared<MemorySource>("c"), m);
  try {
    tree_tensors(tree, Tree::kRoot);
    FAIL() << "colliding keys accepted";
  } catch (const FormatError& e) {
    std::string w = e.what();
    EXPECT_NE(w.find("optimizer_states/0/state/0/exp_avg"), std::string::npos) << w;
    EXPECT_NE(w.find("optimizer_states.0/state/0.exp_avg"), std::string::npos) << w;
  }
}

TEST(SafetensorsWriter, SelectPaths) {
  Tree tree;
  TensorMeta m{"U8", {1}, 1, nlohmann::json::object()};
  add_tensor(tree, tree.mkdirs("state_dict"), "w", std::make_shared<MemorySource>("a"), m);
  EXPECT_EQ(select_export_dir(tree, ""), Tree::kRoot);
  EXPECT_EQ(select_export_dir(tree, "/"), Tree::kRoot);
  EXPECT_EQ(select_export_dir(tree, "."), Tree::kRoot);
  EXPECT_EQ(select_export_dir(tree, "state_dict/"), *tree.resolve("state_dict"));
  EXPECT_THROW(select_export_dir(tree, "nope"), FormatError);
  EXPECT_THROW(select_export_dir(tree, "state_dict/w"), FormatError);  // a file
  EXPECT_THROW(select_export_dir(tree, "state_dict/.."), FormatError);
}

// Reads the image in odd-sized spans through read_at and through pieces(): both give the bytes.
TEST(SafetensorsWriter, ReadsAndPiecesAgree) {
  auto cp = open_checkpoint(data_path("real/dcp/sharded_2d"));
  auto img = make_safetensors(tree_tensors(cp.tree, Tree::kRoot), default_safetensors_metadata());
  std::string whole = all_bytes(*img);
  for (uint64_t step : {1ull, 7ull, 61ull, 4096ull}) {
    std::string r;
    for (uint64_t off = 0; off < img->size(); off += step) {
      uint64_t n = std::min<uint64_t>(step, img->size() - off);
      std::vector<Piece> ps;
      img->pieces(off, n, ps);
      uint64_t sum = 0, at = off;
      for (const auto& p : ps) {
        std::string b(p.len, '\0');
        if (p.zero) {
        } else if (p.file) {
          ASSERT_EQ(io::pread_full(p.file->fd, b.data(), b.size(), p.file->offset), b.size());
        } else {
          ASSERT_EQ(img->read_at(at, b.data(), b.size()), b.size());
        }
        r += b;
        sum += p.len;
        at += p.len;
      }
      ASSERT_EQ(sum, n);
    }
    EXPECT_TRUE(r == whole) << "step " << step;
  }
}

class SafetensorsExportFixture : public ::testing::TestWithParam<std::string> {};

// Every real fixture, exported as `nemofs export` does by default, read back with the strict
// parser and compared with the manifest: keys, dtypes, shapes, bytes.
TEST_P(SafetensorsExportFixture, MatchesManifest) {
  const auto& fx = testing::fixture(GetParam());
  auto cp = open_checkpoint(data_path("real/" + GetParam()));
  bool nemo = cp.format == Format::Tar || cp.format == Format::GzipTar;
  NodeId dir = default_export_dir(cp.tree, nemo);
  std::string prefix = dir == Tree::kRoot ? "" : cp.tree.path_of(dir) + "/";
  auto img = make_safetensors(tree_tensors(cp.tree, dir), default_safetensors_metadata());
  SafetensorsHeader h = parse_safetensors(*img);
  ASSERT_TRUE(h.metadata.has_value());
  EXPECT_EQ(*h.metadata, (nlohmann::json{{"format", "pt"}}));
  std::map<std::string, const SafetensorsTensor*> by_key;
  for (const auto& t : h.tensors) by_key[t.name] = &t;
  size_t want_count = 0;
  for (const auto& [path, want] : fx.at("tensors").items()) {
    if (path.rfind(prefix, 0) != 0) continue;
    ++want_count;
    std::string rel = path.substr(prefix.size());
    ASSERT_EQ(rel.find('%'), std::string::npos) << "fixture keys are expected unescaped: " << rel;
    std::string key = rel;
    std::replace(key.begin(), key.end(), '/', '.');
    auto it = by_key.find(key);
    ASSERT_NE(it, by_key.end()) << "missing key " << key;
    const auto& t = *it->second;
    EXPECT_EQ(t.dtype, want.at("dtype").get<std::string>()) << key;
    EXPECT_EQ(nlohmann::json(t.shape), want.at("shape")) << key;
    EXPECT_EQ(t.nbytes, want.at("nbytes").get<uint64_t>()) << key;
    std::string bytes = read_exact(*img, h.data_start + t.begin, t.nbytes, "test");
    EXPECT_EQ(testing::sha256_hex(bytes), want.at("sha256").get<std::string>()) << key;
  }
  EXPECT_GT(want_count, 0u);
  EXPECT_EQ(h.tensors.size(), want_count) << "the export holds tensors the manifest does not list";
}

INSTANTIATE_TEST_SUITE_P(Real, SafetensorsExportFixture, ::testing::ValuesIn(testing::all_fixture_files()),
                         [](const auto& info) { return testing::fixture_test_name(info.param); });

}  // namespace
}  // namespace nemofs
