// Private to formats/gzip: what the first pass, the index file and the serving source share.
#pragma once

#include <libdeflate.h>
#include <zlib.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <new>
#include <string>

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
