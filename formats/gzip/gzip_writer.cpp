#include "formats/gzip/gzip_writer.h"

#include <libdeflate.h>
#include <sched.h>

#include <algorithm>
#include <cstring>
#include <future>
#include <new>
#include <stdexcept>
#include <thread>

namespace nemofs {

struct ChunkedGzipWriter::Slot {
  std::vector<char> in;
  size_t used = 0;
  std::vector<char> out;
  size_t out_len = 0;
  libdeflate_compressor* c = nullptr;
  std::future<void> job;
  ~Slot() {
    if (job.valid()) job.wait();
    if (c) libdeflate_free_compressor(c);
  }
};

ChunkedGzipWriter::ChunkedGzipWriter(std::function<void(const char*, size_t)> write, int level, unsigned threads,
                                     size_t chunk)
    : write_(std::move(write)), level_(std::clamp(level, 1, 12)), chunk_(std::max<size_t>(chunk, 4096)) {
  // One slot is filled while the others compress.
  size_t n = static_cast<size_t>(std::max(1u, threads)) + 1;
  for (size_t i = 0; i < n; ++i) {
    auto s = std::make_unique<Slot>();
    s->c = libdeflate_alloc_compressor(level_);
    if (!s->c) throw std::bad_alloc();
    s->in.resize(chunk_);
    s->out.resize(libdeflate_gzip_compress_bound(s->c, chunk_));
    slots_.push_back(std::move(s));
  }
}

ChunkedGzipWriter::~ChunkedGzipWriter() = default;  // slots wait for their jobs

unsigned ChunkedGzipWriter::available_threads(unsigned cap) {
  cpu_set_t set;
  CPU_ZERO(&set);
  unsigned n = ::sched_getaffinity(0, sizeof set, &set) == 0 ? static_cast<unsigned>(CPU_COUNT(&set))
                                                              : std::thread::hardware_concurrency();
  return std::clamp(n, 1u, std::max(cap, 1u));
}

char* ChunkedGzipWriter::room(size_t& n) {
  if (!open_) {
    if (inflight_ == slots_.size()) write_oldest();  // slot next_ is the oldest: drain it first
    slots_[next_]->used = 0;
    open_ = true;
  }
  Slot& s = *slots_[next_];
  n = chunk_ - s.used;
  return s.in.data() + s.used;
}

void ChunkedGzipWriter::filled(size_t k) {
  Slot& s = *slots_[next_];
  if (!open_ || k > chunk_ - s.used) throw std::logic_error("gzip writer: filled more than the room given");
  s.used += k;
  in_ += k;
  if (s.used == chunk_) submit();
}

void ChunkedGzipWriter::write(const char* p, size_t n) {
  while (n) {
    size_t r;
    char* dst = room(r);
    size_t k = std::min(r, n);
    std::memcpy(dst, p, k);
    filled(k);
    p += k;
    n -= k;
  }
}

void ChunkedGzipWriter::submit() {
  Slot* s = slots_[next_].get();
  s->job = std::async(std::launch::async, [s] {
    s->out_len = libdeflate_gzip_compress(s->c, s->in.data(), s->used, s->out.data(), s->out.size());
    if (s->out_len == 0) throw std::runtime_error("gzip compression failed");  // cannot happen at the bound
  });
  open_ = false;
  any_ = true;
  next_ = (next_ + 1) % slots_.size();
  ++inflight_;
}

void ChunkedGzipWriter::write_oldest() {
  Slot& s = *slots_[(next_ + slots_.size() - inflight_) % slots_.size()];
  s.job.get();
  --inflight_;
  write_(s.out.data(), s.out_len);
  out_ += s.out_len;
}

void ChunkedGzipWriter::finish() {
  // The last partial chunk; an empty stream still gets one (empty) member, so the file is gzip.
  if ((open_ && slots_[next_]->used > 0) || !any_) {
    size_t r;
    room(r);
    submit();
  }
  open_ = false;
  while (inflight_) write_oldest();
}

}  // namespace nemofs
