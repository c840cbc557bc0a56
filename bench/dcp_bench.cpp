// DCP benchmarks (built and run by bench/dcp_bench.sh):
//   1. a 1 GiB float32 tensor [8192, 32768] sharded 8 ways on dim 1 (one rank file each): reading
//      it through the mounted tree in 1 MiB reads vs. reading the same bytes from one plain file
//      with pread, both from the page cache (best of several passes);
//   2. mounting (open_checkpoint) a DCP folder with 100,000 chunks (1,000 tensors x 100 ranks).
// The folders are written without torch (tests/common/dcp_writer.h) and the data is checked.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "formats/detect/checkpoint.h"
#include "tests/common/dcp_writer.h"

using namespace nemofs;
using namespace nemofs::testing;
namespace fs = std::filesystem;

namespace {

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!f) {
    std::perror(path.c_str());
    std::exit(1);
  }
}

constexpr uint64_t kRows = 8192, kCols = 32768, kShards = 8, kBlock = 1 << 20;

void make_big(const std::string& dir, const std::string& plain) {
  fs::create_directories(dir);
  const uint64_t per = kCols / kShards;
  dcpw::WEntry e;
  e.fqn = "w";
  e.shape = {kRows, kCols};
  {
    std::vector<uint32_t> row(kCols);
    std::ofstream f(plain, std::ios::binary);
    for (uint64_t r = 0; r < kRows; ++r) {
      for (uint64_t c = 0; c < kCols; ++c) row[c] = static_cast<uint32_t>(r * kCols + c);
      f.write(reinterpret_cast<const char*>(row.data()), kCols * 4);
    }
  }
  for (uint64_t i = 0; i < kShards; ++i) {
    std::string bytes(kRows * per * 4, '\0');
    auto* w = reinterpret_cast<uint32_t*>(bytes.data());
    for (uint64_t r = 0; r < kRows; ++r)
      for (uint64_t c = 0; c < per; ++c) w[r * per + c] = static_cast<uint32_t>(r * kCols + i * per + c);
    std::string z = dcpw::torch_zip_tensor("float32", {kRows, per}, bytes);
    std::string name = "__" + std::to_string(i) + "_0.distcp";
    write_file(dir + "/" + name, z);
    e.chunks.push_back(dcpw::WChunk{{0, i * per}, {kRows, per}, name, 0, z.size(), {}});
  }
  write_file(dir + "/.metadata", dcpw::metadata_pickle({e}));
}

double pass(const ByteSource& src, std::vector<char>& buf) {
  double t0 = now();
  for (uint64_t off = 0; off < src.size(); off += kBlock) src.read_at(off, buf.data(), kBlock);
  return now() - t0;
}

void bench_big(const std::string& root) {
  std::string dir = root + "/big", plain = root + "/big.raw";
  if (!fs::exists(dir + "/.metadata")) make_big(dir, plain);
  auto cp = open_checkpoint(dir);
  auto id = cp.tree.resolve("w");
  if (!id) throw std::runtime_error("no tensor w");
  const ByteSource& sharded = *cp.tree.node(*id).data;
  FileSource direct(plain);
  if (sharded.size() != direct.size()) throw std::runtime_error("size mismatch");
  std::vector<char> buf(kBlock), ref(kBlock);
  // Check every byte once (also warms the page cache for both).
  for (uint64_t off = 0; off < sharded.size(); off += kBlock) {
    sharded.read_at(off, buf.data(), kBlock);
    direct.read_at(off, ref.data(), kBlock);
    if (std::memcmp(buf.data(), ref.data(), kBlock) != 0) throw std::runtime_error("content mismatch at " + std::to_string(off));
  }
  double best_s = 1e9, best_d = 1e9;
  for (int i = 0; i < 5; ++i) {
    best_d = std::min(best_d, pass(direct, buf));
    best_s = std::min(best_s, pass(sharded, buf));
  }
  const double gib = static_cast<double>(sharded.size()) / (1ull << 30);
  std::printf("1 GiB tensor [8192, 32768] F32, 8 shards on dim 1, 1 MiB reads, page cache warm:\n");
  std::printf("  direct pread of the same bytes: %.3f s  (%.2f GiB/s)\n", best_d, gib / best_d);
  std::printf("  sharded tensor (read_at):       %.3f s  (%.2f GiB/s)  ratio %.2fx of direct\n", best_s, gib / best_s,
              best_d / best_s);
}

void bench_many(const std::string& root) {
  const int kTensors = 1000, kRanks = 100;
  const uint64_t rows_per = 8, cols = 16;
  std::string dir = root + "/many";
  if (!fs::exists(dir + "/.metadata")) {
    fs::create_directories(dir);
    std::vector<dcpw::WEntry> es(kTensors);
    std::vector<std::string> files(kRanks);
    for (int t = 0; t < kTensors; ++t) {
      es[t].fqn = "model.layers." + std::to_string(t) + ".weight";
      es[t].shape = {rows_per * kRanks, cols};
      es[t].path = {std::string("model"), std::string("layers." + std::to_string(t) + ".weight")};
      for (int r = 0; r < kRanks; ++r) {
        std::string bytes(rows_per * cols * 4, '\0');
        auto* w = reinterpret_cast<uint32_t*>(bytes.data());
        for (uint64_t k = 0; k < rows_per * cols; ++k) w[k] = static_cast<uint32_t>(t * 1000003 + r * rows_per * cols + k);
        std::string z = dcpw::torch_zip_tensor("float32", {rows_per, cols}, bytes);
        std::string name = "__" + std::to_string(r) + "_0.distcp";
        es[t].chunks.push_back(dcpw::WChunk{{r * rows_per, 0}, {rows_per, cols}, name, files[r].size(), z.size(), {}});
        files[r] += z;
      }
    }
    for (int r = 0; r < kRanks; ++r) write_file(dir + "/__" + std::to_string(r) + "_0.distcp", files[r]);
    write_file(dir + "/.metadata", dcpw::metadata_pickle(es));
  }
  double best = 1e9;
  for (int i = 0; i < 3; ++i) {
    double t0 = now();
    auto cp = open_checkpoint(dir);
    best = std::min(best, now() - t0);
    if (i == 0) {
      // Check one tensor end to end.
      auto id = cp.tree.resolve("model/layers.777.weight");
      if (!id) throw std::runtime_error("no tensor");
      const auto& src = *cp.tree.node(*id).data;
      std::vector<uint32_t> v(src.size() / 4);
      src.read_at(0, v.data(), src.size());
      for (uint64_t k = 0; k < v.size(); ++k)
        if (v[k] != static_cast<uint32_t>(777 * 1000003 + k)) throw std::runtime_error("many: content mismatch");
    }
  }
  std::printf("mount of a DCP folder with %d chunks (%d tensors x %d ranks, .metadata %llu bytes): %.3f s (best of 3)\n",
              kTensors * kRanks, kTensors, kRanks, static_cast<unsigned long long>(fs::file_size(dir + "/.metadata")), best);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: dcp_bench WORKDIR [big|many]\n");
    return 2;
  }
  std::string what = argc > 2 ? argv[2] : "all";
  try {
    if (what == "all" || what == "many") bench_many(argv[1]);
    if (what == "all" || what == "big") bench_big(argv[1]);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dcp_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
