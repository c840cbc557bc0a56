// FileSink (fs/commit.h), the writer of every plain-tar commit, with write-behind made small
// (1 MiB steps, 4 MiB lag) so that a 24 MiB file goes through many rounds of it: every byte and
// every hole still arrives, and what lies behind is written out and dropped from the page cache.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "fs/edit/commit.h"

using namespace nemofs;

namespace {

constexpr uint64_t kMiB = 1 << 20;
constexpr long kTmpfsMagic = 0x01021994;

// A folder on a filesystem with a page cache of its own (tmpfs pages cannot be dropped).
std::string make_dir() {
  for (const char* base : {"/tmp", "/var/tmp"}) {
    struct statfs sf {};
    if (::statfs(base, &sf) != 0 || sf.f_type == kTmpfsMagic) continue;
    std::string tmpl = std::string(base) + "/nemofs-sink-XXXXXX";
    if (::mkdtemp(tmpl.data())) return tmpl;
  }
  std::string tmpl = "/tmp/nemofs-sink-XXXXXX";
  return ::mkdtemp(tmpl.data()) ? tmpl : std::string();
}

std::string pattern(uint64_t at, size_t n) {
  std::string s(n, '\0');
  uint64_t x = at * 0x9E3779B97F4A7C15ull + 1;
  for (size_t i = 0; i < n; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    s[i] = static_cast<char>(x);
  }
  return s;
}

}  // namespace

TEST(FileSink, WriteBehindKeepsEveryByteAndHoleAndDropsWhatIsWritten) {
  std::string dir = make_dir();
  ASSERT_FALSE(dir.empty());
  struct statfs sf {};
  ASSERT_EQ(::statfs(dir.c_str(), &sf), 0);
  const bool tmpfs = sf.f_type == kTmpfsMagic;
  const std::string src_path = dir + "/src", out_path = dir + "/out";

  // Source: 6 MiB of data, a 4 MiB hole, 14 MiB + 1234 bytes of data.
  const uint64_t hole_at = 6 * kMiB, hole_end = 10 * kMiB, size = 24 * kMiB + 1234;
  int src = ::open(src_path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  ASSERT_GE(src, 0);
  for (uint64_t off = 0; off < size; off += kMiB) {
    if (off >= hole_at && off < hole_end) continue;
    std::string s = pattern(off, static_cast<size_t>(std::min<uint64_t>(kMiB, size - off)));
    ASSERT_EQ(::pwrite(src, s.data(), s.size(), static_cast<off_t>(off)), static_cast<ssize_t>(s.size()));
  }

  int out = ::open(out_path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  ASSERT_GE(out, 0);
  std::vector<uint64_t> progress;
  FileSink sink(out, [&](uint64_t done) { progress.push_back(done); }, WriteBehind{kMiB, 4 * kMiB});
  const std::string header = pattern(999, 512);
  static const char zeros[512] = {};
  sink.bytes(header.data(), header.size());
  sink.range(src, 0, size);
  const size_t pad = (512 - size % 512) % 512;
  sink.bytes(zeros, pad);
  sink.finish();
  const uint64_t total = 512 + size + pad;
  ASSERT_EQ(sink.offset(), total);
  ASSERT_FALSE(progress.empty());
  EXPECT_EQ(progress.back(), 512 + size);

  // Residency first: reading the file back below would bring it into the page cache again.
  {
    const size_t span = 12 * kMiB, pages = span / 4096;
    void* map = ::mmap(nullptr, span, PROT_READ, MAP_SHARED, out, 0);
    ASSERT_NE(map, MAP_FAILED);
    std::vector<unsigned char> vec(pages);
    ASSERT_EQ(::mincore(map, span, vec.data()), 0);
    size_t resident = 0;
    for (unsigned char v : vec) resident += v & 1;
    ::munmap(map, span);
    if (!tmpfs) {
      EXPECT_LE(resident, pages / 4) << resident << " of the first " << pages << " pages still cached";
    }
  }

  struct stat st {};
  ASSERT_EQ(::fstat(out, &st), 0);
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), total);
  // The hole stays a hole (its block-aligned inside).
  off_t data = ::lseek(out, static_cast<off_t>(512 + hole_at + 4096), SEEK_DATA);
  EXPECT_GE(data, static_cast<off_t>(512 + hole_end - 4096));
  // Every byte.
  std::string got(kMiB, '\0'), want(kMiB, '\0');
  ASSERT_EQ(::pread(out, got.data(), 512, 0), 512);
  EXPECT_EQ(got.substr(0, 512), header);
  for (uint64_t off = 0; off < size; off += kMiB) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(kMiB, size - off));
    ASSERT_EQ(::pread(out, got.data(), n, static_cast<off_t>(512 + off)), static_cast<ssize_t>(n));
    ASSERT_EQ(::pread(src, want.data(), n, static_cast<off_t>(off)), static_cast<ssize_t>(n));
    ASSERT_EQ(std::memcmp(got.data(), want.data(), n), 0) << "at source offset " << off;
  }
  ASSERT_EQ(::pread(out, got.data(), pad, static_cast<off_t>(512 + size)), static_cast<ssize_t>(pad));
  EXPECT_EQ(got.substr(0, pad), std::string(pad, '\0'));

  ::close(out);
  ::close(src);
  std::filesystem::remove_all(dir);
}
