// The index file (byte layout: formats/gzip/index_file.h): serialize, parse and load it; the
// windows of an index backed by its file; the cache folder, storing an index there, and open_gzip.
#include <fcntl.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "formats/gzip/gzip_source.h"
#include "formats/gzip/index_file.h"

#include "formats/core/checked.h"
#include "formats/core/errors.h"
#include "formats/core/io.h"
#include "formats/gzip/internal.h"

namespace nemofs {

using namespace gzip_internal;

namespace {

constexpr uint64_t kHeaderBytes = 88;     // version 1
constexpr uint64_t kHeaderBytesV2 = 96;   // version 2: + u64 trailing_at

// Version 1 when the file has no trailing bytes (every index written before version 2 existed, and
// still almost every index), 2 when it has: the common file stays bit for bit what it was.
uint64_t header_bytes(const GzipIndex& idx) { return idx.trailing_at ? kHeaderBytesV2 : kHeaderBytes; }
constexpr uint64_t kKeySpan = 64 << 10;          // bytes hashed at each end of the file for the key
constexpr uint64_t kMaxIndexFile = 2ull << 30;
constexpr const char kMagic[8] = {'N', 'E', 'M', 'O', 'F', 'S', 'G', 'Z'};

std::string hex(uint64_t v) {
  char b[17];
  std::snprintf(b, sizeof b, "%llx", static_cast<unsigned long long>(v));
  return b;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Windows

GzipIndexFile::GzipIndexFile(UniqueFd fd, std::string path) : fd_(std::move(fd)), path_(std::move(path)) {}

void GzipIndexFile::read(uint64_t off, void* buf, size_t n) const {
  size_t done = 0;
  try {
    done = io::pread_full(fd_.get(), buf, n, off);
  } catch (const SysError& e) {
    eio("gzip index file " + path_ + ": " + std::strerror(e.err()));
  }
  if (done == n) return;
  eio("gzip index file " + path_ + " ends at byte " + std::to_string(off + done) +
      ": it was truncated since it was loaded");
}

const char* GzipIndex::stored_window(size_t i, std::string& buf) const {
  const GzipPoint& p = points.at(i);
  if (!window_file) return windows.data() + p.window_off;
  // window_stored was bounded when the index was loaded (<= compressBound(32 KiB)).
  buf.resize(p.window_stored);
  window_file->read(p.window_off, buf.data(), buf.size());
  if (crc(0, buf.data(), buf.size()) != p.window_crc)
    eio("gzip index file " + window_file->path() + ": the window of access point " + std::to_string(i) +
        " changed since the file was loaded");
  return buf.data();
}

std::string GzipIndex::window(size_t i) const {
  const GzipPoint& p = points.at(i);
  std::string from_file;
  const char* stored = stored_window(i, from_file);
  if (p.window_method == 0) return std::string(stored, p.window_len);
  std::string out(p.window_len, '\0');
  uLongf n = p.window_len;
  if (uncompress(reinterpret_cast<Bytef*>(out.data()), &n, reinterpret_cast<const Bytef*>(stored), p.window_stored) != Z_OK ||
      n != p.window_len)
    eio("gzip index: the window of access point " + std::to_string(i) + " does not decode");
  return out;
}

// ---------------------------------------------------------------------------------------------
// Index file

namespace {

// Everything before the windows (header, points, block CRCs): the windows then follow in point
// order, and the file's checksum last.
std::string index_head(const GzipIndex& idx, const GzipFileKey& key) {
  const uint64_t head = header_bytes(idx);
  std::string b(head, '\0');
  std::memcpy(b.data(), kMagic, 8);
  auto* h = reinterpret_cast<unsigned char*>(b.data());
  store_le<uint32_t>(h + 8, idx.trailing_at ? 2 : 1);
  store_le<uint32_t>(h + 12, idx.block_size);
  store_le<uint64_t>(h + 16, key.file.dev);
  store_le<uint64_t>(h + 24, key.file.ino);
  store_le<uint64_t>(h + 32, key.file.size);
  store_le<int64_t>(h + 40, key.file.mtime_ns);
  store_le<uint32_t>(h + 48, key.head_crc);
  store_le<uint32_t>(h + 52, key.tail_crc);
  store_le<uint64_t>(h + 56, idx.uncompressed_size);
  store_le<uint32_t>(h + 64, idx.members);
  store_le<uint32_t>(h + 68, static_cast<uint32_t>(idx.points.size()));
  store_le<uint64_t>(h + 72, idx.block_crcs.size());
  uint64_t window_bytes = 0;
  for (const GzipPoint& p : idx.points) window_bytes += p.window_stored;
  store_le<uint64_t>(h + 80, window_bytes);
  if (idx.trailing_at) store_le<uint64_t>(h + 88, idx.trailing_at);
  b.reserve(head + idx.points.size() * kPointBytes + idx.block_crcs.size() * 4);
  for (const GzipPoint& p : idx.points) {
    unsigned char r[kPointBytes];
    store_le<uint64_t>(r, p.out);
    store_le<uint64_t>(r + 8, p.in);
    store_le<uint32_t>(r + 16, p.window_stored);
    store_le<uint16_t>(r + 20, p.window_len);
    r[22] = p.bits;
    r[23] = p.window_method;
    b.append(reinterpret_cast<const char*>(r), sizeof r);
  }
  for (uint32_t c : idx.block_crcs) {
    unsigned char r[4];
    store_le<uint32_t>(r, c);
    b.append(reinterpret_cast<const char*>(r), 4);
  }
  return b;
}

// Calls emit(data, n) with the index file's bytes in order, without a copy of the windows: the
// file is written straight from them (a copy would double the largest allocation of a first mount).
template <typename Emit>
void emit_index(const GzipIndex& idx, const GzipFileKey& key, Emit&& emit) {
  const std::string head = index_head(idx, key);
  uint32_t sum = crc(0, head.data(), head.size());
  emit(head.data(), head.size());
  std::string buf;
  for (size_t i = 0; i < idx.points.size(); ++i) {
    const GzipPoint& p = idx.points[i];
    const char* w = idx.stored_window(i, buf);
    sum = crc(sum, w, p.window_stored);
    emit(w, p.window_stored);
  }
  unsigned char r[4];
  store_le<uint32_t>(r, sum);
  emit(reinterpret_cast<const char*>(r), 4);
}

}  // namespace

std::string serialize_gzip_index(const GzipIndex& idx, const GzipFileKey& key) {
  uint64_t total = 0;
  emit_index(idx, key, [&](const char*, size_t n) { total += n; });
  // One allocation of the final size: growing by doubling (34 MiB allocated for a 16 MiB index)
  // freed large chunks, which raises glibc's mmap threshold and leaves free heap behind.
  std::string b;
  b.reserve(static_cast<size_t>(total));
  emit_index(idx, key, [&](const char* p, size_t n) { b.append(p, n); });
  return b;
}

namespace {

// What the 88-byte (version 1) or 96-byte (version 2) header says, checked against the body
// length (the file less its checksum) before anything is allocated from its counts.
struct IndexHeader {
  GzipIndex idx;  // block_size, sizes, members, trailing_at
  uint64_t head = kHeaderBytes;  // header bytes (by version)
  uint64_t np = 0, nb = 0, nw = 0;
  uint64_t tables = 0;  // bytes of points and block CRCs after the header
};

using Why = std::string*;

bool fail(Why why, const std::string& w) {
  if (why) *why = w;
  return false;
}

// `b` holds min(body, kHeaderBytesV2) bytes (at least kHeaderBytes).
bool parse_header(const unsigned char* b, uint64_t body, const GzipFileKey* expect, Why why, IndexHeader& h) {
  if (std::memcmp(b, kMagic, 8) != 0) return fail(why, "not a nemofs gzip index");
  const uint32_t version = load_le<uint32_t>(b + 8);
  if (version != 1 && version != 2) return fail(why, "unknown index version");
  h.head = version == 2 ? kHeaderBytesV2 : kHeaderBytes;
  if (body < h.head) return fail(why, "truncated");
  GzipIndex& idx = h.idx;
  idx.block_size = load_le<uint32_t>(b + 12);
  if (idx.block_size < 4096 || idx.block_size > (64u << 20)) return fail(why, "block size out of range");
  GzipFileKey key;
  key.file.dev = load_le<uint64_t>(b + 16);
  key.file.ino = load_le<uint64_t>(b + 24);
  key.file.size = load_le<uint64_t>(b + 32);
  key.file.mtime_ns = load_le<int64_t>(b + 40);
  key.head_crc = load_le<uint32_t>(b + 48);
  key.tail_crc = load_le<uint32_t>(b + 52);
  if (expect && !(key == *expect)) return fail(why, "stale (the archive changed since it was indexed)");
  idx.compressed_size = key.file.size;
  idx.uncompressed_size = load_le<uint64_t>(b + 56);
  idx.members = load_le<uint32_t>(b + 64);
  if (version == 2) {
    idx.trailing_at = load_le<uint64_t>(b + 88);
    if (idx.trailing_at == 0 || idx.trailing_at >= idx.compressed_size) return fail(why, "trailing bytes offset out of range");
  }
  h.np = load_le<uint32_t>(b + 68);
  h.nb = load_le<uint64_t>(b + 72);
  h.nw = load_le<uint64_t>(b + 80);
  // Every count is bounded by the file length before anything is allocated from it.
  auto pts = try_mul(h.np, kPointBytes);
  auto crcs = try_mul(h.nb, 4);
  auto tables = pts && crcs ? try_add(*pts, *crcs) : std::nullopt;
  auto total = tables ? try_add(h.head, *tables) : std::nullopt;
  if (total) total = try_add(*total, h.nw);
  if (!total || *total != body) return fail(why, "length does not match its counts");
  h.tables = *tables;
  if (idx.members == 0) return fail(why, "no members");
  if ((idx.uncompressed_size == 0) != (h.np == 0) || (h.np == 0) != (h.nb == 0)) return fail(why, "points and size disagree");
  return true;
}

// The points and block CRCs (`r`: h.tables bytes). Window offsets come out relative to the
// windows' start.
bool parse_tables(IndexHeader& h, const unsigned char* r, Why why) {
  GzipIndex& idx = h.idx;
  const uint64_t np = h.np, nb = h.nb, nw = h.nw;
  idx.points.resize(np);
  uint64_t woff = 0, blocks = 0;
  for (uint64_t i = 0; i < np; ++i, r += kPointBytes) {
    GzipPoint& p = idx.points[i];
    p.out = load_le<uint64_t>(r);
    p.in = load_le<uint64_t>(r + 8);
    p.window_stored = load_le<uint32_t>(r + 16);
    p.window_len = load_le<uint16_t>(r + 20);
    p.bits = r[22];
    p.window_method = r[23];
    if (i == 0 ? p.out != 0 : p.out <= idx.points[i - 1].out) return fail(why, "access points out of order");
    if (p.out >= idx.uncompressed_size) return fail(why, "access point past the end");
    if (p.in > idx.compressed_size || (i > 0 && p.in < idx.points[i - 1].in)) return fail(why, "access point outside the archive");
    if (p.bits > 7 || (p.bits > 0 && p.in == 0)) return fail(why, "bad bit offset");
    if (p.window_len > kWindow || p.window_len > p.out) return fail(why, "bad window length");
    if (p.window_method > 1 || (p.window_method == 0 && p.window_stored != p.window_len) ||
        (p.window_method == 1 && (p.window_stored == 0 || p.window_len == 0 || p.window_stored > compressBound(kWindow))))
      return fail(why, "bad window encoding");
    p.window_off = woff;
    woff += p.window_stored;  // <= np * 2^32: no overflow
    if (woff > nw) return fail(why, "windows overrun");
    p.first_block = blocks;
    uint64_t end = i + 1 < np ? load_le<uint64_t>(r + kPointBytes) : idx.uncompressed_size;
    if (end <= p.out) return fail(why, "access points out of order");
    blocks += (end - p.out - 1) / idx.block_size + 1;
    if (blocks > nb) return fail(why, "block count too small");
  }
  if (woff != nw || blocks != nb) return fail(why, "counts disagree");
  idx.block_crcs.resize(nb);
  for (uint64_t i = 0; i < nb; ++i, r += 4) idx.block_crcs[i] = load_le<uint32_t>(r);
  return true;
}

// Reads exactly n bytes at off; false on a short read or an error.
bool pread_all(int fd, uint64_t off, void* buf, size_t n) {
  try {
    return io::pread_full(fd, buf, n, off) == n;
  } catch (const SysError&) {
    return false;
  }
}

// The index then reads its windows from `file`: offsets become the file's (windows are stored in
// point order, back to back, after the tables), and the in-memory copy goes.
void back_windows_by_file(GzipIndex& idx, std::shared_ptr<const GzipIndexFile> file) {
  uint64_t off = header_bytes(idx) + idx.points.size() * kPointBytes + idx.block_crcs.size() * 4;
  for (GzipPoint& p : idx.points) {
    p.window_off = off;
    off += p.window_stored;
  }
  std::string().swap(idx.windows);
  idx.window_file = std::move(file);
}

}  // namespace

std::optional<GzipIndex> parse_gzip_index(std::string_view bytes, const GzipFileKey* expect, std::string* why) {
  if (bytes.size() < kHeaderBytes + 4) return fail(why, "truncated"), std::nullopt;
  const auto* b = reinterpret_cast<const unsigned char*>(bytes.data());
  const size_t body = bytes.size() - 4;
  if (load_le<uint32_t>(b + body) != crc(0, b, body)) return fail(why, "checksum mismatch"), std::nullopt;
  IndexHeader h;
  if (!parse_header(b, body, expect, why, h) || !parse_tables(h, b + h.head, why)) return std::nullopt;
  const char* w = bytes.data() + h.head + h.tables;
  h.idx.windows.assign(w, h.nw);
  for (GzipPoint& p : h.idx.points) p.window_crc = crc(0, w + p.window_off, p.window_stored);
  return std::move(h.idx);
}

std::optional<GzipIndex> load_gzip_index_file(std::shared_ptr<const GzipIndexFile> file, const GzipFileKey* expect,
                                              std::string* why) {
  const int fd = file->fd();
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) return fail(why, "not a regular file"), std::nullopt;
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size > kMaxIndexFile) return fail(why, "larger than 2 GiB"), std::nullopt;
  if (size < kHeaderBytes + 4) return fail(why, "truncated"), std::nullopt;
  const uint64_t body = size - 4;
  unsigned char head[kHeaderBytesV2];
  if (!pread_all(fd, 0, head, static_cast<size_t>(std::min<uint64_t>(body, sizeof head)))) return fail(why, "short read"), std::nullopt;
  // A stale or malformed header is refused before the rest is read.
  IndexHeader h;
  if (!parse_header(head, body, expect, why, h)) return std::nullopt;
  // h.tables <= body <= 2 GiB: checked against the file's size in parse_header.
  std::string tables(static_cast<size_t>(h.tables), '\0');
  if (!pread_all(fd, h.head, tables.data(), tables.size())) return fail(why, "short read"), std::nullopt;
  uint32_t sum = crc(crc(0, head, static_cast<size_t>(h.head)), tables.data(), tables.size());
  if (!parse_tables(h, reinterpret_cast<const unsigned char*>(tables.data()), why)) return std::nullopt;
  std::string().swap(tables);
  // The windows, each read once to checksum it (file and window), and not kept.
  const uint64_t base = h.head + h.tables;
  std::string w;
  w.reserve(compressBound(kWindow));
  for (GzipPoint& p : h.idx.points) {
    w.resize(p.window_stored);  // <= compressBound(32 KiB), checked in parse_tables
    if (!pread_all(fd, base + p.window_off, w.data(), w.size())) return fail(why, "short read"), std::nullopt;
    p.window_crc = crc(0, w.data(), w.size());
    sum = crc(sum, w.data(), w.size());
    p.window_off += base;
  }
  unsigned char c[4];
  if (!pread_all(fd, body, c, 4)) return fail(why, "short read"), std::nullopt;
  if (load_le<uint32_t>(c) != sum) return fail(why, "checksum mismatch"), std::nullopt;
  h.idx.window_file = std::move(file);
  return std::move(h.idx);
}

// ---------------------------------------------------------------------------------------------
// Cache

GzipFileKey gzip_file_key(const ByteSource& src, const std::string& path) {
  struct stat st {};
  const auto* fs = dynamic_cast<const FileSource*>(&src);
  GzipFileKey k;
  if (auto id = fs ? std::nullopt : src.cache_identity()) {
    // No file to stat (a remote object): its name+identity hash stands for device and inode.
    k.file.ino = *id;
  } else {
    if (fs ? ::fstat(fs->fd(), &st) != 0 : ::stat(path.c_str(), &st) != 0) throw_sys(errno, path + ": cannot stat");
    k.file = FileIdentity::of_stat(st);
  }
  k.file.size = src.size();  // the bytes the source was opened with: those the index describes
  size_t n = static_cast<size_t>(std::min<uint64_t>(kKeySpan, k.file.size));
  std::string buf(n, '\0');
  if (n && src.read_at(0, buf.data(), n) != n) throw SysError(EIO, path + ": short read");
  k.head_crc = crc(0, buf.data(), n);
  if (n && src.read_at(k.file.size - n, buf.data(), n) != n) throw SysError(EIO, path + ": short read");
  k.tail_crc = crc(0, buf.data(), n);
  return k;
}

std::string gzip_cache_dir(const GzipOptions& opt) {
  if (opt.cache_dir) return *opt.cache_dir;
  const char* xdg = std::getenv("XDG_CACHE_HOME");
  if (xdg && xdg[0] == '/') return std::string(xdg) + "/nemofs";
  const char* home = std::getenv("HOME");
  if (!home || home[0] != '/') {
    struct passwd* pw = ::getpwuid(::getuid());
    home = pw ? pw->pw_dir : nullptr;
  }
  if (home && home[0] == '/') return std::string(home) + "/.cache/nemofs";
  return "";
}

namespace {

void mkdirs(const std::string& dir) {
  for (size_t i = 1; i <= dir.size(); ++i)
    if (i == dir.size() || dir[i] == '/') io::mkdir(dir.substr(0, i), 0700);
}

// Where the index of the file with `key` lives in the cache folder `dir`.
std::string index_path(const std::string& dir, const GzipFileKey& key) {
  return dir + "/gzip-" + hex(key.file.dev) + "-" + hex(key.file.ino) + ".idx";
}

// Temp file beside the target, then rename: a reader never sees a half-written index. With
// `keep`, the written file stays open (read-write, so the windows can be read back) and is returned.
// Not fsync'ed: a cache, rebuilt when lost.
std::shared_ptr<const GzipIndexFile> write_index_atomic(const std::string& path, const GzipIndex& idx,
                                                        const GzipFileKey& key, bool keep = false) {
  std::string tmp;
  auto file = std::make_shared<const GzipIndexFile>(io::create_temp(path + ".tmp.", tmp), path);
  const int fd = file->fd();
  // Small writes gathered into 1 MiB ones.
  std::string pending;
  pending.reserve(1 << 20);
  try {
    emit_index(idx, key, [&](const char* p, size_t n) {
      if (pending.size() + n > pending.capacity()) {
        io::write_full(fd, pending.data(), pending.size(), tmp);
        pending.clear();
      }
      if (n >= pending.capacity()) io::write_full(fd, p, n, tmp);
      else pending.append(p, n);
    });
    io::write_full(fd, pending.data(), pending.size(), tmp);
    io::rename(tmp, path);
  } catch (...) {
    io::unlink(tmp);
    throw;
  }
  if (keep) return file;
  return nullptr;
}

}  // namespace

std::string store_gzip_index(const GzipIndex& idx, const ByteSource& compressed, const std::string& path,
                             const GzipOptions& opt) {
  std::string dir = gzip_cache_dir(opt);
  if (dir.empty()) return "no cache folder";
  try {
    GzipFileKey key = gzip_file_key(compressed, path);
    if (key.file.size != idx.compressed_size) return "the index does not describe this file";
    mkdirs(dir);
    write_index_atomic(index_path(dir, key), idx, key);
    return "";
  } catch (const SysError& e) {
    return std::string("gzip index not cached: ") + e.what();
  }
}

std::shared_ptr<const GzipSource> open_gzip(const SourcePtr& compressed, const std::string& cache_key_path,
                                            const GzipOptions& opt) {
  std::string note;
  std::string file;
  GzipFileKey key;
  if (!cache_key_path.empty()) {
    std::string dir = gzip_cache_dir(opt);
    if (!dir.empty()) {
      try {
        key = gzip_file_key(*compressed, cache_key_path);
        file = index_path(dir, key);
      } catch (const SysError& e) {
        note = std::string("gzip index not cached: ") + e.what();
      }
    }
  }
  if (!file.empty()) {
    std::optional<UniqueFd> fd;
    try {
      fd = io::open_if_exists(file, O_RDONLY);
    } catch (const SysError&) {
      // Unreadable: rebuilt, as when there is none.
    }
    if (fd) {
      auto f = std::make_shared<const GzipIndexFile>(std::move(*fd), file);
      std::string why;
      if (auto idx = load_gzip_index_file(std::move(f), &key, &why))
        return std::make_shared<GzipSource>(compressed, std::make_shared<const GzipIndex>(std::move(*idx)),
                                            opt.cache_bytes, GzipIndexOrigin::LoadedFromCache);
      note = "cached gzip index " + file + " rebuilt: " + why;
    }
  }
  GzipIndex idx = build_gzip_index(*compressed, opt, cache_key_path);
  if (!file.empty()) {
    try {
      // A file rewritten during the pass must not get an index under its new identity.
      if (gzip_file_key(*compressed, cache_key_path) == key) {
        mkdirs(io::dir_of(file));
        // The file just written is the one this mount reads its windows from from now on.
        auto f = write_index_atomic(file, idx, key, true);
        back_windows_by_file(idx, std::move(f));
      } else {
        note = "gzip index not cached: the archive changed while it was indexed";
      }
    } catch (const SysError& e) {
      note = std::string("gzip index not cached: ") + e.what();
    }
  }
  return std::make_shared<GzipSource>(compressed, std::make_shared<const GzipIndex>(std::move(idx)), opt.cache_bytes,
                                      GzipIndexOrigin::Built, note);
}

}  // namespace nemofs
