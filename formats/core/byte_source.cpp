#include "formats/core/byte_source.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "formats/core/checked.h"
#include "formats/core/errors.h"
#include "formats/core/io.h"

namespace nemofs {

FileSource::FileSource(const std::string& path) : path_(path) {
  try {
    fd_ = io::open(path, O_RDONLY);
  } catch (const SysError& e) {
    throw_sys(e.err(), path + ": cannot open");
  }
  struct stat st {};
  if (::fstat(fd_.get(), &st) != 0) throw_sys(errno, path + ": cannot stat");
  if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) throw SysError(EINVAL, path + ": not a regular file");
  size_ = static_cast<uint64_t>(st.st_size);
  guard_ = std::make_unique<SourceGuard>(fd_.get(), st, path_);
}

size_t FileSource::read_at(uint64_t off, void* buf, size_t len) const {
  if (off >= size_) return 0;
  guard_->check_flag();
  len = static_cast<size_t>(std::min<uint64_t>(len, size_ - off));
  size_t done = 0;
  try {
    done = io::pread_full(fd_.get(), buf, len, off);
  } catch (const SysError& e) {
    throw_sys(e.err(), path_ + ": read failed");
  }
  if (done != len) guard_->fail_short();
  // After the bytes are taken: unchanged now means they were the indexed file's.
  guard_->check();
  return done;
}

std::optional<FileRange> FileSource::file_range(uint64_t off, uint64_t len) const {
  if (len == 0 || off > size_ || len > size_ - off) return std::nullopt;
  guard_->check_flag();
  return FileRange{fd_.get(), off, guard_.get()};
}

SubSource::SubSource(SourcePtr parent, uint64_t offset, uint64_t length, std::string what)
    : parent_(std::move(parent)), offset_(offset), length_(length), what_(std::move(what)) {
  auto end = try_add(offset, length);
  if (!end || *end > parent_->size())
    throw FormatError("bytes", offset,
                      "range of " + std::to_string(length) + " bytes runs past the end of " + parent_->describe() +
                          " (" + std::to_string(parent_->size()) + " bytes)");
}

size_t SubSource::read_at(uint64_t off, void* buf, size_t len) const {
  if (off >= length_) return 0;
  len = static_cast<size_t>(std::min<uint64_t>(len, length_ - off));
  return parent_->read_at(offset_ + off, buf, len);
}

std::optional<FileRange> SubSource::file_range(uint64_t off, uint64_t len) const {
  if (len == 0 || off > length_ || len > length_ - off) return std::nullopt;
  return parent_->file_range(offset_ + off, len);
}

void SubSource::pieces(uint64_t off, uint64_t len, std::vector<Piece>& out) const {
  parent_->pieces(offset_ + off, len, out);
}

std::string SubSource::describe() const {
  if (!what_.empty()) return what_;
  return parent_->describe() + "[" + std::to_string(offset_) + "+" + std::to_string(length_) + "]";
}

size_t MemorySource::read_at(uint64_t off, void* buf, size_t len) const {
  if (off >= bytes_.size() || len == 0) return 0;
  len = static_cast<size_t>(std::min<uint64_t>(len, bytes_.size() - off));
  std::memcpy(buf, bytes_.data() + off, len);
  return len;
}

ConcatSource::ConcatSource(std::vector<SourcePtr> parts) : parts_(std::move(parts)) {
  for (auto& p : parts_) {
    starts_.push_back(total_);
    total_ = checked_add(total_, p->size(), "bytes", std::nullopt, "concatenated size");
  }
}

size_t ConcatSource::read_at(uint64_t off, void* buf, size_t len) const {
  if (off >= total_) return 0;
  len = static_cast<size_t>(std::min<uint64_t>(len, total_ - off));
  auto it = std::upper_bound(starts_.begin(), starts_.end(), off);
  size_t i = static_cast<size_t>(it - starts_.begin()) - 1;
  size_t done = 0;
  auto* p = static_cast<char*>(buf);
  while (done < len && i < parts_.size()) {
    uint64_t local = off + done - starts_[i];
    size_t want = static_cast<size_t>(std::min<uint64_t>(len - done, parts_[i]->size() - local));
    if (want > 0) done += parts_[i]->read_at(local, p + done, want);
    ++i;
  }
  return done;
}

std::optional<FileRange> ConcatSource::file_range(uint64_t off, uint64_t len) const {
  if (len == 0 || off >= total_) return std::nullopt;
  auto it = std::upper_bound(starts_.begin(), starts_.end(), off);
  size_t i = static_cast<size_t>(it - starts_.begin()) - 1;
  uint64_t local = off - starts_[i];
  if (len > parts_[i]->size() - local) return std::nullopt;
  return parts_[i]->file_range(local, len);
}

SparseSource::SparseSource(SourcePtr data, const std::vector<Extent>& extents, uint64_t size, std::string what)
    : data_(std::move(data)), size_(size), what_(std::move(what)) {
  uint64_t stored = 0, prev_end = 0;
  ext_.reserve(extents.size());
  for (const auto& e : extents) {
    if (e.length == 0) continue;
    auto end = try_add(e.offset, e.length);
    if (e.offset < prev_end || !end || *end > size_)
      throw FormatError("bytes", e.offset, "sparse extents overlap or run past the size " + std::to_string(size_));
    ext_.push_back(Ext{e.offset, e.length, stored});
    stored += e.length;
    prev_end = *end;
  }
  if (stored > data_->size())
    throw FormatError("bytes", std::nullopt,
                      "sparse extents hold " + std::to_string(stored) + " bytes, the data has " + std::to_string(data_->size()));
}

size_t SparseSource::find(uint64_t off) const {
  auto it = std::upper_bound(ext_.begin(), ext_.end(), off,
                             [](uint64_t o, const Ext& e) { return o < e.offset + e.length; });
  return static_cast<size_t>(it - ext_.begin());
}

size_t SparseSource::read_at(uint64_t off, void* buf, size_t len) const {
  if (off >= size_ || len == 0) return 0;
  len = static_cast<size_t>(std::min<uint64_t>(len, size_ - off));
  auto* p = static_cast<char*>(buf);
  size_t done = 0;
  for (size_t i = find(off); done < len;) {
    uint64_t pos = off + done;
    if (i == ext_.size() || pos < ext_[i].offset) {  // a hole up to the next extent (or the end)
      uint64_t hole_end = i == ext_.size() ? size_ : ext_[i].offset;
      size_t n = static_cast<size_t>(std::min<uint64_t>(len - done, hole_end - pos));
      std::memset(p + done, 0, n);
      done += n;
      continue;
    }
    const Ext& e = ext_[i];
    size_t n = static_cast<size_t>(std::min<uint64_t>(len - done, e.offset + e.length - pos));
    size_t got = data_->read_at(e.stored + (pos - e.offset), p + done, n);
    if (got != n) return done + got;
    done += n;
    ++i;
  }
  return done;
}

std::optional<FileRange> SparseSource::file_range(uint64_t off, uint64_t len) const {
  if (len == 0 || off > size_ || len > size_ - off) return std::nullopt;
  size_t i = find(off);
  if (i == ext_.size() || off < ext_[i].offset || len > ext_[i].offset + ext_[i].length - off) return std::nullopt;
  return data_->file_range(ext_[i].stored + (off - ext_[i].offset), len);
}

void SparseSource::pieces(uint64_t off, uint64_t len, std::vector<Piece>& out) const {
  uint64_t done = 0;
  for (size_t i = find(off); done < len;) {
    uint64_t pos = off + done;
    if (i == ext_.size() || pos < ext_[i].offset) {
      uint64_t hole_end = i == ext_.size() ? size_ : ext_[i].offset;
      uint64_t n = std::min<uint64_t>(len - done, hole_end - pos);
      if (n == 0) break;  // past the end: the caller asked outside size()
      out.push_back(Piece{n, true, std::nullopt});
      done += n;
      continue;
    }
    const Ext& e = ext_[i];
    uint64_t n = std::min<uint64_t>(len - done, e.offset + e.length - pos);
    data_->pieces(e.stored + (pos - e.offset), n, out);
    done += n;
    ++i;
  }
}

std::string read_exact(const ByteSource& src, uint64_t off, size_t len, const char* format) {
  std::string out(len, '\0');
  size_t got = len ? src.read_at(off, out.data(), len) : 0;
  if (got != len)
    throw FormatError(format, off,
                      "truncated: wanted " + std::to_string(len) + " bytes, the source ends after " +
                          std::to_string(got));
  return out;
}

}  // namespace nemofs
