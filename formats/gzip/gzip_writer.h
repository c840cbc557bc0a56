// gzip writer: a stream compressed as independent chunks, each one complete gzip member.
//
// Byte layout written (RFC 1952; see gzip_index.h for the member fields):
//   member 1 | member 2 | ... | member N        N = ceil(input bytes / chunk), at least 1
//   each member: 1f 8b 08 00 | MTIME 00 00 00 00 | XFL | OS ff (libdeflate's header, no name),
//                raw deflate of exactly `chunk` input bytes (the last member: the rest),
//                CRC-32 (LE) of those bytes, their count (LE)
// No member refers back into another (each starts with an empty deflate window), so chunks are
// compressed in parallel, and every member start is a random-access point for a seek index that
// needs no stored window. A multi-member file is one logical stream to every gzip reader (gzip -d/-t,
// zlib's gunzip, CPython's gzip and tarfile "r:gz", pigz, bgzip). The cost against one member is
// ~18 bytes per chunk plus the dictionary lost at each chunk start: ~0.1% at 1 MiB chunks.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

namespace nemofs {

class ChunkedGzipWriter {
 public:
  // `write(p, n)` receives the compressed bytes in order (it may throw; the error then comes out
  // of the call that triggered it). `threads` compress at once (>= 1); `level` is libdeflate's 1..12.
  ChunkedGzipWriter(std::function<void(const char*, size_t)> write, int level, unsigned threads,
                    size_t chunk = 1u << 20);
  ~ChunkedGzipWriter();
  ChunkedGzipWriter(const ChunkedGzipWriter&) = delete;
  ChunkedGzipWriter& operator=(const ChunkedGzipWriter&) = delete;

  // Where the next input bytes go: at least 1 byte of room, `n` set to how many fit. Then
  // filled(k) with k <= n bytes written there. (Lets callers read straight into the chunk.)
  char* room(size_t& n);
  void filled(size_t k);
  void write(const char* p, size_t n);  // copies through room/filled
  // Compresses what is left and hands every member to `write`. Nothing may be added after.
  void finish();

  uint64_t in_bytes() const { return in_; }
  uint64_t out_bytes() const { return out_; }
  // The CPUs this process may use, at most `cap`.
  static unsigned available_threads(unsigned cap);

 private:
  struct Slot;
  void submit();
  void write_oldest();
  std::function<void(const char*, size_t)> write_;
  int level_;
  size_t chunk_;
  std::vector<std::unique_ptr<Slot>> slots_;
  size_t next_ = 0;      // slot the current chunk is filled in
  size_t inflight_ = 0;  // submitted, not yet written; the oldest is (next_ - inflight_) mod size
  bool open_ = false;    // slot next_ holds a chunk being filled
  bool any_ = false;     // at least one member was submitted
  uint64_t in_ = 0, out_ = 0;
};

}  // namespace nemofs
