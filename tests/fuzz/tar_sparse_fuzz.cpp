// Fuzz target: the GNU sparse map parsers (formats/tar/tar.h) and the SparseSource they feed.
// The first byte picks the parser: 0 old GNU (a 512-byte 'S' header, then extension blocks),
// 1 pax 0.1 (the GNU.sparse.map value), 2 pax 1.0 (the map at the start of the data). The next 8
// bytes are the logical size (little-endian, capped at 2^40). A map the checks accept becomes a
// SparseSource over the input; it must read back the stored bytes at the regions and zeros
// elsewhere, and its pieces must tile any span (holes zero, data where the map says).
#include <cstdint>
#include <cstring>
#include <string>

#include "formats/core/byte_source.h"
#include "formats/core/errors.h"
#include "formats/tar/tar.h"
#include "tests/fuzz/fuzz_properties.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace nemofs;
  if (size < 9) return 0;
  const int which = data[0] % 3;
  uint64_t logical = 0;
  std::memcpy(&logical, data + 1, 8);
  logical &= (uint64_t{1} << 40) - 1;
  std::string rest(reinterpret_cast<const char*>(data + 9), size - 9);
  std::vector<SparseRegion> map;
  std::string stored = rest;
  try {
    if (which == 0) {
      if (rest.size() < 512) return 0;
      size_t needed = 0;
      std::string ext = rest.substr(512);
      map = parse_sparse_oldgnu(reinterpret_cast<const unsigned char*>(rest.data()), ext, 0, &needed);
      if (needed * 512 > ext.size()) return 0;  // the archive would need more blocks
      stored = ext.substr(needed * 512);
    } else if (which == 1) {
      size_t nl = rest.find('\n');
      map = parse_sparse_map01(rest.substr(0, nl), 0);
      stored = nl == std::string::npos ? std::string() : rest.substr(nl + 1);
    } else {
      uint64_t map_bytes = 0;
      map = parse_sparse_map10(rest, 0, &map_bytes);
      if (map_bytes > rest.size()) return 0;
      stored = rest.substr(static_cast<size_t>(map_bytes));
    }
    map = check_sparse_map(map, logical, stored.size(), "fuzz", 0);
  } catch (const FormatError&) {
    return 0;
  }
  std::vector<SparseSource::Extent> ext;
  for (const auto& r : map) {
    if (r.length == 0) fuzz::violation("a zero-length region survived the checks");
    ext.push_back({r.offset, r.length});
  }
  auto mem = std::make_shared<MemorySource>(stored);
  SparseSource s(mem, ext, logical);
  if (s.size() != logical) fuzz::violation("size is not the logical size");
  // Around every region edge: read, compare with what the map says, and tile with pieces.
  uint64_t at = 0;
  auto expect = [&](uint64_t off) -> int {
    uint64_t a = 0;
    for (const auto& r : map) {
      if (off >= r.offset && off < r.offset + r.length) return static_cast<unsigned char>(stored[a + off - r.offset]);
      a += r.length;
    }
    return 0;
  };
  std::vector<uint64_t> probes = {0, logical ? logical - 1 : 0};
  for (const auto& r : map) {
    for (uint64_t p : {r.offset, r.offset + r.length - 1, r.offset + r.length, r.offset ? r.offset - 1 : 0}) probes.push_back(p);
    at += r.length;
    if (probes.size() > 400) break;
  }
  for (uint64_t p : probes) {
    if (p >= logical) continue;
    unsigned char buf[64];
    size_t n = s.read_at(p, buf, sizeof buf);
    if (n != std::min<uint64_t>(sizeof buf, logical - p)) fuzz::violation("short read inside the logical size");
    for (size_t i = 0; i < n; ++i)
      if (buf[i] != expect(p + i)) fuzz::violation("read differs from the map");
    std::vector<Piece> pieces;
    s.pieces(p, n, pieces);
    uint64_t sum = 0;
    for (const auto& pc : pieces) {
      if (pc.len == 0) fuzz::violation("empty piece");
      if (pc.zero)
        for (uint64_t i = 0; i < pc.len; ++i)
          if (expect(p + sum + i) != 0) fuzz::violation("a hole piece over data");
      sum += pc.len;
    }
    if (sum != n) fuzz::violation("pieces do not tile the span");
  }
  return 0;
}
