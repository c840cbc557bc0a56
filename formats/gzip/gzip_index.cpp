#include "formats/gzip/gzip_index.h"

#include <fcntl.h>
#include <libdeflate.h>
#include <pwd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <list>
#include <mutex>
#include <random>
#include <tuple>
#include <unordered_map>

#include "formats/core/checked.h"
#include "formats/core/errors.h"

namespace nemofs {

namespace {

constexpr size_t kWindow = 32768;
constexpr uint64_t kHeaderBytes = 88;
constexpr uint64_t kPointBytes = 24;
constexpr uint64_t kKeySpan = 64 << 10;          // bytes hashed at each end of the file for the key
constexpr uint64_t kMaxMemberHeader = 1 << 20;   // FNAME + FCOMMENT + FEXTRA, far above any real writer
constexpr uint64_t kMaxIndexFile = 2ull << 30;
constexpr const char kMagic[8] = {'N', 'E', 'M', 'O', 'F', 'S', 'G', 'Z'};

// Up to n bytes at off into buf; fewer only at the end of the file or on an error (errno is then
// set, and 0 at the end of the file).
size_t pread_upto(int fd, uint64_t off, void* buf, size_t n) {
  auto* p = static_cast<char*>(buf);
  size_t done = 0;
  errno = 0;
  while (done < n) {
    ssize_t got = ::pread(fd, p + done, n - done, static_cast<off_t>(off + done));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) break;
    done += static_cast<size_t>(got);
  }
  return done;
}

// libdeflate's CRC-32 is gzip's CRC-32 (same polynomial and conditioning), 3x faster than zlib's here.
uint32_t crc(uint32_t c, const void* p, size_t n) { return libdeflate_crc32(c, p, n); }

// uLong is 64-bit on Linux: crc32_combine takes the full length.
uint32_t crc_combine(uint32_t a, uint32_t b, uint64_t len_b) {
  return static_cast<uint32_t>(crc32_combine(a, b, static_cast<z_off_t>(len_b)));
}

struct RawInflate {
  z_stream s{};
  RawInflate() {
    if (inflateInit2(&s, -15) != Z_OK) throw std::bad_alloc();
  }
  ~RawInflate() { inflateEnd(&s); }
  RawInflate(const RawInflate&) = delete;
  RawInflate& operator=(const RawInflate&) = delete;
};

std::string hex(uint64_t v) {
  char b[17];
  std::snprintf(b, sizeof b, "%llx", static_cast<unsigned long long>(v));
  return b;
}

// Progress of the first pass on a terminal: stderr only when it is a tty, only after ~1 s.
class Progress {
 public:
  Progress(std::string label, uint64_t total, bool enabled)
      : label_(std::move(label)), total_(total), enabled_(enabled && ::isatty(2) == 1),
        start_(std::chrono::steady_clock::now()) {}
  ~Progress() {
    if (printed_ && !finished_) std::fputs("\n", stderr);
  }
  void update(uint64_t done) {
    if (!enabled_) return;
    auto now = std::chrono::steady_clock::now();
    if (now - start_ < std::chrono::seconds(1) || now - last_ < std::chrono::milliseconds(200)) return;
    last_ = now;
    printed_ = true;
    double pct = total_ ? 100.0 * static_cast<double>(done) / static_cast<double>(total_) : 100.0;
    std::fprintf(stderr, "\rnemofs: indexing %s: %3.0f%% (%.0f of %.0f MiB)", label_.c_str(), pct,
                 static_cast<double>(done) / 1048576.0, static_cast<double>(total_) / 1048576.0);
    std::fflush(stderr);
  }
  void finish() {
    if (!printed_) return;
    finished_ = true;
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    std::fprintf(stderr, "\rnemofs: indexing %s: done in %.1f s                \n", label_.c_str(), s);
  }

 private:
  std::string label_;
  uint64_t total_;
  bool enabled_;
  bool printed_ = false, finished_ = false;
  std::chrono::steady_clock::time_point start_, last_{};
};

[[noreturn]] void eio(const std::string& what) { throw SysError(EIO, what); }

}  // namespace

// ---------------------------------------------------------------------------------------------
// Member header

uint64_t parse_gzip_member_header(const ByteSource& src, uint64_t off) {
  const uint64_t size = src.size();
  unsigned char h[10];
  size_t got = off < size ? src.read_at(off, h, sizeof h) : 0;
  if (got < 2 || h[0] != 0x1f || h[1] != 0x8b) throw FormatError("gzip", off, "not a gzip member (no 1f 8b magic)");
  if (got < sizeof h) throw FormatError("gzip", off, "truncated gzip member header");
  if (h[2] != 8) throw FormatError("gzip", off + 2, "compression method " + std::to_string(h[2]) + " is not deflate (8)");
  const unsigned flg = h[3];
  if (flg & 0xe0) throw FormatError("gzip", off + 3, "reserved gzip header flag bits are set");
  std::string hdr(reinterpret_cast<const char*>(h), sizeof h);  // for FHCRC
  uint64_t pos = off + sizeof h;
  auto take = [&](size_t n, const char* what) {
    if (hdr.size() + n > kMaxMemberHeader) throw FormatError("gzip", off, "gzip member header longer than 1 MiB");
    std::string s(n, '\0');
    size_t g = pos < size ? src.read_at(pos, s.data(), n) : 0;
    if (g != n) throw FormatError("gzip", pos, std::string("truncated gzip member header (") + what + ")");
    hdr += s;
    pos += n;
    return s;
  };
  if (flg & 0x04) {
    auto x = take(2, "extra field length");
    take(load_le<uint16_t>(x.data()), "extra field");
  }
  for (unsigned bit : {0x08u, 0x10u}) {
    if (!(flg & bit)) continue;
    const char* what = bit == 0x08 ? "file name" : "comment";
    for (;;) {
      char c[256];
      uint64_t left = size > pos ? size - pos : 0;
      size_t n = static_cast<size_t>(std::min<uint64_t>(sizeof c, left));
      if (n == 0 || src.read_at(pos, c, n) != n)
        throw FormatError("gzip", pos, std::string("truncated gzip member header (") + what + ")");
      const void* z = std::memchr(c, 0, n);
      size_t use = z ? static_cast<size_t>(static_cast<const char*>(z) - c) + 1 : n;
      take(use, what);
      if (z) break;
    }
  }
  if (flg & 0x02) {
    uint32_t want = crc(0, hdr.data(), hdr.size()) & 0xffff;
    auto c = take(2, "header CRC");
    if (load_le<uint16_t>(c.data()) != want) throw FormatError("gzip", pos - 2, "gzip header CRC mismatch");
  }
  return pos;
}

// ---------------------------------------------------------------------------------------------
// Index helpers

size_t GzipIndex::point_of(uint64_t off) const {
  auto it = std::upper_bound(points.begin(), points.end(), off, [](uint64_t o, const GzipPoint& p) { return o < p.out; });
  return static_cast<size_t>(it - points.begin()) - 1;
}

uint64_t GzipIndex::block_of(uint64_t off) const {
  const GzipPoint& p = points[point_of(off)];
  return p.first_block + (off - p.out) / block_size;
}

size_t GzipIndex::point_of_block(uint64_t block) const {
  auto it = std::upper_bound(points.begin(), points.end(), block,
                             [](uint64_t b, const GzipPoint& p) { return b < p.first_block; });
  return static_cast<size_t>(it - points.begin()) - 1;
}

std::pair<uint64_t, uint64_t> GzipIndex::block_range(uint64_t block) const {
  size_t i = point_of_block(block);
  const GzipPoint& p = points[i];
  uint64_t chunk_end = i + 1 < points.size() ? points[i + 1].out : uncompressed_size;
  uint64_t s = p.out + (block - p.first_block) * block_size;
  return {s, std::min<uint64_t>(s + block_size, chunk_end)};
}

GzipIndexFile::GzipIndexFile(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}

GzipIndexFile::~GzipIndexFile() {
  if (fd_ >= 0) ::close(fd_);
}

void GzipIndexFile::read(uint64_t off, void* buf, size_t n) const {
  size_t done = pread_upto(fd_, off, buf, n);
  if (done == n) return;
  if (int err = errno) eio("gzip index file " + path_ + ": " + std::strerror(err));
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
// Recorder

GzipIndexRecorder::GzipIndexRecorder(uint32_t block_size, uint64_t min_span, double max_index_ratio)
    : min_span_(std::max<uint64_t>(min_span, 1)), ratio_(max_index_ratio) {
  if (block_size < 4096 || block_size > (64u << 20)) throw std::invalid_argument("gzip index block size out of range");
  idx_.block_size = block_size;
}

void GzipIndexRecorder::output(const unsigned char* p, size_t n) {
  while (n > 0) {
    uint64_t room = block_start_ + idx_.block_size - out_;
    size_t take = static_cast<size_t>(std::min<uint64_t>(room, n));
    seg_crc_ = crc(seg_crc_, p, take);
    seg_len_ += take;
    out_ += take;
    member_out_ += take;
    p += take;
    n -= take;
    if (out_ - block_start_ == idx_.block_size) close_block();
  }
}

void GzipIndexRecorder::flush_segment() {
  block_crc_ = crc_combine(block_crc_, seg_crc_, seg_len_);
  member_crc_ = crc_combine(member_crc_, seg_crc_, seg_len_);
  seg_crc_ = 0;
  seg_len_ = 0;
}

void GzipIndexRecorder::close_block() {
  if (out_ == block_start_) return;
  flush_segment();
  idx_.block_crcs.push_back(block_crc_);
  index_bytes_ += 4;
  block_start_ = out_;
  block_crc_ = 0;
}

void GzipIndexRecorder::member_begin() {
  flush_segment();
  member_crc_ = 0;
  member_out_ = 0;
}

uint32_t GzipIndexRecorder::member_crc() const { return crc_combine(member_crc_, seg_crc_, seg_len_); }

bool GzipIndexRecorder::want_point(size_t window_len) const {
  if (idx_.points.empty()) return true;
  if (out_ - last_point_out_ < min_span_) return false;
  double cost = static_cast<double>(index_bytes_ + kPointBytes) +
                static_cast<double>(window_estimate_) * static_cast<double>(window_len) / kWindow;
  return cost <= ratio_ * static_cast<double>(out_);
}

void GzipIndexRecorder::add_point(uint64_t in, uint8_t bits, const unsigned char* window, size_t window_len) {
  if (!idx_.points.empty() && out_ <= idx_.points.back().out) return;
  if (idx_.points.empty() && out_ != 0) throw std::logic_error("gzip index: the first access point must be at offset 0");
  if (window_len > kWindow || bits > 7) throw std::logic_error("gzip index: bad access point");
  close_block();
  GzipPoint p;
  p.out = out_;
  p.in = in;
  p.bits = bits;
  p.window_len = static_cast<uint16_t>(window_len);
  p.window_off = idx_.windows.size();
  p.first_block = idx_.block_crcs.size();
  if (window_len > 0) {
    uLongf zn = compressBound(window_len);
    std::string z(zn, '\0');
    if (compress2(reinterpret_cast<Bytef*>(z.data()), &zn, window, window_len, 1) == Z_OK && zn < window_len) {
      z.resize(zn);
      p.window_method = 1;
      idx_.windows += z;
    } else {
      p.window_method = 0;
      idx_.windows.append(reinterpret_cast<const char*>(window), window_len);
    }
    p.window_stored = static_cast<uint32_t>(idx_.windows.size() - p.window_off);
    p.window_crc = crc(0, idx_.windows.data() + p.window_off, p.window_stored);
    window_estimate_ = static_cast<uint64_t>(p.window_stored) * kWindow / window_len;
  }
  index_bytes_ += kPointBytes + p.window_stored;
  idx_.points.push_back(p);
  last_point_out_ = out_;
}

GzipIndex GzipIndexRecorder::finish(uint64_t compressed_size, uint32_t members) {
  close_block();
  // A point at the very end serves no byte.
  while (!idx_.points.empty() && idx_.points.back().out >= out_) {
    idx_.windows.resize(idx_.points.back().window_off);
    idx_.points.pop_back();
  }
  idx_.compressed_size = compressed_size;
  idx_.uncompressed_size = out_;
  idx_.members = members;
  GzipIndex r = std::move(idx_);
  idx_ = GzipIndex{};
  idx_.block_size = r.block_size;
  return r;
}

// ---------------------------------------------------------------------------------------------
// First pass

GzipIndex build_gzip_index(const ByteSource& src, const GzipOptions& opt, const std::string& label) {
  const uint64_t csize = src.size();
  GzipIndexRecorder rec(opt.block_size, opt.min_span, opt.max_index_ratio);
  Progress progress(label.empty() ? src.describe() : label, csize, opt.progress);
  RawInflate z;
  std::vector<unsigned char> in(256 << 10);
  // The last 32 KiB of output stay in front of the fresh output: the window of a new point.
  std::vector<unsigned char> out(kWindow + (256 << 10));
  size_t have = 0;
  uint32_t members = 0;
  uint64_t pos = 0;
  for (;;) {
    const uint64_t member_at = pos;
    uint64_t in_next = parse_gzip_member_header(src, pos);
    ++members;
    const std::string member = "member " + std::to_string(members) + " (at byte " + std::to_string(member_at) + ")";
    if (inflateReset(&z.s) != Z_OK) throw std::bad_alloc();
    z.s.avail_in = 0;
    rec.member_begin();
    // No back-reference reaches before a member start, so a point there needs no window.
    if (rec.want_point(0)) rec.add_point(in_next, 0, nullptr, 0);
    for (;;) {
      if (z.s.avail_in == 0) {
        size_t want = static_cast<size_t>(std::min<uint64_t>(in.size(), csize - in_next));
        size_t got = want ? src.read_at(in_next, in.data(), want) : 0;
        if (got == 0) throw FormatError("gzip", in_next, "truncated: the deflate data of " + member + " ends early");
        z.s.next_in = in.data();
        z.s.avail_in = static_cast<uInt>(got);
        in_next += got;
        progress.update(in_next);
      }
      if (have == out.size()) {
        std::memmove(out.data(), out.data() + have - kWindow, kWindow);
        have = kWindow;
      }
      z.s.next_out = out.data() + have;
      z.s.avail_out = static_cast<uInt>(out.size() - have);
      int ret = inflate(&z.s, Z_BLOCK);
      size_t produced = out.size() - have - z.s.avail_out;
      if (ret != Z_OK && ret != Z_STREAM_END && !(ret == Z_BUF_ERROR && z.s.avail_in == 0)) {
        uint64_t at = in_next - z.s.avail_in;
        throw FormatError("gzip", at, member + ": invalid deflate data (" + std::string(z.s.msg ? z.s.msg : "inflate failed") + ")");
      }
      if (produced) {
        rec.output(out.data() + have, produced);
        have += produced;
        if (opt.max_uncompressed && rec.out() > opt.max_uncompressed)
          throw FormatError("gzip", std::nullopt, "inflates to more than the limit of " + std::to_string(opt.max_uncompressed) + " bytes");
      }
      if (ret == Z_STREAM_END) break;
      if ((z.s.data_type & 128) && !(z.s.data_type & 64)) {
        size_t wl = static_cast<size_t>(std::min<uint64_t>(kWindow, rec.member_out()));
        if (rec.want_point(wl)) {
          uint64_t at = in_next - z.s.avail_in;
          rec.add_point(at, static_cast<uint8_t>(z.s.data_type & 7), out.data() + have - wl, wl);
        }
      }
    }
    const uint64_t trailer = in_next - z.s.avail_in;
    unsigned char t[8];
    size_t got = trailer < csize ? src.read_at(trailer, t, sizeof t) : 0;
    if (got != sizeof t) throw FormatError("gzip", trailer, "truncated: " + member + " ends before its 8-byte trailer");
    if (load_le<uint32_t>(t) != rec.member_crc())
      throw FormatError("gzip", trailer, member + ": CRC-32 mismatch (the data is corrupt)");
    if (load_le<uint32_t>(t + 4) != static_cast<uint32_t>(rec.member_out()))
      throw FormatError("gzip", trailer + 4, member + ": length mismatch (the data is corrupt)");
    pos = trailer + sizeof t;
    if (pos == csize) break;
    unsigned char m[2] = {0, 0};
    size_t mg = src.read_at(pos, m, 2);
    if (mg == 2 && m[0] == 0x1f && m[1] == 0x8b) continue;
    // Zero padding after the last member is accepted (as CPython does); anything else is not.
    for (uint64_t at = pos; at < csize;) {
      size_t n = static_cast<size_t>(std::min<uint64_t>(in.size(), csize - at));
      if (src.read_at(at, in.data(), n) != n) throw SysError(EIO, src.describe() + ": short read");
      for (size_t i = 0; i < n; ++i)
        if (in[i] != 0)
          throw FormatError("gzip", at + i, "trailing bytes after the last gzip member (neither a gzip member nor zero padding)");
      at += n;
    }
    break;
  }
  progress.finish();
  return rec.finish(csize, members);
}

// ---------------------------------------------------------------------------------------------
// Index file

namespace {

// Everything before the windows (header, points, block CRCs): the windows then follow in point
// order, and the file's checksum last.
std::string index_head(const GzipIndex& idx, const GzipFileKey& key) {
  std::string b(kHeaderBytes, '\0');
  std::memcpy(b.data(), kMagic, 8);
  auto* h = reinterpret_cast<unsigned char*>(b.data());
  store_le<uint32_t>(h + 8, 1);
  store_le<uint32_t>(h + 12, idx.block_size);
  store_le<uint64_t>(h + 16, key.dev);
  store_le<uint64_t>(h + 24, key.ino);
  store_le<uint64_t>(h + 32, key.size);
  store_le<int64_t>(h + 40, key.mtime_ns);
  store_le<uint32_t>(h + 48, key.head_crc);
  store_le<uint32_t>(h + 52, key.tail_crc);
  store_le<uint64_t>(h + 56, idx.uncompressed_size);
  store_le<uint32_t>(h + 64, idx.members);
  store_le<uint32_t>(h + 68, static_cast<uint32_t>(idx.points.size()));
  store_le<uint64_t>(h + 72, idx.block_crcs.size());
  uint64_t window_bytes = 0;
  for (const GzipPoint& p : idx.points) window_bytes += p.window_stored;
  store_le<uint64_t>(h + 80, window_bytes);
  b.reserve(kHeaderBytes + idx.points.size() * kPointBytes + idx.block_crcs.size() * 4);
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

// What the 88-byte header says, checked against the body length (the file less its checksum)
// before anything is allocated from its counts.
struct IndexHeader {
  GzipIndex idx;  // block_size, sizes, members
  uint64_t np = 0, nb = 0, nw = 0;
  uint64_t tables = 0;  // bytes of points and block CRCs after the header
};

using Why = std::string*;

bool fail(Why why, const std::string& w) {
  if (why) *why = w;
  return false;
}

bool parse_header(const unsigned char* b, uint64_t body, const GzipFileKey* expect, Why why, IndexHeader& h) {
  if (std::memcmp(b, kMagic, 8) != 0) return fail(why, "not a nemofs gzip index");
  if (load_le<uint32_t>(b + 8) != 1) return fail(why, "unknown index version");
  GzipIndex& idx = h.idx;
  idx.block_size = load_le<uint32_t>(b + 12);
  if (idx.block_size < 4096 || idx.block_size > (64u << 20)) return fail(why, "block size out of range");
  GzipFileKey key;
  key.dev = load_le<uint64_t>(b + 16);
  key.ino = load_le<uint64_t>(b + 24);
  key.size = load_le<uint64_t>(b + 32);
  key.mtime_ns = load_le<int64_t>(b + 40);
  key.head_crc = load_le<uint32_t>(b + 48);
  key.tail_crc = load_le<uint32_t>(b + 52);
  if (expect && !(key == *expect)) return fail(why, "stale (the archive changed since it was indexed)");
  idx.compressed_size = key.size;
  idx.uncompressed_size = load_le<uint64_t>(b + 56);
  idx.members = load_le<uint32_t>(b + 64);
  h.np = load_le<uint32_t>(b + 68);
  h.nb = load_le<uint64_t>(b + 72);
  h.nw = load_le<uint64_t>(b + 80);
  // Every count is bounded by the file length before anything is allocated from it.
  auto pts = try_mul(h.np, kPointBytes);
  auto crcs = try_mul(h.nb, 4);
  auto tables = pts && crcs ? try_add(*pts, *crcs) : std::nullopt;
  auto total = tables ? try_add(kHeaderBytes, *tables) : std::nullopt;
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
bool pread_all(int fd, uint64_t off, void* buf, size_t n) { return pread_upto(fd, off, buf, n) == n; }

// The index then reads its windows from `file`: offsets become the file's (windows are stored in
// point order, back to back, after the tables), and the in-memory copy goes.
void back_windows_by_file(GzipIndex& idx, std::shared_ptr<const GzipIndexFile> file) {
  uint64_t off = kHeaderBytes + idx.points.size() * kPointBytes + idx.block_crcs.size() * 4;
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
  if (!parse_header(b, body, expect, why, h) || !parse_tables(h, b + kHeaderBytes, why)) return std::nullopt;
  const char* w = bytes.data() + kHeaderBytes + h.tables;
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
  unsigned char head[kHeaderBytes];
  if (!pread_all(fd, 0, head, sizeof head)) return fail(why, "short read"), std::nullopt;
  // A stale or malformed header is refused before the rest is read.
  IndexHeader h;
  if (!parse_header(head, body, expect, why, h)) return std::nullopt;
  // h.tables <= body <= 2 GiB: checked against the file's size in parse_header.
  std::string tables(static_cast<size_t>(h.tables), '\0');
  if (!pread_all(fd, kHeaderBytes, tables.data(), tables.size())) return fail(why, "short read"), std::nullopt;
  uint32_t sum = crc(crc(0, head, sizeof head), tables.data(), tables.size());
  if (!parse_tables(h, reinterpret_cast<const unsigned char*>(tables.data()), why)) return std::nullopt;
  std::string().swap(tables);
  // The windows, each read once to checksum it (file and window), and not kept.
  const uint64_t base = kHeaderBytes + h.tables;
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
  if (fs ? ::fstat(fs->fd(), &st) != 0 : ::stat(path.c_str(), &st) != 0)
    throw SysError(errno, path + ": cannot stat: " + std::strerror(errno));
  GzipFileKey k;
  k.dev = static_cast<uint64_t>(st.st_dev);
  k.ino = static_cast<uint64_t>(st.st_ino);
  k.size = src.size();
  k.mtime_ns = static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
  size_t n = static_cast<size_t>(std::min<uint64_t>(kKeySpan, k.size));
  std::string buf(n, '\0');
  if (n && src.read_at(0, buf.data(), n) != n) throw SysError(EIO, path + ": short read");
  k.head_crc = crc(0, buf.data(), n);
  if (n && src.read_at(k.size - n, buf.data(), n) != n) throw SysError(EIO, path + ": short read");
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
  for (size_t i = 1; i <= dir.size(); ++i) {
    if (i == dir.size() || dir[i] == '/') {
      std::string p = dir.substr(0, i);
      if (::mkdir(p.c_str(), 0700) != 0 && errno != EEXIST) throw SysError(errno, p + ": " + std::strerror(errno));
    }
  }
}

// Temp file beside the target, then rename: a reader never sees a half-written index. With
// `keep`, the written file stays open (read-write, so the windows can be read back) and is returned.
std::shared_ptr<const GzipIndexFile> write_index_atomic(const std::string& path, const GzipIndex& idx,
                                                        const GzipFileKey& key, bool keep = false) {
  std::random_device rd;
  std::string tmp = path + ".tmp." + std::to_string(::getpid()) + "." + hex(rd());
  int fd = ::open(tmp.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) throw SysError(errno, tmp + ": " + std::strerror(errno));
  auto file = std::make_shared<const GzipIndexFile>(fd, path);  // closes fd on every path out
  // Small writes gathered into 1 MiB ones.
  std::string pending;
  pending.reserve(1 << 20);
  auto flush = [&](const char* p, size_t len) {
    size_t done = 0;
    while (done < len) {
      ssize_t n = ::write(fd, p + done, len - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        int e = n < 0 ? errno : ENOSPC;
        throw SysError(e, tmp + ": " + std::strerror(e));
      }
      done += static_cast<size_t>(n);
    }
  };
  try {
    emit_index(idx, key, [&](const char* p, size_t n) {
      if (pending.size() + n > pending.capacity()) {
        flush(pending.data(), pending.size());
        pending.clear();
      }
      if (n >= pending.capacity()) flush(p, n);
      else pending.append(p, n);
    });
    flush(pending.data(), pending.size());
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int e = errno;
    ::unlink(tmp.c_str());
    throw SysError(e, path + ": " + std::strerror(e));
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
    if (key.size != idx.compressed_size) return "the index does not describe this file";
    mkdirs(dir);
    write_index_atomic(dir + "/gzip-" + hex(key.dev) + "-" + hex(key.ino) + ".idx", idx, key);
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
        file = dir + "/gzip-" + hex(key.dev) + "-" + hex(key.ino) + ".idx";
      } catch (const SysError& e) {
        note = std::string("gzip index not cached: ") + e.what();
      }
    }
  }
  if (!file.empty()) {
    int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
      auto f = std::make_shared<const GzipIndexFile>(fd, file);
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
        mkdirs(file.substr(0, file.rfind('/')));
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

// ---------------------------------------------------------------------------------------------
// Reading

namespace {

// Buffers for inflated blocks, each one whole block_size long, mapped straight from the kernel and
// reused. Not malloc: glibc's mmap threshold rises past a block's size as soon as one large chunk
// is freed, after which blocks come from the arena of whichever FUSE thread inflated them and go
// back to it when evicted, where they stay; with 8 workers a 48 MiB cache held ~145 MiB. Here every
// buffer is either cached, held by a reader, or one of a few spares, and the rest are unmapped.
class BlockPool {
 public:
  explicit BlockPool(size_t block_size) : bytes_(round_up(block_size)) {}
  ~BlockPool() {
    for (void* p : spare_) ::munmap(p, bytes_);
  }
  BlockPool(const BlockPool&) = delete;
  BlockPool& operator=(const BlockPool&) = delete;

  unsigned char* take() {
    {
      std::lock_guard lk(mu_);
      ++live_;
      peak_ = std::max(peak_, live_);
      if (!spare_.empty()) {
        void* p = spare_.back();
        spare_.pop_back();
        return static_cast<unsigned char*>(p);
      }
    }
    void* p = ::mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
      std::lock_guard lk(mu_);
      --live_;
      throw std::bad_alloc();
    }
    return static_cast<unsigned char*>(p);
  }
  void give(unsigned char* p) {
    {
      std::lock_guard lk(mu_);
      --live_;
      if (spare_.size() < kSpare) {
        spare_.push_back(p);
        return;
      }
    }
    ::munmap(p, bytes_);
  }
  size_t buffer_bytes() const { return bytes_; }
  // Buffers out of the pool now and at most so far, in bytes (spares not counted: at most kSpare).
  std::pair<uint64_t, uint64_t> usage() const {
    std::lock_guard lk(mu_);
    return {live_ * bytes_, peak_ * bytes_};
  }

 private:
  static constexpr size_t kSpare = 4;
  static size_t round_up(size_t n) {
    const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
    return (n + page - 1) / page * page;
  }
  const size_t bytes_;
  mutable std::mutex mu_;
  std::vector<void*> spare_;
  uint64_t live_ = 0, peak_ = 0;
};

struct Block {
  unsigned char* data = nullptr;
  size_t size = 0;
  std::shared_ptr<BlockPool> pool;  // the buffer goes back when the last reader lets go
  Block(std::shared_ptr<BlockPool> p, size_t n) : data(p->take()), size(n), pool(std::move(p)) {}
  ~Block() { pool->give(data); }
  Block(const Block&) = delete;
  Block& operator=(const Block&) = delete;
};
using BlockPtr = std::shared_ptr<const Block>;

// An inflate in progress, positioned at the start of block `next_block`.
struct Cursor {
  RawInflate z;
  uint64_t next_block = 0;
  uint64_t in_next = 0;  // compressed offset of the next byte to read into `in`
  std::vector<unsigned char> in = std::vector<unsigned char>(64 << 10);
};

constexpr size_t kMaxParked = 8;

std::unique_ptr<Cursor> start_cursor(const GzipIndex& idx, const ByteSource& src, size_t pi) {
  auto c = std::make_unique<Cursor>();
  const GzipPoint& p = idx.points[pi];
  if (p.bits) {
    unsigned char ch = 0;
    if (src.read_at(p.in - 1, &ch, 1) != 1) eio(src.describe() + ": gzip data ends early");
    if (inflatePrime(&c->z.s, p.bits, ch >> (8 - p.bits)) != Z_OK) eio(src.describe() + ": cannot resume inflating");
  }
  if (p.window_len) {
    std::string w = idx.window(pi);
    if (inflateSetDictionary(&c->z.s, reinterpret_cast<const Bytef*>(w.data()), static_cast<uInt>(w.size())) != Z_OK)
      eio(src.describe() + ": cannot resume inflating");
  }
  c->in_next = p.in;
  c->next_block = p.first_block;
  return c;
}

// Inflates block k (the cursor must be at its start) and checks it against the index's CRC-32.
BlockPtr inflate_block(const GzipIndex& idx, const ByteSource& src, Cursor& c, uint64_t k,
                       const std::shared_ptr<BlockPool>& pool) {
  const auto [s, e] = idx.block_range(k);
  auto blk = std::make_shared<Block>(pool, static_cast<size_t>(e - s));
  z_stream& z = c.z.s;
  z.next_out = blk->data;
  z.avail_out = static_cast<uInt>(blk->size);
  const uint64_t csize = src.size();
  const std::string changed = "; did the archive change since it was indexed?";
  while (z.avail_out > 0) {
    if (z.avail_in == 0) {
      size_t want = c.in_next < csize ? static_cast<size_t>(std::min<uint64_t>(c.in.size(), csize - c.in_next)) : 0;
      size_t got = want ? src.read_at(c.in_next, c.in.data(), want) : 0;
      if (got == 0) eio(src.describe() + ": gzip data ends before uncompressed byte " + std::to_string(e) + changed);
      z.next_in = c.in.data();
      z.avail_in = static_cast<uInt>(got);
      c.in_next += got;
    }
    int ret = inflate(&z, Z_NO_FLUSH);
    if (ret == Z_STREAM_END) {
      // A member that ends exactly with the block: leave the transition to the next block (inflate
      // keeps answering Z_STREAM_END without consuming anything).
      if (z.avail_out == 0) break;
      // The next member follows the 8-byte trailer.
      uint64_t next = c.in_next - z.avail_in + 8;
      uint64_t d = 0;
      try {
        d = parse_gzip_member_header(src, next);
      } catch (const FormatError& fe) {
        eio(src.describe() + ": " + fe.what() + changed);
      }
      if (inflateReset(&z) != Z_OK) eio(src.describe() + ": cannot reset inflate");
      z.avail_in = 0;
      c.in_next = d;
      continue;
    }
    if (ret == Z_BUF_ERROR && z.avail_in == 0) continue;
    if (ret != Z_OK)
      eio(src.describe() + ": gzip data near compressed byte " + std::to_string(c.in_next - z.avail_in) +
          " does not inflate (" + (z.msg ? z.msg : "inflate failed") + ")" + changed);
  }
  if (crc(0, blk->data, blk->size) != idx.block_crcs[k])
    eio(src.describe() + ": uncompressed bytes " + std::to_string(s) + ".." + std::to_string(e) +
        " do not match the index (CRC-32 mismatch)" + changed);
  c.next_block = k + 1;
  return blk;
}

}  // namespace

struct GzipSource::Impl {
  std::mutex mu;
  std::condition_variable cv;
  std::list<std::pair<uint64_t, BlockPtr>> lru;  // front = most recently used
  std::unordered_map<uint64_t, std::list<std::pair<uint64_t, BlockPtr>>::iterator> cached;
  size_t bytes = 0;  // buffer bytes held by the cache (whole buffers: what it really costs)
  size_t cap = 0;
  std::shared_ptr<BlockPool> pool;
  std::list<std::unique_ptr<Cursor>> parked;      // front = most recently parked
  std::list<std::pair<uint64_t, uint64_t>> jobs;  // block ranges being inflated right now
  GzipStats stats;

  BlockPtr hit(uint64_t b) {
    auto it = cached.find(b);
    if (it == cached.end()) return nullptr;
    lru.splice(lru.begin(), lru, it->second);
    return it->second->second;
  }
  void insert(uint64_t b, BlockPtr p) {
    if (cached.count(b)) return;
    lru.emplace_front(b, p);
    cached[b] = lru.begin();
    bytes += pool->buffer_bytes();
    while (bytes > cap && lru.size() > 1) {
      bytes -= pool->buffer_bytes();
      cached.erase(lru.back().first);
      lru.pop_back();
    }
  }
};

GzipSource::GzipSource(SourcePtr compressed, std::shared_ptr<const GzipIndex> index, size_t cache_bytes,
                       GzipIndexOrigin origin, std::string note)
    : compressed_(std::move(compressed)), index_(std::move(index)), origin_(origin), note_(std::move(note)),
      impl_(std::make_unique<Impl>()) {
  impl_->pool = std::make_shared<BlockPool>(index_->block_size);
  impl_->cap = std::max<size_t>(cache_bytes, 2 * impl_->pool->buffer_bytes());
}

GzipSource::~GzipSource() = default;

uint64_t GzipSource::size() const { return index_->uncompressed_size; }

std::string GzipSource::describe() const { return compressed_->describe() + " (gzip)"; }

GzipStats GzipSource::stats() const {
  GzipStats st;
  {
    std::lock_guard lk(impl_->mu);
    st = impl_->stats;
    st.cache_bytes = impl_->bytes;
  }
  std::tie(st.block_bytes, st.block_bytes_peak) = impl_->pool->usage();
  return st;
}

size_t GzipSource::cache_capacity() const { return impl_->cap; }

size_t GzipSource::read_at(uint64_t off, void* buf, size_t len) const {
  const GzipIndex& idx = *index_;
  if (off >= idx.uncompressed_size || len == 0) return 0;
  len = static_cast<size_t>(std::min<uint64_t>(len, idx.uncompressed_size - off));
  const uint64_t last = idx.block_of(off + len - 1);
  // One inflate run produces at most a quarter of the cache, so it never evicts its own output.
  const uint64_t max_run = std::max<uint64_t>(1, impl_->cap / impl_->pool->buffer_bytes() / 4);
  Impl& m = *impl_;
  auto* out = static_cast<unsigned char*>(buf);
  size_t done = 0;
  while (done < len) {
    const uint64_t pos = off + done;
    const uint64_t b = idx.block_of(pos);
    const auto [bs, be] = idx.block_range(b);
    BlockPtr blk;
    std::unique_ptr<Cursor> cur;
    uint64_t from = 0, to = 0;
    std::list<std::pair<uint64_t, uint64_t>>::iterator job;
    {
      std::unique_lock lk(m.mu);
      for (;;) {
        if ((blk = m.hit(b))) {
          ++m.stats.block_hits;
          break;
        }
        // Another reader is already inflating this block: wait for it rather than inflate twice.
        bool busy = std::any_of(m.jobs.begin(), m.jobs.end(), [&](const auto& j) { return j.first <= b && b <= j.second; });
        if (!busy) break;
        m.cv.wait(lk);
      }
      if (!blk) {
        const size_t pi = idx.point_of_block(b);
        const uint64_t first = idx.points[pi].first_block;
        auto best = m.parked.end();
        for (auto it = m.parked.begin(); it != m.parked.end(); ++it)
          if ((*it)->next_block >= first && (*it)->next_block <= b &&
              (best == m.parked.end() || (*it)->next_block > (*best)->next_block))
            best = it;
        if (best != m.parked.end()) {
          cur = std::move(*best);
          m.parked.erase(best);
          ++m.stats.cursor_resumes;
          from = cur->next_block;
        } else {
          ++m.stats.cursor_starts;
          from = first;
        }
        to = std::min(last, b + max_run - 1);
        job = m.jobs.emplace(m.jobs.end(), from, to);
      }
    }
    if (!blk) {
      try {
        if (!cur) cur = start_cursor(idx, *compressed_, idx.point_of_block(b));
        for (uint64_t k = from; k <= to; ++k) {
          BlockPtr p = inflate_block(idx, *compressed_, *cur, k, m.pool);
          if (k == b) blk = p;
          std::lock_guard lk(m.mu);
          m.insert(k, std::move(p));
          ++m.stats.blocks_inflated;
          m.cv.notify_all();
        }
      } catch (...) {
        std::lock_guard lk(m.mu);
        m.jobs.erase(job);
        m.cv.notify_all();
        throw;
      }
      std::lock_guard lk(m.mu);
      m.jobs.erase(job);
      if (cur->next_block < idx.block_crcs.size()) {
        m.parked.push_front(std::move(cur));
        if (m.parked.size() > kMaxParked) m.parked.pop_back();
      }
      m.cv.notify_all();
    }
    size_t n = static_cast<size_t>(std::min<uint64_t>(be - pos, len - done));
    std::memcpy(out + done, blk->data + (pos - bs), n);
    done += n;
  }
  return len;
}

}  // namespace nemofs
