// SourceGuard and the read paths that carry it (issue 21): a source file changed after it was
// opened answers EIO (never short, zeros or foreign bytes), one replaced by rename keeps serving
// the old bytes, and the reporter hears about each changed file once. The mount tier
// (tests/mount/changed_source_test.cpp) checks the same through FUSE for every source kind.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <string>
#include <vector>

#include "formats/core/byte_source.h"
#include "formats/core/errors.h"
#include "formats/core/source_guard.h"
#include "formats/gzip/gzip_index.h"
#include "formats/gzip/gzip_source.h"
#include "fs/backends/tree_backend.h"
#include "tests/common/manifest_check.h"

namespace nemofs {
namespace {

std::mutex g_mu;
std::vector<std::string> g_reports;

void record(const std::string& path, const std::string& message) {
  std::lock_guard lk(g_mu);
  g_reports.push_back(path + "|" + message);
}

struct Dir {
  std::string path;
  Dir() {
    std::string t = (std::filesystem::temp_directory_path() / "nemofs-guard-XXXXXX").string();
    if (!::mkdtemp(t.data())) throw std::runtime_error("mkdtemp");
    path = t;
  }
  ~Dir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(f.good());
}

std::string pattern(size_t n, unsigned seed) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 131 + seed) & 0xff);
  return s;
}

class Guard : public ::testing::Test {
 protected:
  void SetUp() override {
    SourceGuard::set_reporter(&record);
    std::lock_guard lk(g_mu);
    g_reports.clear();
    path = dir.path + "/src.bin";
    bytes = pattern(64 << 10, 7);
    write_file(path, bytes);
    src = std::make_shared<FileSource>(path);
  }
  void TearDown() override { SourceGuard::set_reporter(nullptr); }

  size_t reports() {
    std::lock_guard lk(g_mu);
    return g_reports.size();
  }
  // read_at of [off, off + n) must throw SysError(EIO) naming the file as changed.
  void expect_eio(uint64_t off, size_t n) {
    std::string buf(n, '\0');
    try {
      src->read_at(off, buf.data(), n);
      ADD_FAILURE() << "read_at returned instead of EIO";
    } catch (const SysError& e) {
      EXPECT_EQ(e.err(), EIO);
      EXPECT_NE(std::string(e.what()).find(path + " changed since it was mounted; remount to see the new file"),
                std::string::npos)
          << e.what();
    }
  }
  std::string read(uint64_t off, size_t n) {
    std::string buf(n, '\0');
    EXPECT_EQ(src->read_at(off, buf.data(), n), n);
    return buf;
  }

  Dir dir;
  std::string path, bytes;
  std::shared_ptr<FileSource> src;
};

TEST_F(Guard, UnchangedFileReadsAndIsNeverReported) {
  EXPECT_EQ(read(1000, 5000), bytes.substr(1000, 5000));
  EXPECT_NO_THROW(src->verify());
  EXPECT_FALSE(src->guard().changed());
  EXPECT_EQ(reports(), 0u);
}

TEST_F(Guard, TruncatedIsEioFromThenOnAndReportedOnce) {
  ASSERT_EQ(::truncate(path.c_str(), 100), 0);
  expect_eio(1000, 100);  // past the new end: would have been short
  expect_eio(0, 50);      // still inside the file: EIO all the same
  EXPECT_TRUE(src->guard().changed());
  ASSERT_EQ(reports(), 1u);
  EXPECT_EQ(g_reports[0], path + "|" + path + " changed since it was mounted; remount to see the new file");
  // Even restored to the old bytes the guard stays changed (a remount sees the new file).
  write_file(path, bytes);
  expect_eio(0, 10);
  EXPECT_EQ(reports(), 1u);
}

TEST_F(Guard, RewrittenInPlaceSameSizeIsEio) {
  // What torch.save does to last.ckpt: open with O_TRUNC, write a file of the same size.
  write_file(path, pattern(bytes.size(), 99));
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  ASSERT_EQ(static_cast<size_t>(st.st_size), bytes.size());
  expect_eio(0, 4096);
}

TEST_F(Guard, RewriteWithoutTruncateThatKeepsTheMtimeIsEio) {
  // `cp -p` over the file: new bytes, then the old mtime put back. Only ctime tells.
  struct stat before {};
  ASSERT_EQ(::stat(path.c_str(), &before), 0);
  int fd = ::open(path.c_str(), O_WRONLY);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::pwrite(fd, "XXXX", 4, 10), 4);
  timespec times[2] = {before.st_atim, before.st_mtim};
  ASSERT_EQ(::futimens(fd, times), 0);
  ::close(fd);
  expect_eio(0, 64);
}

TEST_F(Guard, AppendedIsEio) {
  std::ofstream(path, std::ios::binary | std::ios::app) << "more";
  expect_eio(0, 64);
}

TEST_F(Guard, MtimeTouchedIsEio) {
  timespec times[2] = {{0, UTIME_OMIT}, {1234567890, 0}};
  ASSERT_EQ(::utimensat(AT_FDCWD, path.c_str(), times, 0), 0);
  expect_eio(0, 64);
}

TEST_F(Guard, ChmodIsEio) {
  ASSERT_EQ(::chmod(path.c_str(), 0400), 0);
  expect_eio(0, 64);
}

TEST_F(Guard, ReplacedByRenameKeepsServingTheOldFile) {
  write_file(path + ".new", pattern(bytes.size(), 42));
  ASSERT_EQ(::rename((path + ".new").c_str(), path.c_str()), 0);
  EXPECT_EQ(read(0, bytes.size()), bytes);
  EXPECT_NO_THROW(src->verify());
  EXPECT_EQ(reports(), 0u);
}

TEST_F(Guard, HardLinkedOrDeletedKeepsServingTheOldFile) {
  ASSERT_EQ(::link(path.c_str(), (path + ".link").c_str()), 0);
  EXPECT_EQ(read(0, 100), bytes.substr(0, 100));
  ASSERT_EQ(::unlink(path.c_str()), 0);
  ASSERT_EQ(::unlink((path + ".link").c_str()), 0);
  EXPECT_EQ(read(100, 100), bytes.substr(100, 100));
  EXPECT_EQ(reports(), 0u);
}

TEST_F(Guard, FileRangeCarriesTheGuardAndRefusesOnceChanged) {
  auto sub = make_sub(src, 4096, 8192);
  auto fr = sub->file_range(100, 1000);
  ASSERT_TRUE(fr);
  EXPECT_EQ(fr->guard, &src->guard());
  EXPECT_EQ(fr->offset, 4196u);
  ASSERT_EQ(::truncate(path.c_str(), 10), 0);
  // The span was handed out before anyone looked; whoever takes its bytes checks afterwards.
  EXPECT_THROW(fr->guard->check(), SysError);
  // From then on the view refuses without a system call.
  EXPECT_THROW(sub->file_range(100, 1000), SysError);
  EXPECT_THROW(sub->verify(), SysError);
}

TEST_F(Guard, ReadSourceSegmentsAreVerifiedAfterTheyAreTaken) {
  auto sub = make_sub(src, 4096, 8192);
  ReadResult r;
  read_source(*sub, 0, 8192, r);
  ASSERT_EQ(r.segments.size(), 1u);
  EXPECT_EQ(r.segments[0].guard, &src->guard());
  EXPECT_NO_THROW(r.verify_guards());
  write_file(path, pattern(bytes.size(), 3));
  EXPECT_THROW(r.verify_guards(), SysError);
  ReadResult again;
  EXPECT_THROW(read_source(*sub, 0, 8192, again), SysError);
}

// A source whose bytes come up short inside its size (a piece that is not a file span).
class ShortSource final : public ByteSource {
 public:
  uint64_t size() const override { return 100; }
  size_t read_at(uint64_t off, void* buf, size_t len) const override {
    size_t n = off >= 40 ? 0 : std::min<size_t>(len, 40 - off);
    std::memset(buf, 'a', n);
    return n;
  }
};

TEST(ReadSource, ShortPieceIsEioNotAShortReply) {
  ShortSource s;
  ReadResult r;
  try {
    read_source(s, 0, 100, r);
    ADD_FAILURE() << "a short read came back as " << r.total() << " bytes";
  } catch (const SysError& e) {
    EXPECT_EQ(e.err(), EIO);
  }
}

TEST(SourceGuardRule, SameContent) {
  struct stat st {};
  st.st_dev = 1;
  st.st_ino = 2;
  st.st_size = 3;
  st.st_mtim = {4, 5};
  st.st_ctim = {6, 7};
  st.st_nlink = 1;
  FileIdentity id = FileIdentity::of_stat(st);
  EXPECT_TRUE(SourceGuard::same_content(id, 1, st));
  struct stat x = st;
  x.st_ctim = {6, 8};
  EXPECT_FALSE(SourceGuard::same_content(id, 1, x));  // chmod, or a rewrite that restored mtime
  x.st_nlink = 0;
  EXPECT_TRUE(SourceGuard::same_content(id, 1, x));  // renamed over or deleted
  x = st;
  x.st_mtim = {4, 6};
  x.st_nlink = 0;
  EXPECT_FALSE(SourceGuard::same_content(id, 1, x));  // written, then deleted
  x = st;
  x.st_size = 4;
  EXPECT_FALSE(SourceGuard::same_content(id, 1, x));
  x = st;
  x.st_ino = 9;
  EXPECT_FALSE(SourceGuard::same_content(id, 1, x));
}

// The gzip block cache answers without reading the file: a changed file must still be EIO.
TEST(GzipChangedSource, CacheHitAfterChangeIsEio) {
  Dir dir;
  std::string path = dir.path + "/a.nemo";
  std::filesystem::copy_file(testing::data_path("real/nemo/asr_ctc_legacy_gz.nemo"), path);
  GzipOptions o;
  o.cache_dir = "";
  o.progress = false;
  auto gz = open_gzip(std::make_shared<FileSource>(path), "", o);
  std::string first(4096, '\0'), again(4096, '\0');
  ASSERT_EQ(gz->read_at(0, first.data(), first.size()), first.size());
  ASSERT_EQ(gz->read_at(0, again.data(), again.size()), again.size());
  EXPECT_EQ(first, again);
  EXPECT_GE(gz->stats().block_hits, 1u);
  timespec times[2] = {{0, UTIME_OMIT}, {1234567890, 0}};
  ASSERT_EQ(::utimensat(AT_FDCWD, path.c_str(), times, 0), 0);
  try {
    gz->read_at(0, again.data(), again.size());
    ADD_FAILURE() << "a cached block was served after the file changed";
  } catch (const SysError& e) {
    EXPECT_EQ(e.err(), EIO);
  }
}

}  // namespace
}  // namespace nemofs
