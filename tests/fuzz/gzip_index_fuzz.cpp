// Fuzz target: arbitrary bytes as a gzip stream. The first pass must either refuse them with a
// FormatError or index them; an indexed stream must read back identically sequentially, at random
// offsets (through access points, blocks and member boundaries), and as zlib's own gzip decoder
// reads it. Anything else (a crash, a hang, another exception, different bytes) is a finding.
#include <zlib.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "formats/core/errors.h"
#include "formats/core/hash.h"
#include "formats/gzip/gzip_index.h"

using namespace nemofs;

namespace {

// zlib's decoding of every member, or nullopt when zlib refuses the stream. Zero padding between
// and after members is skipped, like nemofs and CPython do; other bytes after a complete member
// that do not start with the gzip magic end the stream (`gzip -d`'s "trailing garbage ignored"),
// and *trailing_at says where (0 = none).
std::optional<std::string> zlib_gunzip(const uint8_t* data, size_t size, uint64_t* trailing_at) {
  std::string out;
  size_t pos = 0;
  *trailing_at = 0;
  while (pos < size) {
    if (pos > 0) {
      while (pos < size && data[pos] == 0) ++pos;
      if (pos == size) break;
      if (pos + 1 >= size || data[pos] != 0x1f || data[pos + 1] != 0x8b) {
        *trailing_at = pos;
        break;
      }
    }
    z_stream s{};
    if (inflateInit2(&s, 31) != Z_OK) abort();
    s.next_in = const_cast<Bytef*>(data + pos);
    s.avail_in = static_cast<uInt>(size - pos);
    char buf[1 << 14];
    int ret;
    do {
      s.next_out = reinterpret_cast<Bytef*>(buf);
      s.avail_out = sizeof buf;
      ret = inflate(&s, Z_NO_FLUSH);
      out.append(buf, sizeof buf - s.avail_out);
      if (out.size() > (16u << 20)) ret = Z_DATA_ERROR;
    } while (ret == Z_OK);
    size_t used = s.total_in;
    inflateEnd(&s);
    if (ret != Z_STREAM_END) return std::nullopt;
    pos += used;
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  GzipOptions opt;
  opt.min_span = 512;
  opt.max_index_ratio = 1.0;
  opt.block_size = 4096;
  opt.cache_bytes = 16384;  // tiny: evictions and parked cursors are exercised too
  opt.cache_dir = "";
  opt.progress = false;
  opt.max_uncompressed = 8u << 20;
  auto compressed = std::make_shared<MemorySource>(std::string(reinterpret_cast<const char*>(data), size));
  std::shared_ptr<const GzipSource> gz;
  try {
    gz = open_gzip(compressed, "", opt);
  } catch (const FormatError&) {
    return 0;
  }
  std::string all(gz->size(), '\0');
  if (gz->read_at(0, all.data(), all.size()) != all.size()) abort();
  uint64_t trailing_at = 0;
  auto ref = zlib_gunzip(data, size, &trailing_at);
  if (!ref || *ref != all || trailing_at != gz->index().trailing_at) abort();
  // Random reads on a fresh source (cold cache), offsets derived from the input itself.
  GzipSource fresh(compressed, std::make_shared<GzipIndex>(gz->index()), opt.cache_bytes);
  uint64_t h = fnv1a(kFnvOffset, data, size);
  std::string buf;
  for (int i = 0; i < 16 && !all.empty(); ++i) {
    h = h * 6364136223846793005ull + 1442695040888963407ull;
    uint64_t off = (h >> 11) % all.size();
    size_t len = static_cast<size_t>((h >> 40) % 20000) + 1;
    buf.assign(len, '\0');
    size_t got = fresh.read_at(off, buf.data(), len);
    if (got != std::min<uint64_t>(len, all.size() - off) || std::memcmp(buf.data(), all.data() + off, got) != 0) abort();
  }
  return 0;
}
