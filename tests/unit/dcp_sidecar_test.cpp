// dcp::sidecar_text writes DCP tensor sidecars without building a JSON document; its bytes must be
// exactly what the generic path (TensorMeta -> sidecar_json -> json_file_body) writes, for every
// shape of entry: chunk lists, zero-size chunks, the chunk_count form, scalars, MCore shapes, and
// names that need JSON escaping or hold invalid UTF-8.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "formats/core/tensor.h"
#include "formats/dcp/dcp.h"

using namespace nemofs;
using namespace nemofs::dcp;

namespace {

// The sidecar as the generic tensor path renders it (what build_dcp did before sidecar_text).
std::string reference(const Entry& e, const DTypeInfo& dt) {
  const uint64_t elem = dt.bits / 8;
  TensorMeta meta;
  meta.dtype = dt.name;
  meta.shape = e.shape;
  meta.nbytes = tensor_nbytes(dt, e.shape, "dcp", std::nullopt);
  meta.extra["source"] = "dcp";
  meta.extra["fqn"] = e.fqn;
  meta.extra["torch_dtype"] = e.torch_dtype;
  if (e.mcore_orig_shape) meta.extra["mcore_nd_reformulated_orig_global_shape"] = nlohmann::json::parse(e.mcore_orig_shape->dump());
  auto list = nlohmann::json::array();
  size_t n = 0;
  for (const Chunk& c : e.chunks) {
    uint64_t vol = elem;
    for (uint64_t s : c.box.sizes) vol *= s;
    if (vol == 0) continue;
    ++n;
    list.push_back({{"offsets", c.box.offsets},
                    {"sizes", c.box.sizes},
                    {"file", c.storage.file},
                    {"offset", c.storage.offset},
                    {"length", c.storage.length}});
  }
  if (e.chunks.size() <= kSidecarChunkLimit) meta.extra["chunks"] = std::move(list);
  else meta.extra["chunk_count"] = n;
  return json_file_body(sidecar_json(meta));
}

Chunk chunk(std::vector<uint64_t> off, std::vector<uint64_t> sizes, std::string file, uint64_t at, uint64_t len) {
  Chunk c;
  c.box.offsets = std::move(off);
  c.box.sizes = std::move(sizes);
  c.storage.file = std::move(file);
  c.storage.offset = at;
  c.storage.length = len;
  return c;
}

void expect_same(const Entry& e, const char* torch_dtype) {
  auto dt = dtype_from_torch(torch_dtype);
  ASSERT_TRUE(dt);
  const uint64_t nbytes = tensor_nbytes(*dt, e.shape, "dcp", std::nullopt);
  EXPECT_EQ(sidecar_text(e, dt->name, dt->bits / 8, nbytes), reference(e, *dt)) << e.fqn;
}

Entry tensor(std::string fqn, std::vector<uint64_t> shape, const char* torch_dtype = "float32") {
  Entry e;
  e.fqn = std::move(fqn);
  e.is_tensor = true;
  e.torch_dtype = torch_dtype;
  e.shape = std::move(shape);
  return e;
}

}  // namespace

TEST(DcpSidecarText, ChunkListsMatchTheGenericRendering) {
  Entry e = tensor("model.layers.0.weight", {8, 6});
  e.chunks.push_back(chunk({0, 0}, {4, 6}, "__0_0.distcp", 0, 1234));
  e.chunks.push_back(chunk({4, 0}, {4, 6}, "__1_0.distcp", 1234, 99999999999ull));
  expect_same(e, "float32");

  Entry one = tensor("b", {5}, "bfloat16");
  one.chunks.push_back(chunk({0}, {5}, "d/__0_0.distcp", 7, 10));
  expect_same(one, "bfloat16");
}

TEST(DcpSidecarText, ZeroSizeChunksAreLeftOut) {
  Entry e = tensor("w", {4, 2});
  e.chunks.push_back(chunk({0, 0}, {4, 2}, "a", 0, 32));
  e.chunks.push_back(chunk({4, 0}, {0, 2}, "a", 32, 0));
  expect_same(e, "float32");

  Entry empty = tensor("empty", {0, 3});
  empty.chunks.push_back(chunk({0, 0}, {0, 3}, "a", 0, 0));
  expect_same(empty, "float32");

  Entry none = tensor("none", {0});
  expect_same(none, "int64");
}

TEST(DcpSidecarText, ScalarsAndManyChunks) {
  Entry s = tensor("step", {}, "int64");
  s.chunks.push_back(chunk({}, {}, "__0_0.distcp", 0, 8));
  expect_same(s, "int64");

  Entry many = tensor("big", {kSidecarChunkLimit + 1});
  for (uint64_t i = 0; i <= kSidecarChunkLimit; ++i) many.chunks.push_back(chunk({i}, {1}, "f", i * 4, 4));
  expect_same(many, "float32");

  Entry at_limit = tensor("limit", {kSidecarChunkLimit});
  for (uint64_t i = 0; i < kSidecarChunkLimit; ++i) at_limit.chunks.push_back(chunk({i}, {1}, "f", i * 4, 4));
  expect_same(at_limit, "float32");
}

TEST(DcpSidecarText, NamesThatNeedEscaping) {
  const std::string names[] = {
      "quote\"back\\slash", "tab\tnew\nline\x01\x1f", "del\x7f", "utf8 \xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80",
      "bad \xff\xfe utf8", "truncated \xe2\x82", "slash/and%percent", "",
  };
  for (const auto& n : names) {
    Entry e = tensor(n, {2});
    e.chunks.push_back(chunk({0}, {2}, n.empty() ? "x" : n, 0, 8));
    expect_same(e, "float32");
  }
}

TEST(DcpSidecarText, McoreShapes) {
  Entry e = tensor("m", {4, 4});
  e.chunks.push_back(chunk({0, 0}, {4, 4}, "f", 0, 64));
  e.mcore_orig_shape = nlohmann::json::parse(R"([2, 8, [1, 2], {"z": [3], "a": {}}, [], "s\"q"])");
  expect_same(e, "float32");
  e.mcore_orig_shape = nlohmann::json::parse("[]");
  expect_same(e, "float32");
  e.mcore_orig_shape = nlohmann::json::parse("16");
  expect_same(e, "float32");
}
