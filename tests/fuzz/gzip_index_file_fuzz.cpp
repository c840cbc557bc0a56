// Fuzz target: arbitrary bytes as a persisted gzip index file. Parsing must refuse anything that is
// not a well-formed index, and must never crash or allocate more than the file's own size
// suggests. The bytes are tried as they are (the checksum usually rejects them) and with a valid
// checksum appended (so the structural checks behind it are reached). An accepted index is then
// used to read a fixed gzip stream: reads may fail with SysError (the index need not describe that
// stream), but must not crash or hang. Each try also goes through the pread loader (the bytes in
// a memfd), which must accept exactly what the in-memory parser accepts; its index reads windows
// from the file, also after the file is cut in half under it.
#include <sys/mman.h>
#include <unistd.h>
#include <zlib.h>

#include <cstddef>
#include <cstdlib>
#include <cstdint>
#include <string>
#include <utility>

#include "formats/core/checked.h"
#include "formats/core/errors.h"
#include "formats/gzip/gzip_index.h"

using namespace nemofs;

namespace {

// The stream the seed index files were built for (tests/corpus/seeds/gzip_index_file/README).
const std::string& stream() {
  static const std::string s = [] {
    std::string data;
    uint32_t x = 12345;
    for (int i = 0; i < 12000; ++i) {
      x = x * 1103515245 + 12345;
      data.push_back(static_cast<char>((x >> 16) % 7 == 0 ? (x >> 8) : 'a' + (x >> 24) % 4));
    }
    z_stream z{};
    deflateInit2(&z, 6, Z_DEFLATED, 31, 1, Z_DEFAULT_STRATEGY);  // memLevel 1: many small blocks
    std::string out(deflateBound(&z, data.size()), '\0');
    z.next_in = reinterpret_cast<Bytef*>(data.data());
    z.avail_in = static_cast<uInt>(data.size());
    z.next_out = reinterpret_cast<Bytef*>(out.data());
    z.avail_out = static_cast<uInt>(out.size());
    deflate(&z, Z_FINISH);
    out.resize(z.total_out);
    deflateEnd(&z);
    return out;
  }();
  return s;
}

void exercise(const GzipIndex& idx) {
  auto src = std::make_shared<MemorySource>(stream());
  GzipSource gz(src, std::make_shared<GzipIndex>(idx), 1 << 16);
  std::string buf(70000, '\0');
  uint64_t n = gz.size();
  for (uint64_t off : {uint64_t{0}, n / 3, n / 2, n > 5 ? n - 5 : 0}) {
    try {
      gz.read_at(off, buf.data(), buf.size());
    } catch (const SysError&) {
    }
  }
}

void try_bytes(const std::string& bytes) {
  auto mem = parse_gzip_index(bytes, nullptr, nullptr);
  if (mem) exercise(*mem);
  UniqueFd owned(::memfd_create("gzip_index_file_fuzz", MFD_CLOEXEC));
  const int fd = owned.get();
  if (fd < 0) return;
  if (::write(fd, bytes.data(), bytes.size()) != static_cast<ssize_t>(bytes.size())) return;
  auto file = std::make_shared<GzipIndexFile>(std::move(owned), "memfd");
  auto loaded = load_gzip_index_file(file, nullptr, nullptr);
  if (loaded.has_value() != mem.has_value()) std::abort();  // the two loaders disagree
  if (!loaded) return;
  if (loaded->resident_window_bytes() != 0) std::abort();
  exercise(*loaded);
  if (::ftruncate(fd, static_cast<off_t>(bytes.size() / 2)) == 0) exercise(*loaded);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string bytes(reinterpret_cast<const char*>(data), size);
  try_bytes(bytes);
  unsigned char c[4];
  store_le<uint32_t>(c, static_cast<uint32_t>(crc32(0, data, static_cast<uInt>(size))));
  bytes.append(reinterpret_cast<const char*>(c), 4);
  try_bytes(bytes);
  return 0;
}

#ifdef NEMOFS_WRITE_GZIP_INDEX_SEEDS
// Writes the seed corpus: indexes of stream() as nemofs builds them, at a few spacings.
// c++ -std=c++20 -DNEMOFS_WRITE_GZIP_INDEX_SEEDS -I. tests/fuzz/gzip_index_file_fuzz.cpp
//     formats/gzip/gzip_index.cpp formats/core/*.cpp -lz -ldeflate && ./a.out tests/corpus/seeds/gzip_index_file
#include <fstream>
int main(int argc, char** argv) {
  if (argc != 2) return 2;
  int n = 0;
  for (uint64_t span : {uint64_t{700}, uint64_t{3000}, uint64_t{1} << 20}) {
    GzipOptions o;
    o.block_size = 4096;
    o.min_span = span;
    o.max_index_ratio = 1.0;
    o.progress = false;
    auto idx = build_gzip_index(MemorySource(stream()), o);
    GzipFileKey k{.file = {.dev = 1, .ino = 2, .size = stream().size(), .mtime_ns = 3}, .head_crc = 4, .tail_crc = 5};
    std::ofstream(std::string(argv[1]) + "/index_span" + std::to_string(span), std::ios::binary) << serialize_gzip_index(idx, k);
    ++n;
  }
  return n == 3 ? 0 : 1;
}
#endif
