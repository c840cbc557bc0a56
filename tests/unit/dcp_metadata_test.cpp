// DCP folders built without torch (tests/common/dcp_writer.h): a rewrite of a real fixture's
// .metadata must mount exactly like the original, and each kind of broken metadata is refused with
// its own message.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

#include "formats/core/byte_source.h"
#include "formats/core/errors.h"
#include "formats/dcp/dcp.h"
#include "formats/detect/checkpoint.h"
#include "tests/common/dcp_writer.h"
#include "tests/common/manifest_check.h"

using namespace nemofs;
using namespace nemofs::testing;
namespace fs = std::filesystem;
using dcpw::WChunk;
using dcpw::WEntry;

namespace {

class TempDir {
 public:
  TempDir() {
    char name[] = "/tmp/nemofs_dcpdir_XXXXXX";
    path_ = ::mkdtemp(name);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  void write(const std::string& rel, const std::string& bytes) const {
    std::ofstream(path_ + "/" + rel, std::ios::binary) << bytes;
  }

 private:
  std::string path_;
};

// The fixture's metadata as writer entries (planner paths kept).
std::vector<WEntry> entries_of(const std::string& fixture_dir) {
  FileSource src(data_path("real/" + fixture_dir + "/.metadata"));
  auto md = dcp::parse_metadata(src);
  std::vector<WEntry> out;
  for (const auto& e : md.entries) {
    WEntry w;
    w.fqn = e.fqn;
    w.tensor = e.is_tensor;
    w.dtype = e.torch_dtype;
    w.shape = e.shape;
    for (const auto& c : e.chunks)
      w.chunks.push_back(WChunk{c.box.offsets, c.box.sizes, c.storage.file, c.storage.offset, c.storage.length, {}});
    w.file = e.storage.file;
    w.offset = e.storage.offset;
    w.length = e.storage.length;
    for (const auto& p : e.path) {
      if (p.is_index) w.path.emplace_back(p.index);
      else w.path.emplace_back(p.key);
    }
    out.push_back(std::move(w));
  }
  return out;
}

// A copy of a fixture folder whose .metadata is rewritten from `entries`.
void rewrite(const TempDir& dir, const std::string& fixture_dir, const std::vector<WEntry>& entries) {
  for (const auto& f : fs::directory_iterator(data_path("real/" + fixture_dir)))
    if (f.path().filename() != ".metadata") fs::copy_file(f.path(), dir.path() + "/" + f.path().filename().string());
  dir.write(".metadata", dcpw::metadata_pickle(entries));
}

std::string mount_error(const std::string& path) {
  try {
    open_checkpoint(path);
  } catch (const FormatError& e) {
    return e.what();
  }
  return "(mounted)";
}

WEntry& entry(std::vector<WEntry>& es, const std::string& fqn) {
  for (auto& e : es)
    if (e.fqn == fqn) return e;
  throw std::runtime_error("no entry " + fqn);
}

void expect_refused(const std::vector<WEntry>& es, const std::string& needle) {
  TempDir d;
  rewrite(d, "dcp/sharded_1d", es);
  std::string err = mount_error(d.path());
  EXPECT_NE(err.find(needle), std::string::npos) << "wanted '" << needle << "', got: " << err;
}

}  // namespace

TEST(DcpMetadata, RewrittenFixturesMountLikeTheOriginals) {
  for (const char* f : {"dcp/sharded_1d", "dcp/sharded_2d", "dcp/fsdp2_adam", "dcp/single"}) {
    TempDir d;
    rewrite(d, f, entries_of(f));
    auto cp = open_checkpoint(d.path());
    auto bad = check_tensors_and_values(tree_view(cp.tree), fixture(f));
    EXPECT_TRUE(bad.empty()) << f << ": " << ::testing::PrintToString(bad);
  }
}

TEST(DcpMetadata, MissingChunkIsRefused) {
  auto es = entries_of("dcp/sharded_1d");
  entry(es, "model.embed.weight").chunks.pop_back();
  expect_refused(es, "'model.embed.weight': missing chunk: the chunks cover");
}

TEST(DcpMetadata, ChunkWithoutStorageEntryIsRefused) {
  auto es = entries_of("dcp/sharded_1d");
  entry(es, "model.embed.weight").chunks[1].file.clear();
  expect_refused(es, "has no storage_data entry");
}

TEST(DcpMetadata, OverlappingChunksAreRefused) {
  auto es = entries_of("dcp/sharded_1d");
  auto& e = entry(es, "model.embed.weight");  // [10, 6] in dim-0 shards of 3, 3, 3, 1 rows
  e.chunks[1].offsets[0] -= 1;
  expect_refused(es, "overlaps chunk");
}

TEST(DcpMetadata, ChunkOutsideTheTensorIsRefused) {
  auto es = entries_of("dcp/sharded_1d");
  entry(es, "model.embed.weight").shape = {9, 6};
  expect_refused(es, "lies outside the tensor's shape [9, 6]");
}

TEST(DcpMetadata, ChunkBeyondItsFileIsRefused) {
  auto es = entries_of("dcp/sharded_1d");
  entry(es, "model.proj.weight").chunks[2].length += 1'000'000;
  expect_refused(es, "lies beyond the end of '__2_0.distcp'");
}

TEST(DcpMetadata, WrongDtypeIsRefused) {
  auto es = entries_of("dcp/sharded_1d");
  entry(es, "model.proj.weight").dtype = "float64";
  expect_refused(es, "chunk holds dtype F32 but .metadata says F64");
}

TEST(DcpMetadata, ItemTooSmallForTheDtypeIsRefused) {
  auto es = entries_of("dcp/sharded_1d");
  entry(es, "model.proj.weight").chunks[0].length = 20;
  expect_refused(es, "cannot hold the chunk's 96 bytes of F32");
}

TEST(DcpMetadata, MissingDataFileIsRefused) {
  auto es = entries_of("dcp/sharded_1d");
  entry(es, "model.tiny").chunks[0].file = "__9_0.distcp";
  expect_refused(es, "data file '__9_0.distcp' is missing");
}

TEST(DcpMetadata, DataFileOutsideTheFolderIsRefused) {
  auto es = entries_of("dcp/sharded_1d");
  entry(es, "model.tiny").chunks[0].file = "../sharded_2d/__0_0.distcp";
  expect_refused(es, "leaves the checkpoint folder");
}

TEST(DcpMetadata, CompressedItemsAreRefusedByName) {
  auto es = entries_of("dcp/sharded_1d");
  entry(es, "model.tiny").chunks[0].transforms = {"stream.zstd/1"};
  expect_refused(es, "transform(s) stream.zstd/1 (compressed DCP items are not supported)");
}

TEST(DcpMetadata, ItemThatIsNotAZipIsRefused) {
  auto es = entries_of("dcp/sharded_1d");
  auto& c = entry(es, "model.tiny").chunks[0];
  c.offset += 1;
  c.length -= 1;
  expect_refused(es, "is not an embedded torch.save zip");
}

TEST(DcpMetadata, NotAMetadataPickleIsRefused) {
  TempDir d;
  dcpw::PickleOut p;
  p.op(0x80);
  p.op(4);
  p.integer(7);
  p.op('.');
  d.write(".metadata", p.out);
  EXPECT_NE(mount_error(d.path()).find("not a distributed checkpoint Metadata object"), std::string::npos);
  d.write(".metadata", "garbage");
  EXPECT_NE(mount_error(d.path()).find("/.metadata:"), std::string::npos);
}

namespace {

// A synthetic DCP folder: one [rows, cols] float32 tensor in `k` dim-1 shards, every shard in
// its own torch zip inside one data file; `stored_dtype` is what the zips claim.
struct Synthetic {
  std::vector<WEntry> entries;
  std::string global;
};

Synthetic dim1_shards(const TempDir& d, uint64_t rows, uint64_t cols, uint64_t k, const std::string& stored_dtype = "float32") {
  Synthetic s;
  std::mt19937_64 rng(11);
  s.global.resize(rows * cols * 4);
  for (auto& c : s.global) c = static_cast<char>(rng());
  WEntry e;
  e.fqn = "w";
  e.shape = {rows, cols};
  std::string file;
  const uint64_t per = cols / k;
  for (uint64_t i = 0; i < k; ++i) {
    std::string bytes;
    for (uint64_t r = 0; r < rows; ++r) bytes.append(s.global, (r * cols + i * per) * 4, per * 4);
    std::string z = dcpw::torch_zip_tensor(stored_dtype, {rows, per * 4 / dcpw::dtype_size(stored_dtype)}, bytes);
    e.chunks.push_back(WChunk{{0, i * per}, {rows, per}, "__0_0.distcp", file.size(), z.size(), {}});
    file += z;
  }
  d.write("__0_0.distcp", file);
  s.entries.push_back(e);
  d.write(".metadata", dcpw::metadata_pickle(s.entries));
  return s;
}

std::string read_all(const Tree& t, const std::string& path) {
  auto id = t.resolve(path);
  EXPECT_TRUE(id) << path;
  if (!id) return {};
  const auto& src = *t.node(*id).data;
  std::string out(src.size(), '\0');
  EXPECT_EQ(src.read_at(0, out.data(), out.size()), out.size());
  return out;
}

}  // namespace

TEST(DcpMetadata, ManyChunksAreCheckedOnFirstRead) {
  // More chunks than kEagerChunkLimit: chunk zips are opened lazily, and a dtype disagreement
  // is an I/O error on the first read of that chunk, never zeros.
  const uint64_t k = dcp::kEagerChunkLimit + 4;
  {
    TempDir d;
    auto s = dim1_shards(d, 2, k, k);
    auto cp = open_checkpoint(d.path());
    EXPECT_EQ(read_all(cp.tree, "w"), s.global);
  }
  {
    TempDir d;
    dim1_shards(d, 2, k, k, "int16");  // same byte count per chunk, other dtype
    auto cp = open_checkpoint(d.path());
    auto id = cp.tree.resolve("w");
    ASSERT_TRUE(id);
    char buf[16];
    try {
      cp.tree.node(*id).data->read_at(0, buf, sizeof buf);
      FAIL() << "read succeeded";
    } catch (const SysError& e) {
      EXPECT_NE(std::string(e.what()).find("chunk holds dtype I16 but .metadata says F32"), std::string::npos) << e.what();
    }
  }
}

// `count` float32 tensors w0.. of [2, k], each cut into k one-column chunks, in one .distcp file.
void many_tensor_shards(const TempDir& d, int count, uint64_t k) {
  std::vector<WEntry> entries;
  std::string file;
  std::mt19937_64 rng(5);
  for (int t = 0; t < count; ++t) {
    WEntry e;
    e.fqn = "w" + std::to_string(t);
    e.shape = {2, k};
    for (uint64_t i = 0; i < k; ++i) {
      std::string bytes(8, '\0');
      for (auto& c : bytes) c = static_cast<char>(rng());
      std::string z = dcpw::torch_zip_tensor("float32", {2, 1}, bytes);
      e.chunks.push_back(WChunk{{0, i}, {2, 1}, "__0_0.distcp", file.size(), z.size(), {}});
      file += z;
    }
    entries.push_back(e);
  }
  d.write("__0_0.distcp", file);
  d.write(".metadata", dcpw::metadata_pickle(entries));
}

TEST(DcpMetadata, SidecarsOfManyChunksAreRenderedOnReadWithTheSameBytes) {
  // 5 x 1000 chunks (more than kEagerChunkLimit in all, each sidecar listing its 1000 chunks):
  // the sidecars are not held in memory but rendered at each read, and must read exactly as the
  // held sidecar of the same tensor in a small checkpoint does.
  const uint64_t k = 1000;
  static_assert(5 * 1000 > dcp::kEagerChunkLimit && 1000 <= dcp::kSidecarChunkLimit);
  TempDir big, small;
  many_tensor_shards(big, 5, k);
  many_tensor_shards(small, 1, k);
  auto lazy = open_checkpoint(big.path());
  auto held = open_checkpoint(small.path());
  auto lid = lazy.tree.resolve("w0.json"), hid = held.tree.resolve("w0.json");
  ASSERT_TRUE(lid && hid);
  const ByteSource& ls = *lazy.tree.node(*lid).data;
  EXPECT_EQ(dynamic_cast<const MemorySource*>(&ls), nullptr) << "a many-chunk sidecar is held in memory";
  EXPECT_NE(dynamic_cast<const MemorySource*>(held.tree.node(*hid).data.get()), nullptr);
  std::string text = read_all(lazy.tree, "w0.json");
  EXPECT_EQ(text, read_all(held.tree, "w0.json"));
  auto j = nlohmann::json::parse(text);
  EXPECT_EQ(j["chunks"].size(), k);
  EXPECT_EQ(j["shape"], nlohmann::json::array({2, k}));
  // Reads in pieces, as the kernel makes them.
  std::string piece(50, '\0');
  ASSERT_EQ(ls.read_at(100, piece.data(), piece.size()), piece.size());
  EXPECT_EQ(piece, text.substr(100, 50));
  EXPECT_EQ(ls.read_at(text.size() - 10, piece.data(), piece.size()), 10u);
  EXPECT_EQ(ls.read_at(text.size(), piece.data(), piece.size()), 0u);
  EXPECT_EQ(nlohmann::json::parse(read_all(lazy.tree, "w4.json"))["chunks"].size(), k);
}

TEST(DcpMetadata, StridedChunksAndBytesEntries) {
  // A chunk stored transposed (stride (1, rows)), a bytes entry, and list-index planner paths.
  TempDir d;
  const uint64_t rows = 3, cols = 4;
  std::string global;
  for (uint32_t i = 0; i < rows * cols; ++i) global.append(reinterpret_cast<const char*>(&i), 4);
  // Column-major storage of the [3, 4] chunk.
  std::string colmajor;
  for (uint64_t c = 0; c < cols; ++c)
    for (uint64_t r = 0; r < rows; ++r) colmajor.append(global, (r * cols + c) * 4, 4);
  std::string z = dcpw::torch_zip_tensor("int32", {rows, cols}, colmajor, {1, rows});
  std::string note = dcpw::torch_zip_str("hello");
  std::string file = note + z;
  d.write("__0_0.distcp", file);
  std::vector<WEntry> es(3);
  es[0].fqn = "layers.0.w";
  es[0].dtype = "int32";
  es[0].shape = {rows, cols};
  es[0].chunks.push_back(WChunk{{0, 0}, {rows, cols}, "__0_0.distcp", note.size(), z.size(), {}});
  es[0].path = {std::string("layers"), int64_t{0}, std::string("w")};
  es[1].fqn = "layers.1.note";
  es[1].tensor = false;
  es[1].file = "__0_0.distcp";
  es[1].length = note.size();
  es[1].path = {std::string("layers"), int64_t{1}, std::string("note")};
  es[2].fqn = "tags.0";
  es[2].tensor = false;
  es[2].file = "__0_0.distcp";
  es[2].length = note.size();
  es[2].path = {std::string("tags"), int64_t{0}};
  d.write(".metadata", dcpw::metadata_pickle(es));
  auto cp = open_checkpoint(d.path());
  EXPECT_EQ(read_all(cp.tree, "layers/0/w"), global);
  // layers[1] holds no tensor: one JSON file for the whole item.
  EXPECT_EQ(nlohmann::json::parse(read_all(cp.tree, "layers/1.json")), nlohmann::json({{"note", "hello"}}));
  EXPECT_EQ(nlohmann::json::parse(read_all(cp.tree, "tags.json")), nlohmann::json::array({"hello"}));
  auto side = nlohmann::json::parse(read_all(cp.tree, "layers/0/w.json"));
  EXPECT_EQ(side.at("dtype"), "I32");
  EXPECT_EQ(side.at("fqn"), "layers.0.w");
}

namespace {

void expect_same_metadata(const dcp::Metadata& a, const dcp::Metadata& b, const std::string& what) {
  ASSERT_EQ(a.entries.size(), b.entries.size()) << what;
  EXPECT_EQ(a.version, b.version) << what;
  for (size_t i = 0; i < a.entries.size(); ++i) {
    const dcp::Entry& x = a.entries[i];
    const dcp::Entry& y = b.entries[i];
    EXPECT_EQ(x.fqn, y.fqn) << what;
    EXPECT_EQ(x.is_tensor, y.is_tensor) << what << " " << x.fqn;
    EXPECT_EQ(x.torch_dtype, y.torch_dtype) << what << " " << x.fqn;
    EXPECT_EQ(x.shape, y.shape) << what << " " << x.fqn;
    EXPECT_EQ(x.storage.file, y.storage.file) << what << " " << x.fqn;
    EXPECT_EQ(x.storage.offset, y.storage.offset) << what << " " << x.fqn;
    EXPECT_EQ(x.storage.length, y.storage.length) << what << " " << x.fqn;
    EXPECT_EQ(x.storage.transforms, y.storage.transforms) << what << " " << x.fqn;
    EXPECT_EQ(x.path.size(), y.path.size()) << what << " " << x.fqn;
    EXPECT_EQ(x.mcore_orig_shape, y.mcore_orig_shape) << what << " " << x.fqn;
    ASSERT_EQ(x.chunks.size(), y.chunks.size()) << what << " " << x.fqn;
    for (size_t c = 0; c < x.chunks.size(); ++c) {
      EXPECT_EQ(x.chunks[c].box.offsets, y.chunks[c].box.offsets) << what << " " << x.fqn << " chunk " << c;
      EXPECT_EQ(x.chunks[c].box.sizes, y.chunks[c].box.sizes) << what << " " << x.fqn << " chunk " << c;
      EXPECT_EQ(x.chunks[c].storage.file, y.chunks[c].storage.file) << what << " " << x.fqn << " chunk " << c;
      EXPECT_EQ(x.chunks[c].storage.offset, y.chunks[c].storage.offset) << what << " " << x.fqn << " chunk " << c;
      EXPECT_EQ(x.chunks[c].storage.length, y.chunks[c].storage.length) << what << " " << x.fqn << " chunk " << c;
    }
  }
}

}  // namespace

TEST(DcpMetadata, CompactRecordsReadLikePlainValues) {
  // The real fixtures (torch's own pickles) and a many-chunk metadata of the test writer, each
  // read both ways: compacted (every chunk and storage entry but the few whose window first
  // resolves a class) and as plain values.
  for (const char* f : {"dcp/sharded_1d", "dcp/sharded_2d", "dcp/fsdp2_adam", "dcp/single"}) {
    FileSource src(data_path(std::string("real/") + f + "/.metadata"));
    dcp::Metadata compact = dcp::parse_metadata(src);
    EXPECT_GT(compact.compacted, 40u) << f;
    expect_same_metadata(compact, dcp::parse_metadata(src, false), f);
    EXPECT_EQ(dcp::parse_metadata(src, false).compacted, 0u);
  }
  TempDir d;
  many_tensor_shards(d, 3, 500);
  FileSource src(d.path() + "/.metadata");
  dcp::Metadata compact = dcp::parse_metadata(src);
  EXPECT_GT(compact.compacted, 2900u);  // 1500 chunks + 1500 storage keys + 1500 infos, less a few
  expect_same_metadata(compact, dcp::parse_metadata(src, false), "writer");
}
