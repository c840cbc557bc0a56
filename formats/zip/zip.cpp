#include "formats/zip/zip.h"

#include <algorithm>
#include <cstring>

#include "formats/core/checked.h"
#include "formats/core/errors.h"
#include "formats/gzip/gzip_index.h"

namespace nemofs {
namespace {

constexpr const char* kFmt = "zip";
constexpr uint32_t kLocalSig = 0x04034b50, kCentralSig = 0x02014b50, kEocdSig = 0x06054b50,
                   kZip64EocdSig = 0x06064b50, kZip64LocSig = 0x07064b50;
constexpr uint64_t kMaxCentralDir = 1ull << 30;

}  // namespace

const ZipEntry* ZipIndex::find(std::string_view name) const {
  auto it = by_name.find(std::string(name));
  return it == by_name.end() ? nullptr : &entries[it->second];
}

ZipIndex index_zip(const ByteSource& src) {
  uint64_t size = src.size();
  if (size < 22) throw FormatError(kFmt, 0, "file of " + std::to_string(size) + " bytes is too small to be a zip");
  uint64_t tail_len = std::min<uint64_t>(size, 22 + 65535);
  uint64_t tail_at = size - tail_len;
  std::string tail = read_exact(src, tail_at, static_cast<size_t>(tail_len), kFmt);

  // The EOCD whose comment length reaches exactly to the end of the file (scanning backwards).
  std::optional<uint64_t> eocd;
  for (uint64_t i = tail_len - 22 + 1; i-- > 0;) {
    if (load_le<uint32_t>(tail.data() + i) != kEocdSig) continue;
    uint16_t clen = load_le<uint16_t>(tail.data() + i + 20);
    if (i + 22 + clen == tail_len) {
      eocd = i;
      break;
    }
  }
  if (!eocd) throw FormatError(kFmt, std::nullopt, "no end of central directory record (not a zip, or truncated)");
  const char* e = tail.data() + *eocd;
  uint64_t eocd_at = tail_at + *eocd;
  uint64_t entries = load_le<uint16_t>(e + 10);
  uint64_t cd_size = load_le<uint32_t>(e + 12);
  uint64_t cd_offset = load_le<uint32_t>(e + 16);
  if (load_le<uint16_t>(e + 4) != 0 || load_le<uint16_t>(e + 6) != 0)
    throw FormatError(kFmt, eocd_at, "multi-disk zip archives are not supported");
  uint64_t end_records_at = eocd_at;

  if (eocd_at >= 20) {
    std::string loc = read_exact(src, eocd_at - 20, 20, kFmt);
    if (load_le<uint32_t>(loc.data()) == kZip64LocSig) {
      uint64_t z64_at = load_le<uint64_t>(loc.data() + 8);
      // The record normally sits right before the locator; a stub shifts it, so look there first.
      uint64_t expected = eocd_at - 20 >= 56 ? eocd_at - 20 - 56 : UINT64_MAX;
      std::string rec;
      uint64_t rec_at = UINT64_MAX;
      for (uint64_t cand : {expected, z64_at}) {
        if (cand == UINT64_MAX || cand > size || size - cand < 56) continue;
        std::string r = read_exact(src, cand, 56, kFmt);
        if (load_le<uint32_t>(r.data()) == kZip64EocdSig) {
          rec = std::move(r);
          rec_at = cand;
          break;
        }
      }
      if (rec_at == UINT64_MAX) throw FormatError(kFmt, z64_at, "zip64 locator points at no zip64 end of central directory record");
      if (load_le<uint32_t>(rec.data() + 16) != 0 || load_le<uint32_t>(rec.data() + 20) != 0)
        throw FormatError(kFmt, rec_at, "multi-disk zip archives are not supported");
      entries = load_le<uint64_t>(rec.data() + 32);
      cd_size = load_le<uint64_t>(rec.data() + 40);
      cd_offset = load_le<uint64_t>(rec.data() + 48);
      end_records_at = rec_at;
    }
  }

  uint64_t cd_end = checked_add(cd_offset, cd_size, kFmt, eocd_at, "central directory end");
  if (cd_end > end_records_at)
    throw FormatError(kFmt, eocd_at, "central directory [" + std::to_string(cd_offset) + ", " + std::to_string(cd_end) +
                                         ") runs past the end records at " + std::to_string(end_records_at));
  uint64_t shift = end_records_at - cd_end;  // bytes prepended before the zip
  if (cd_size > kMaxCentralDir) throw FormatError(kFmt, eocd_at, "central directory of " + std::to_string(cd_size) + " bytes is too large");
  if (entries > cd_size / 46)
    throw FormatError(kFmt, eocd_at, std::to_string(entries) + " entries cannot fit in a central directory of " +
                                         std::to_string(cd_size) + " bytes");

  uint64_t cd_at = cd_offset + shift;
  std::string cd = read_exact(src, cd_at, static_cast<size_t>(cd_size), kFmt);
  ZipIndex idx;
  idx.entries.reserve(static_cast<size_t>(entries));
  size_t p = 0;
  for (uint64_t n = 0; n < entries; ++n) {
    uint64_t at = cd_at + p;
    if (cd.size() - p < 46) throw FormatError(kFmt, at, "central directory entry is truncated");
    const char* c = cd.data() + p;
    if (load_le<uint32_t>(c) != kCentralSig) throw FormatError(kFmt, at, "bad central directory entry signature");
    ZipEntry ze;
    ze.flags = load_le<uint16_t>(c + 8);
    ze.method = load_le<uint16_t>(c + 10);
    ze.crc = load_le<uint32_t>(c + 16);
    ze.csize = load_le<uint32_t>(c + 20);
    ze.usize = load_le<uint32_t>(c + 24);
    size_t nlen = load_le<uint16_t>(c + 28), xlen = load_le<uint16_t>(c + 30), clen = load_le<uint16_t>(c + 32);
    uint32_t disk = load_le<uint16_t>(c + 34);
    ze.local_header = load_le<uint32_t>(c + 42);
    if (cd.size() - p - 46 < nlen + xlen + clen) throw FormatError(kFmt, at, "central directory entry is truncated");
    ze.name.assign(c + 46, nlen);
    const char* x = c + 46 + nlen;
    for (size_t q = 0; q + 4 <= xlen;) {
      uint16_t id = load_le<uint16_t>(x + q), len = load_le<uint16_t>(x + q + 2);
      if (q + 4 + len > xlen) throw FormatError(kFmt, at, "extra field of '" + ze.name + "' is truncated");
      if (id == 0x0001) {
        const char* z = x + q + 4;
        size_t zl = len, zp = 0;
        auto take64 = [&](uint64_t& field) {
          if (zp + 8 > zl) throw FormatError(kFmt, at, "zip64 extra field of '" + ze.name + "' is too short");
          field = load_le<uint64_t>(z + zp);
          zp += 8;
        };
        if (ze.usize == 0xFFFFFFFF) take64(ze.usize);
        if (ze.csize == 0xFFFFFFFF) take64(ze.csize);
        if (ze.local_header == 0xFFFFFFFF) take64(ze.local_header);
        if (disk == 0xFFFF && zp + 4 <= zl) disk = load_le<uint32_t>(z + zp);
      }
      q += 4 + len;
    }
    if (disk != 0) throw FormatError(kFmt, at, "multi-disk zip archives are not supported");
    ze.local_header = checked_add(ze.local_header, shift, kFmt, at, "local header offset");
    if (ze.local_header >= cd_at) throw FormatError(kFmt, at, "local header of '" + ze.name + "' lies past the central directory");
    if (ze.csize > cd_at - ze.local_header)
      throw FormatError(kFmt, at, "entry '" + ze.name + "' of " + std::to_string(ze.csize) + " bytes runs into the central directory");
    p += 46 + nlen + xlen + clen;
    idx.by_name[ze.name] = idx.entries.size();
    idx.entries.push_back(std::move(ze));
  }
  return idx;
}

uint64_t zip_data_offset(const ByteSource& src, const ZipEntry& e) {
  std::string h = read_exact(src, e.local_header, 30, kFmt);
  if (load_le<uint32_t>(h.data()) != kLocalSig)
    throw FormatError(kFmt, e.local_header, "bad local header signature for '" + e.name + "'");
  uint64_t data = e.local_header + 30 + load_le<uint16_t>(h.data() + 26) + load_le<uint16_t>(h.data() + 28);
  uint64_t end = checked_add(data, e.csize, kFmt, e.local_header, "entry end");
  if (end > src.size()) throw FormatError(kFmt, e.local_header, "data of '" + e.name + "' runs past the end of the file");
  return data;
}

SourcePtr open_zip_entry(const SourcePtr& zip, const ZipEntry& e) {
  if (e.flags & 1) throw FormatError(kFmt, e.local_header, "entry '" + e.name + "' is encrypted");
  uint64_t data = zip_data_offset(*zip, e);
  if (e.method == 0) {
    if (e.csize != e.usize)
      throw FormatError(kFmt, e.local_header, "stored entry '" + e.name + "' has different compressed and uncompressed sizes");
    return make_sub(zip, data, e.usize, e.name);
  }
  if (e.method == 8) {
    // Deflate expands at most 1032:1 (zlib's documented bound): a larger size can never be
    // delivered, and believing it would cost an allocation of that size at the first read.
    if (e.usize / 1032 > e.csize)
      throw FormatError(kFmt, e.local_header, "deflated entry '" + e.name + "' claims " + std::to_string(e.usize) +
                                                  " bytes from " + std::to_string(e.csize) +
                                                  " compressed bytes (deflate expands at most 1032:1)");
    if (e.usize == 0) return std::make_shared<MemorySource>(std::string(), zip->describe() + ": " + e.name);
    // Served through a seek index built as it is first read, with its blocks in the process-wide
    // inflate cache: memory stays bounded whatever the entry's size (formats/gzip/gzip_source.h).
    return std::make_shared<GzipSource>(GzipSource::RawDeflate{}, make_sub(zip, data, e.csize, e.name), e.usize,
                                        shared_inflate_cache(), zip->describe() + ": " + e.name);
  }
  throw FormatError(kFmt, e.local_header, "entry '" + e.name + "' uses compression method " + std::to_string(e.method) +
                                              " (only stored and deflate are supported)");
}

}  // namespace nemofs
