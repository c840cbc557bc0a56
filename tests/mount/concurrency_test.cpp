// 16 threads reading random ranges of every file of a fixture through one mount, for a bounded
// time; every byte is compared with what the in-process tree (itself checked against
// manifest.json by the unit tier) says the file holds.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <random>
#include <thread>

#include "formats/detect/checkpoint.h"
#include "tests/common/manifest_check.h"
#include "tests/mount/mount_util.h"

using namespace nemofs;
using namespace nemofs::testing;

namespace {

struct FileRef {
  std::string path;
  SourcePtr data;
};

void hammer(const std::string& fixture_file, std::chrono::milliseconds budget) {
  NEMOFS_REQUIRE_FUSE();
  Checkpoint cp = open_checkpoint(data_path("real/" + fixture_file));
  std::vector<FileRef> files;
  cp.tree.walk([&](NodeId id, const Node& n) {
    if (n.type == NodeType::File) files.push_back({cp.tree.path_of(id), n.data});
  });
  ASSERT_FALSE(files.empty());
  TempDir tmp;
  Mount m(data_path("real/" + fixture_file), tmp / "mnt", {"-o", "ro"});
  ASSERT_TRUE(m.ok()) << m.result().err;

  std::atomic<uint64_t> reads{0}, bad{0};
  std::atomic<bool> stop{false};
  std::string first_bad;
  std::mutex bad_mu;
  auto worker = [&](unsigned seed) {
    std::mt19937_64 rng(seed);
    std::vector<char> got, want;
    while (!stop.load(std::memory_order_relaxed)) {
      const FileRef& f = files[rng() % files.size()];
      uint64_t size = f.data->size();
      uint64_t off = size ? rng() % (size + 1) : 0;
      size_t len = static_cast<size_t>(rng() % (size - off + 64 + 1));
      got.assign(len, 0);
      want.assign(len, 0);
      int fd = ::open((m.path() + "/" + f.path).c_str(), O_RDONLY);
      if (fd < 0) {
        ++bad;
        continue;
      }
      ssize_t n = ::pread(fd, got.data(), len, static_cast<off_t>(off));
      ::close(fd);
      size_t w = f.data->read_at(off, want.data(), len);
      if (n < 0 || static_cast<size_t>(n) != w || (w > 0 && std::memcmp(got.data(), want.data(), w) != 0)) {
        if (bad++ == 0) {
          std::lock_guard<std::mutex> l(bad_mu);
          first_bad = f.path + " at " + std::to_string(off) + "+" + std::to_string(len);
        }
      }
      ++reads;
    }
  };
  std::vector<std::thread> threads;
  for (unsigned i = 0; i < 16; ++i) threads.emplace_back(worker, 1234 + i);
  std::this_thread::sleep_for(budget);
  stop = true;
  for (auto& t : threads) t.join();
  EXPECT_EQ(bad.load(), 0u) << "first mismatch: " << first_bad;
  EXPECT_GT(reads.load(), 100u);
  std::printf("%s: %llu concurrent reads, all correct\n", fixture_file.c_str(),
              static_cast<unsigned long long>(reads.load()));
}

}  // namespace

class Concurrency : public ::testing::TestWithParam<std::string> {};

TEST_P(Concurrency, SixteenThreadsRandomRanges) { hammer(GetParam(), std::chrono::milliseconds(1500)); }

INSTANTIATE_TEST_SUITE_P(Fixtures, Concurrency,
                         ::testing::ValuesIn(all_fixture_files()),
                         [](const auto& info) { return fixture_test_name(info.param); });
