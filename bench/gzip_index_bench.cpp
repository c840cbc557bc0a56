// Times a gzip .nemo through the formats library, as a mount would use it: first open (one pass
// that builds the seek index, then the tar index), second open (index from the cache), 1 MiB reads
// at random offsets of the largest member, and a sequential read of that member.
// Usage: gzip_index_bench <archive.nemo> [random reads=64]   (index cache: $XDG_CACHE_HOME/nemofs)
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "formats/detect/checkpoint.h"
#include "formats/gzip/gzip_index.h"
#include "formats/nemo/nemo.h"

using namespace nemofs;
using Clock = std::chrono::steady_clock;

static double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }
// CPU seconds of this thread: on a shared, loaded machine wall time overstates what a read costs.
static double cpu_now() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s archive.nemo [random-reads]\n", argv[0]);
    return 2;
  }
  const std::string path = argv[1];
  const int nrand = argc > 2 ? std::atoi(argv[2]) : 64;
  try {
    auto t = Clock::now();
    double c = cpu_now();
    auto first = open_checkpoint(path);
    double first_s = since(t), first_cpu = cpu_now() - c;
    t = Clock::now();
    c = cpu_now();
    auto cp = open_checkpoint(path);
    double second_s = since(t), second_cpu = cpu_now() - c;
    auto nemo = std::static_pointer_cast<NemoArchive>(cp.keepalive);
    auto gz = std::dynamic_pointer_cast<const GzipSource>(nemo->archive);
    if (!gz) throw std::runtime_error("not a gzip .nemo");
    auto gz1 = std::dynamic_pointer_cast<const GzipSource>(std::static_pointer_cast<NemoArchive>(first.keepalive)->archive);

    // The largest member.
    SourcePtr big;
    std::string big_name;
    cp.tree.walk([&](NodeId id, const Node& n) {
      if (n.type == NodeType::File && (!big || n.data->size() > big->size())) {
        big = n.data;
        big_name = cp.tree.path_of(id);
      }
    });
    if (!big || big->size() < (2u << 20)) throw std::runtime_error("no member of 2 MiB or more");

    std::vector<char> buf(1 << 20);
    std::mt19937_64 rng(1);
    std::vector<double> ms, cpu_ms;
    for (int i = 0; i < nrand; ++i) {
      uint64_t off = rng() % (big->size() - buf.size());
      t = Clock::now();
      c = cpu_now();
      big->read_at(off, buf.data(), buf.size());
      ms.push_back(since(t) * 1000);
      cpu_ms.push_back((cpu_now() - c) * 1000);
    }
    std::sort(ms.begin(), ms.end());
    std::sort(cpu_ms.begin(), cpu_ms.end());

    // Sequential, on a fresh open so nothing is cached yet; 1 MiB requests like a FUSE read.
    auto cp3 = open_checkpoint(path);
    auto big3 = cp3.tree.node(*cp3.tree.resolve(big_name)).data;
    t = Clock::now();
    c = cpu_now();
    for (uint64_t off = 0; off < big3->size(); off += buf.size()) big3->read_at(off, buf.data(), buf.size());
    double seq_s = since(t), seq_cpu = cpu_now() - c;

    uint64_t index_bytes = 0;
    std::string dir = gzip_cache_dir({});
    for (auto& e : std::filesystem::directory_iterator(dir))
      if (e.path().extension() == ".idx") index_bytes += std::filesystem::file_size(e.path());
    const auto& idx = gz->index();
    std::printf("archive            %s (%.1f MiB compressed, %.1f MiB uncompressed)\n", path.c_str(),
                idx.compressed_size / 1048576.0, idx.uncompressed_size / 1048576.0);
    std::printf("first_open_s       %.3f (cpu %.3f; index %s)\n", first_s, first_cpu,
                gz1->origin() == GzipIndexOrigin::Built ? "built" : "from cache");
    std::printf("second_open_ms     %.1f (cpu %.1f; index %s)\n", second_s * 1000, second_cpu * 1000,
                gz->origin() == GzipIndexOrigin::LoadedFromCache ? "from cache" : "built");
    std::printf("access_points      %zu (blocks %zu)\n", idx.points.size(), idx.block_crcs.size());
    std::printf("random_1MiB_ms     median %.2f p90 %.2f max %.2f (cpu median %.2f; %d reads of %s)\n",
                ms[ms.size() / 2], ms[ms.size() * 9 / 10], ms.back(), cpu_ms[cpu_ms.size() / 2], nrand, big_name.c_str());
    std::printf("sequential_s       %.3f (cpu %.3f; %.1f MB/s of %s)\n", seq_s, seq_cpu, big3->size() / seq_s / 1e6,
                big_name.c_str());
    std::printf("index_ratio        %.5f (%llu bytes)\n", double(index_bytes) / double(idx.uncompressed_size),
                static_cast<unsigned long long>(index_bytes));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "gzip_index_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
