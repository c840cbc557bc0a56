// The first pass: one inflate over a gzip file that checks every member and records the access
// points and block CRCs of its index (byte layout of a member: formats/gzip/index.h).
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <vector>

#include "formats/gzip/index.h"

#include "formats/core/checked.h"
#include "formats/core/errors.h"
#include "formats/gzip/internal.h"

namespace nemofs {

using namespace gzip_internal;

namespace {

constexpr uint64_t kMaxMemberHeader = 1 << 20;   // FNAME + FCOMMENT + FEXTRA, far above any real writer

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

}  // namespace

// ---------------------------------------------------------------------------------------------
// Member header

uint64_t skip_gzip_padding(const ByteSource& src, uint64_t off) {
  const uint64_t size = src.size();
  unsigned char buf[64 << 10];
  while (off < size) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(sizeof buf, size - off));
    if (src.read_at(off, buf, n) != n) throw SysError(EIO, src.describe() + ": short read");
    size_t i = 0;
    while (i < n && buf[i] == 0) ++i;
    off += i;
    if (i < n) break;
  }
  return off;
}

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

GzipIndex GzipIndexRecorder::finish(uint64_t compressed_size, uint32_t members, uint64_t trailing_at) {
  close_block();
  // A point at the very end serves no byte.
  while (!idx_.points.empty() && idx_.points.back().out >= out_) {
    idx_.windows.resize(idx_.points.back().window_off);
    idx_.points.pop_back();
  }
  idx_.compressed_size = compressed_size;
  idx_.uncompressed_size = out_;
  idx_.members = members;
  idx_.trailing_at = trailing_at;
  GzipIndex r = std::move(idx_);
  idx_ = GzipIndex{};
  idx_.block_size = r.block_size;
  return r;
}

// ---------------------------------------------------------------------------------------------
// First pass

void GzipIndexRecorder::rewind_to_last_point() {
  if (idx_.points.empty()) throw std::logic_error("gzip index: no access point to rewind to");
  const GzipPoint& p = idx_.points.back();
  idx_.block_crcs.resize(p.first_block);
  idx_.windows.resize(p.window_off + p.window_stored);
  out_ = block_start_ = last_point_out_ = p.out;
  block_crc_ = seg_crc_ = member_crc_ = 0;
  seg_len_ = 0;
  member_out_ = p.out;  // only single-stream (raw deflate) indexes rewind: its one member began at 0
  index_bytes_ = idx_.points.size() * kPointBytes + idx_.windows.size() + 4 * idx_.block_crcs.size();
}

// ---------------------------------------------------------------------------------------------
// The indexing inflate

namespace gzip_internal {

void IndexingInflate::reset(const ByteSource& src, uint64_t at, uint8_t bits, const std::string& window) {
  if (inflateReset(&z.s) != Z_OK) throw std::bad_alloc();
  z.s.avail_in = 0;
  if (bits) {
    unsigned char ch = 0;
    if (at == 0 || src.read_at(at - 1, &ch, 1) != 1) eio(src.describe() + ": deflate data ends early");
    if (inflatePrime(&z.s, bits, ch >> (8 - bits)) != Z_OK) eio(src.describe() + ": cannot resume inflating");
  }
  if (!window.empty()) {
    if (window.size() > kWindow ||
        inflateSetDictionary(&z.s, reinterpret_cast<const Bytef*>(window.data()), static_cast<uInt>(window.size())) != Z_OK)
      eio(src.describe() + ": cannot resume inflating");
    std::memcpy(out.data(), window.data(), window.size());
  }
  have = window.size();
  in_next = at;
}

int IndexingInflate::step(const ByteSource& src, GzipIndexRecorder& rec,
                          const std::function<void(const unsigned char*, size_t)>& sink, const std::string& what) {
  // At the end of the input inflate may still have output to give (the end of the last block,
  // or the stream's end): only an inflate that can make no progress means the data is cut short.
  if (z.s.avail_in == 0 && in_next < in_end) {
    size_t want = static_cast<size_t>(std::min<uint64_t>(in.size(), in_end - in_next));
    size_t got = src.read_at(in_next, in.data(), want);
    if (got == 0) throw FormatError("gzip", in_next, "truncated: the deflate data of " + what + " ends early");
    z.s.next_in = in.data();
    z.s.avail_in = static_cast<uInt>(got);
    in_next += got;
  }
  if (have == out.size()) {
    std::memmove(out.data(), out.data() + have - kWindow, kWindow);
    have = kWindow;
  }
  z.s.next_out = out.data() + have;
  z.s.avail_out = static_cast<uInt>(out.size() - have);
  int ret = inflate(&z.s, Z_BLOCK);
  size_t produced = out.size() - have - z.s.avail_out;
  if (ret == Z_BUF_ERROR && z.s.avail_in == 0 && in_next >= in_end)
    throw FormatError("gzip", in_next, "truncated: the deflate data of " + what + " ends early");
  if (ret != Z_OK && ret != Z_STREAM_END && !(ret == Z_BUF_ERROR && z.s.avail_in == 0))
    throw FormatError("gzip", consumed(),
                      what + ": invalid deflate data (" + std::string(z.s.msg ? z.s.msg : "inflate failed") + ")");
  if (produced) {
    sink(out.data() + have, produced);
    have += produced;
  }
  if (ret == Z_STREAM_END) return ret;
  if ((z.s.data_type & 128) && !(z.s.data_type & 64)) {
    size_t wl = static_cast<size_t>(std::min<uint64_t>(kWindow, rec.member_out()));
    if (rec.want_point(wl)) rec.add_point(consumed(), static_cast<uint8_t>(z.s.data_type & 7), out.data() + have - wl, wl);
  }
  return Z_OK;
}

}  // namespace gzip_internal

// ---------------------------------------------------------------------------------------------
// First pass

GzipIndex build_gzip_index(const ByteSource& src, const GzipOptions& opt, const std::string& label) {
  const uint64_t csize = src.size();
  GzipIndexRecorder rec(opt.block_size, opt.min_span, opt.max_index_ratio);
  Progress progress(label.empty() ? src.describe() : label, csize, opt.progress);
  IndexingInflate ii;
  ii.in_end = csize;
  auto sink = [&](const unsigned char* p, size_t n) {
    rec.output(p, n);
    if (opt.max_uncompressed && rec.out() > opt.max_uncompressed)
      throw FormatError("gzip", std::nullopt, "inflates to more than the limit of " + std::to_string(opt.max_uncompressed) + " bytes");
  };
  uint32_t members = 0;
  uint64_t pos = 0;
  uint64_t trailing_at = 0;
  for (;;) {
    const uint64_t member_at = pos;
    uint64_t data = parse_gzip_member_header(src, pos);
    ++members;
    const std::string member = "member " + std::to_string(members) + " (at byte " + std::to_string(member_at) + ")";
    // The output of earlier members stays in front (history for nothing: no back-reference
    // reaches before a member start, so a point there needs no window).
    if (inflateReset(&ii.z.s) != Z_OK) throw std::bad_alloc();
    ii.z.s.avail_in = 0;
    ii.in_next = data;
    rec.member_begin();
    if (rec.want_point(0)) rec.add_point(data, 0, nullptr, 0);
    while (ii.step(src, rec, sink, member) != Z_STREAM_END) progress.update(ii.in_next);
    const uint64_t trailer = ii.consumed();
    unsigned char t[8];
    size_t got = trailer < csize ? src.read_at(trailer, t, sizeof t) : 0;
    if (got != sizeof t) throw FormatError("gzip", trailer, "truncated: " + member + " ends before its 8-byte trailer");
    if (load_le<uint32_t>(t) != rec.member_crc())
      throw FormatError("gzip", trailer, member + ": CRC-32 mismatch (the data is corrupt)");
    if (load_le<uint32_t>(t + 4) != static_cast<uint32_t>(rec.member_out()))
      throw FormatError("gzip", trailer + 4, member + ": length mismatch (the data is corrupt)");
    pos = trailer + sizeof t;
    // Zero padding between or after members is skipped (as CPython's gzip module does).
    const uint64_t next = skip_gzip_padding(src, pos);
    if (next == csize) break;
    unsigned char m[2] = {0, 0};
    if (src.read_at(next, m, 2) == 2 && m[0] == 0x1f && m[1] == 0x8b) {
      pos = next;
      continue;
    }
    // Other bytes end the stream; the reader of the stream judges them (index.h).
    trailing_at = next;
    break;
  }
  progress.finish();
  return rec.finish(csize, members, trailing_at);
}

}  // namespace nemofs
