// The FUSE edge's source read-ahead (fs/fuse/readahead.h): which reads form a stream, what is read
// ahead of it, and that the hints reach the page cache of a real file.
#include "fs/fuse/readahead.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "formats/core/io.h"
#include "tests/unit/scratch_dir.h"

namespace nemofs {
namespace {

constexpr uint64_t MiB = 1u << 20;
using P = ReadaheadPlanner;

TEST(ReadaheadPlanner, RandomSmallReadsNeverReadAhead) {
  P p;
  std::mt19937_64 rng(7);
  for (int i = 0; i < 20000; ++i) {
    uint64_t pos = (rng() % (1u << 18)) * 4096;  // 1 GiB file
    EXPECT_FALSE(p.note(5, pos, 4096)) << "read " << i << " at " << pos;
  }
}

// A sequential stream of `req`-byte reads from `start`: the hints must continue each other, stay
// within kWindow of the reader, and keep at least half the window (or the stream so far) ahead.
void check_stream(uint64_t start, uint64_t req, uint64_t total) {
  P p;
  uint64_t issued_to = 0;
  bool any = false;
  for (uint64_t pos = start; pos < start + total; pos += req) {
    auto h = p.note(3, pos, req);
    uint64_t end = pos + req, run = end - start;
    if (run < P::kTrigger) {
      EXPECT_FALSE(h) << "hint before " << P::kTrigger << " bytes of stream, at " << pos;
      continue;
    }
    if (h) {
      EXPECT_EQ(h->fd, 3);
      if (any) {
        EXPECT_EQ(h->pos, issued_to) << "hints must continue each other";
      } else {
        EXPECT_EQ(h->pos, end);
      }
      issued_to = h->pos + h->len;
      any = true;
    }
    ASSERT_TRUE(any) << "no hint after " << run << " sequential bytes";
    EXPECT_LE(issued_to, end + P::kWindow);
    uint64_t want_ahead = std::min(P::kWindow, run) / 2;
    EXPECT_GE(issued_to, end + want_ahead) << "read-ahead fell behind at " << pos;
  }
  EXPECT_TRUE(any);
}

TEST(ReadaheadPlanner, SequentialStreamsReadAheadWithinTheWindow) {
  check_stream(0, 1 * MiB, 256 * MiB);        // 1 MiB read()s
  check_stream(12345, 128 << 10, 64 * MiB);   // 128 KiB kernel read-ahead requests, unaligned start
  check_stream(7 * MiB, 4096, 8 * MiB);       // a 4 KiB-at-a-time reader is still a stream
}

TEST(ReadaheadPlanner, OutOfOrderRequestsAndInterleavedStreams) {
  P p;
  // Two streams on two descriptors and a third in another region of the first, interleaved, each
  // request pair arriving swapped (two requests in flight on different threads).
  struct S {
    int fd;
    uint64_t next;
    uint64_t hinted = 0;
  } s[3] = {{3, 0}, {4, 100 * MiB}, {3, 500 * MiB}};
  for (int round = 0; round < 64; ++round) {
    for (auto& st : s) {
      for (uint64_t pos : {st.next + MiB, st.next}) {
        if (auto h = p.note(st.fd, pos, MiB)) {
          EXPECT_EQ(h->fd, st.fd);
          EXPECT_GE(h->pos, st.next) << "hint behind the stream";
          st.hinted = h->pos + h->len;
        }
      }
      st.next += 2 * MiB;
      if (round >= 2) {
        EXPECT_GE(st.hinted, st.next) << "stream on fd " << st.fd << " round " << round;
      }
    }
  }
  // Random reads in between do not evict a stream that is still reading (LRU over 16 slots).
  for (int i = 0; i < 8; ++i) EXPECT_FALSE(p.note(9, (1000 + 37 * i) * MiB, 4096));
  EXPECT_TRUE(p.note(3, s[0].next, 8 * MiB).has_value());
}

TEST(ReadaheadPlanner, IgnoresNonFileSegments) {
  P p;
  for (uint64_t pos = 0; pos < 64 * MiB; pos += MiB) EXPECT_FALSE(p.note(-1, pos, MiB));
  EXPECT_FALSE(p.note(3, 0, 0));
}

// Pages of `fd` in [off, off + len) present in the page cache.
size_t resident_pages(int fd, uint64_t off, uint64_t len) {
  void* m = ::mmap(nullptr, len, PROT_READ, MAP_SHARED, fd, static_cast<off_t>(off));
  if (m == MAP_FAILED) return 0;
  std::vector<unsigned char> v(len / 4096);
  size_t n = 0;
  if (::mincore(m, len, v.data()) == 0)
    for (unsigned char c : v) n += c & 1;
  ::munmap(m, len);
  return n;
}

TEST(Prefetcher, HintsReachThePageCache) {
  testing::ScratchDir dir;
  std::string path = dir.path + "/f";
  const uint64_t size = 64 * MiB;
  {
    UniqueFd w(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644));
    std::string block(MiB, 'x');
    for (uint64_t i = 0; i < size / MiB; ++i) ASSERT_EQ(::write(w.get(), block.data(), MiB), (ssize_t)MiB);
    ASSERT_EQ(::fdatasync(w.get()), 0);
  }
  UniqueFd fd(::open(path.c_str(), O_RDONLY));
  ASSERT_GE(fd.get(), 0);
  ASSERT_EQ(::posix_fadvise(fd.get(), 0, 0, POSIX_FADV_DONTNEED), 0);
  if (resident_pages(fd.get(), 4 * MiB, 16 * MiB) > 16)
    GTEST_SKIP() << "this filesystem keeps the pages cached after POSIX_FADV_DONTNEED (tmpfs?)";
  Prefetcher pf;
  pf.start();
  // The first 4 MiB "read" by the reader: a stream; the hints cover what follows.
  for (uint64_t pos = 0; pos < 4 * MiB; pos += MiB) pf.note(fd.get(), pos, MiB);
  size_t got = 0;
  for (int i = 0; i < 200 && got < 4 * MiB / 4096; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    got = resident_pages(fd.get(), 4 * MiB, 4 * MiB);
  }
  pf.stop();
  EXPECT_EQ(got, 4 * MiB / 4096) << "the 4 MiB after the stream's end were not read ahead";
  // Bounded: the stream read 4 MiB, so the hints cover 4 MiB more, and the kernel's own
  // read-ahead of what the prefetcher read adds at most the device's read_ahead_kb (8 MiB on the
  // VMs here; 32 MiB allowed): nothing from 40 MiB on.
  EXPECT_EQ(resident_pages(fd.get(), 40 * MiB, 24 * MiB), 0u);
}

TEST(Prefetcher, StopsWithHintsQueuedAndRestarts) {
  Prefetcher pf;
  pf.note(3, 0, MiB);  // not running: ignored
  pf.start();
  EXPECT_TRUE(pf.running());
  for (uint64_t pos = 0; pos < 512 * MiB; pos += MiB) pf.note(1000, pos, MiB);  // a closed descriptor
  pf.stop();
  EXPECT_FALSE(pf.running());
  pf.start();
  EXPECT_TRUE(pf.running());
  pf.stop();
}

}  // namespace
}  // namespace nemofs
