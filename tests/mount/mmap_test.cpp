// mmap(2) of files in a mount (what numpy.memmap and torch.from_file do): the mapped bytes must be
// the bytes read(2) returns and the manifest's sha256, whole and from a page-aligned offset, shared
// and private, with the tail of the last page zero-filled.
//
// Today only .nemo members are checked through their files list, plus every manifest tensor whose
// file the mount shows; as formats land, add their fixtures to kFixtures.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

#include "tests/common/manifest_check.h"
#include "tests/mount/mount_util.h"

using namespace nemofs::testing;

namespace {

const char* const kFixtures[] = {"nemo/asr_ctc.nemo"};

std::string pread_all(int fd, size_t size, off_t off = 0) {
  std::string out(size, '\0');
  size_t got = 0;
  while (got < size) {
    ssize_t n = ::pread(fd, out.data() + got, size - got, off + static_cast<off_t>(got));
    if (n <= 0) break;
    got += static_cast<size_t>(n);
  }
  out.resize(got);
  return out;
}

// Checks one mounted file with mmap against read(2) and the expected sha256; returns false if the
// file is absent from the mount.
bool check_mmap(const std::string& path, const std::string& want_sha) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  struct stat st {};
  EXPECT_EQ(::fstat(fd, &st), 0);
  size_t size = static_cast<size_t>(st.st_size);
  std::string by_read = pread_all(fd, size);
  EXPECT_EQ(by_read.size(), size) << path;
  EXPECT_EQ(sha256_hex(by_read), want_sha) << path << " (read)";
  if (size == 0) {
    ::close(fd);
    return true;  // mmap of an empty file is EINVAL by definition; read(2) covered it
  }
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  for (int flags : {MAP_SHARED, MAP_PRIVATE}) {
    void* p = ::mmap(nullptr, size, PROT_READ, flags, fd, 0);
    EXPECT_NE(p, MAP_FAILED) << path << ": " << std::strerror(errno);
    if (p == MAP_FAILED) continue;
    std::string mapped(static_cast<const char*>(p), size);
    EXPECT_EQ(sha256_hex(mapped), want_sha) << path << (flags == MAP_SHARED ? " (MAP_SHARED)" : " (MAP_PRIVATE)");
    EXPECT_TRUE(mapped == by_read) << path;
    // The rest of the last page reads as zeros (POSIX), not as bytes of a neighbouring member.
    size_t tail = (page - size % page) % page;
    if (tail) {
      void* q = ::mmap(nullptr, size + tail, PROT_READ, flags, fd, 0);
      EXPECT_NE(q, MAP_FAILED) << path << ": mapping the whole last page";
      if (q == MAP_FAILED) continue;
      const char* end = static_cast<const char*>(q) + size;
      EXPECT_EQ(std::string(end, tail), std::string(tail, '\0')) << path << ": last page tail";
      ::munmap(q, size + tail);
    }
    ::munmap(p, size);
  }
  if (size > page) {
    size_t len = size - page;
    void* p = ::mmap(nullptr, len, PROT_READ, MAP_SHARED, fd, static_cast<off_t>(page));
    EXPECT_NE(p, MAP_FAILED) << path << ": at offset " << page;
    if (p != MAP_FAILED) {
      EXPECT_TRUE(std::memcmp(p, by_read.data() + page, len) == 0) << path << ": mapping at offset " << page;
      ::munmap(p, len);
    }
  }
  // A writable shared mapping of a read-only file must be refused, not silently dropped.
  void* w = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  EXPECT_EQ(w, MAP_FAILED) << path << ": PROT_WRITE|MAP_SHARED of an O_RDONLY fd";
  if (w != MAP_FAILED) ::munmap(w, size);
  ::close(fd);
  return true;
}

}  // namespace

TEST(Mmap, MountedFilesMapToTheirBytes) {
  NEMOFS_REQUIRE_FUSE();
  for (const char* file : kFixtures) {
    SCOPED_TRACE(file);
    TempDir tmp;
    Mount m(data_path(std::string("real/") + file), tmp / "mnt", {"-o", "ro"});
    ASSERT_TRUE(m.ok()) << m.result().err;
    const auto& fx = fixture(file);
    int files = 0, tensors = 0;
    if (fx.contains("files"))
      for (const auto& [rel, sha] : fx["files"].items()) {
        EXPECT_TRUE(check_mmap(m.path() + "/" + rel, sha.get<std::string>())) << rel << " missing from the mount";
        ++files;
      }
    if (fx.contains("tensors"))
      for (const auto& [rel, t] : fx["tensors"].items())
        if (check_mmap(m.path() + "/" + rel, t["sha256"].get<std::string>())) ++tensors;
    std::printf("%s: mmap-checked %d member files and %d tensor files\n", file, files, tensors);
    EXPECT_GT(files + tensors, 0) << "nothing was checked";
    EXPECT_EQ(m.umount().status, 0);
  }
}

TEST(Mmap, ConfigAndTokenizerOfAsrCtc) {
  NEMOFS_REQUIRE_FUSE();
  TempDir tmp;
  Mount m(data_path("real/nemo/asr_ctc.nemo"), tmp / "mnt", {"-o", "ro"});
  ASSERT_TRUE(m.ok()) << m.result().err;
  const auto& files = fixture("nemo/asr_ctc.nemo")["files"];
  int n = 0;
  for (const auto& [rel, sha] : files.items()) {
    if (rel == "model_config.yaml" || rel.find("tokenizer.model") != std::string::npos) {
      EXPECT_TRUE(check_mmap(m.path() + "/" + rel, sha.get<std::string>())) << rel;
      ++n;
    }
  }
  EXPECT_EQ(n, 2);
  EXPECT_EQ(m.umount().status, 0);
}
