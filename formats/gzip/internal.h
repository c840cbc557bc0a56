// Private to formats/gzip: what the first pass, the index file and the serving source share.
#pragma once

#include <libdeflate.h>
#include <zlib.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <new>
#include <string>
#include <vector>

#include "formats/core/byte_source.h"
#include "formats/core/errors.h"

namespace nemofs::gzip_internal {

constexpr size_t kWindow = 32768;     // deflate's back-reference window
constexpr uint64_t kPointBytes = 24;  // an access point's record in the index file

// libdeflate's CRC-32 is gzip's CRC-32 (same polynomial and conditioning), 3x faster than zlib's here.
inline uint32_t crc(uint32_t c, const void* p, size_t n) { return libdeflate_crc32(c, p, n); }

// uLong is 64-bit on Linux: crc32_combine takes the full length.
inline uint32_t crc_combine(uint32_t a, uint32_t b, uint64_t len_b) {
  return static_cast<uint32_t>(crc32_combine(a, b, static_cast<z_off_t>(len_b)));
}

// A raw (headerless) inflate stream.
struct RawInflate {
  z_stream s{};
  RawInflate() {
    if (inflateInit2(&s, -15) != Z_OK) throw std::bad_alloc();
  }
  ~RawInflate() { inflateEnd(&s); }
  RawInflate(const RawInflate&) = delete;
  RawInflate& operator=(const RawInflate&) = delete;
};

[[noreturn]] inline void eio(const std::string& what) { throw SysError(EIO, what); }

}  // namespace nemofs::gzip_internal

namespace nemofs {
class GzipIndexRecorder;
}

namespace nemofs::gzip_internal {

// The indexing inflate both index builders share: the first pass over a gzip file (one per
// member) and the lazy index of a raw deflate stream (a zip entry), which serves blocks while it
// goes. Each step feeds input when needed, inflates up to one deflate block (Z_BLOCK), hands the
// new output to `sink`, and at a block boundary adds an access point when the recorder wants one
// (the window is the last 32 KiB of output, kept in front of the fresh output in `out`).
struct IndexingInflate {
  RawInflate z;
  std::vector<unsigned char> in = std::vector<unsigned char>(256 << 10);
  std::vector<unsigned char> out = std::vector<unsigned char>(kWindow + (256 << 10));
  size_t have = 0;       // bytes in `out`: up to kWindow of history, then fresh output
  uint64_t in_next = 0;  // source offset of the next byte to read into `in`
  uint64_t in_end = 0;   // where the deflate data must end (reads stop there)

  // Restarts inflating at `in` (a member's or stream's first byte, or an access point: prime
  // `bits` high bits of the byte before, and `window` as history).
  void reset(const ByteSource& src, uint64_t in, uint8_t bits, const std::string& window);
  // One step; returns Z_OK, or Z_STREAM_END once the deflate stream is complete. Truncated or
  // invalid data throws FormatError("gzip", offset, `what` + ...).
  int step(const ByteSource& src, GzipIndexRecorder& rec, const std::function<void(const unsigned char*, size_t)>& sink,
           const std::string& what);
  // Compressed offset of the first byte inflate has not consumed.
  uint64_t consumed() const { return in_next - z.s.avail_in; }
};

}  // namespace nemofs::gzip_internal
