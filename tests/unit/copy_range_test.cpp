// io::copy_range: page-congruent offsets go through copy_file_range, offsets that differ modulo
// the page size (1 MiB and more) are spliced through a pipe of our own (copy_spliced), several
// pipe-fulls for the larger cases. Both must copy exactly the bytes asked for, and stop exactly at
// the source's end, also when it ends inside a page.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <random>
#include <string>

#include "formats/core/io.h"
#include "tests/unit/scratch_dir.h"

namespace nemofs {
namespace {

using testing::ScratchDir;

std::string random_bytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

std::string read_file(const std::string& path) { return io::read_file(path).value_or("(missing)"); }

struct Case {
  uint64_t in_off, out_off, len;
};

TEST(CopyRange, CongruentAndShiftedOffsetsCopyExactly) {
  ScratchDir d;
  const std::string src = random_bytes((5u << 20) + 777, 7);
  std::string in_path = d.write("in", src);
  UniqueFd in = io::open(in_path, O_RDONLY);
  // Shifted (3208 -> 64: what a safetensors export of a tar member does), congruent, shifted
  // by one byte, shifted but under 1 MiB (left to copy_file_range), shifted from offset 0.
  for (Case c : {Case{3208, 64, 4u << 20}, Case{4096, 8192, 4u << 20}, Case{1, 0, (5u << 20) + 776},
                 Case{100, 9, 1000}, Case{0, 4095, 2u << 20}}) {
    std::string out_path = d.path + "/out";
    ::unlink(out_path.c_str());
    UniqueFd out = io::open(out_path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    EXPECT_EQ(io::copy_range(in.get(), c.in_off, out.get(), c.out_off, c.len), c.len);
    std::string got = read_file(out_path);
    ASSERT_EQ(got.size(), c.out_off + c.len);
    EXPECT_TRUE(got.substr(0, c.out_off) == std::string(c.out_off, '\0'));
    EXPECT_TRUE(got.substr(c.out_off) == src.substr(c.in_off, c.len)) << c.in_off << " -> " << c.out_off;
  }
}

TEST(CopyRange, StopsExactlyAtTheSourcesEnd) {
  ScratchDir d;
  // The source ends 123 bytes into a page: nothing past it (no zeros of the rest of that page).
  const std::string src = random_bytes((3u << 20) + 123, 11);
  std::string in_path = d.write("in", src);
  UniqueFd in = io::open(in_path, O_RDONLY);
  for (uint64_t out_off : {uint64_t{64}, uint64_t{0}}) {
    std::string out_path = d.path + "/out";
    ::unlink(out_path.c_str());
    UniqueFd out = io::open(out_path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    const uint64_t in_off = 4096 + 17;
    EXPECT_EQ(io::copy_range(in.get(), in_off, out.get(), out_off, 8u << 20), src.size() - in_off);
    std::string got = read_file(out_path);
    EXPECT_EQ(got.size(), out_off + src.size() - in_off);
    EXPECT_TRUE(got.substr(out_off) == src.substr(in_off));
    EXPECT_EQ(io::copy_range(in.get(), src.size() + 5, out.get(), 3, 2u << 20), 0u);
  }
}

}  // namespace
}  // namespace nemofs

namespace nemofs {
namespace {

// io::pwrite_spliced (the export's writes of assembled bytes): vmsplice + splice in pipe-fulls,
// at unaligned offsets, must leave exactly pwrite's bytes; a small buffer goes by pwrite, and a
// file that cannot take spliced pages (O_APPEND: splice refuses it) falls back to pwrite too.
TEST(PwriteSpliced, WritesExactlyWhatPwriteWould) {
  testing::ScratchDir d;
  const std::string a = random_bytes((4u << 20) + 333, 11), b = random_bytes(1000, 12);
  std::string expect(112, 'h');
  std::string path = d.write("out", expect);
  {
    UniqueFd out = io::open(path, O_WRONLY);
    io::pwrite_spliced(out.get(), a.data(), a.size(), 112);
    io::pwrite_spliced(out.get(), b.data(), b.size(), 112 + a.size());
    io::pwrite_spliced(out.get(), a.data(), 70000, 5);  // over what was written: overwrites
  }
  expect += a + b;
  expect.replace(5, 70000, a.substr(0, 70000));
  EXPECT_EQ(read_file(path), expect);

  std::string app = d.write("append", "x");
  {
    UniqueFd out = io::open(app, O_WRONLY | O_APPEND);
    io::pwrite_spliced(out.get(), a.data(), a.size(), 1);  // O_APPEND: lands at the end, as pwrite
  }
  EXPECT_EQ(read_file(app), "x" + a);
}

}  // namespace
}  // namespace nemofs
