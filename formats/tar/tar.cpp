#include "formats/tar/tar.h"

#include <algorithm>
#include <cstring>
#include <optional>

#include "formats/core/checked.h"
#include "formats/core/errors.h"

namespace nemofs {
namespace {

constexpr uint64_t kBlock = 512;
constexpr const char* kFmt = "tar";
constexpr size_t kMaxSparseRegions = size_t{1} << 20;

std::string field_string(const unsigned char* p, size_t len) {
  size_t n = 0;
  while (n < len && p[n] != 0) ++n;
  return std::string(reinterpret_cast<const char*>(p), n);
}

bool all_zero(const unsigned char* p, size_t n) {
  for (size_t i = 0; i < n; ++i)
    if (p[i]) return false;
  return true;
}

struct Pax {
  std::optional<std::string> path, linkpath, mtime;
  std::optional<uint64_t> size, uid, gid;
  // GNU sparse records (0.0: offset/numbytes pairs, 0.1: map, 1.0: major/minor; all: name, size).
  std::optional<std::string> sparse_name, sparse_map;
  std::optional<uint64_t> sparse_size, sparse_major, sparse_minor;
  std::vector<SparseRegion> sparse_pairs;
  bool sparse_offset_pending = false;
  bool sparse() const {
    return sparse_map || sparse_size || sparse_major || sparse_minor || !sparse_pairs.empty() || sparse_name;
  }
};

uint64_t parse_decimal(std::string_view s, uint64_t at, const char* what) {
  if (s.empty()) throw FormatError(kFmt, at, std::string("empty number in pax record ") + what);
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') throw FormatError(kFmt, at, std::string("bad number in pax record ") + what);
    v = checked_mul(v, 10, kFmt, at, what);
    v = checked_add(v, static_cast<uint64_t>(c - '0'), kFmt, at, what);
  }
  return v;
}

void parse_pax(const std::string& data, uint64_t at, Pax& pax, bool global) {
  size_t pos = 0;
  while (pos < data.size()) {
    if (data[pos] == '\0') break;  // some writers pad with NULs
    size_t sp = data.find(' ', pos);
    if (sp == std::string::npos || sp == pos) throw FormatError(kFmt, at, "malformed pax record (no length)");
    uint64_t len = parse_decimal(std::string_view(data).substr(pos, sp - pos), at, "length");
    if (len < sp - pos + 3 || len > data.size() - pos) throw FormatError(kFmt, at, "pax record length out of range");
    std::string rec = data.substr(sp + 1, pos + len - sp - 1);
    if (rec.empty() || rec.back() != '\n') throw FormatError(kFmt, at, "pax record does not end in a newline");
    rec.pop_back();
    size_t eq = rec.find('=');
    if (eq == std::string::npos) throw FormatError(kFmt, at, "pax record without '='");
    std::string key = rec.substr(0, eq), value = rec.substr(eq + 1);
    if (!global && key.rfind("GNU.sparse.", 0) == 0) {
      if (key == "GNU.sparse.name") pax.sparse_name = value;
      else if (key == "GNU.sparse.map") pax.sparse_map = value;
      else if (key == "GNU.sparse.size" || key == "GNU.sparse.realsize") pax.sparse_size = parse_decimal(value, at, key.c_str());
      else if (key == "GNU.sparse.major") pax.sparse_major = parse_decimal(value, at, "GNU.sparse.major");
      else if (key == "GNU.sparse.minor") pax.sparse_minor = parse_decimal(value, at, "GNU.sparse.minor");
      else if (key == "GNU.sparse.offset") {
        if (pax.sparse_offset_pending) throw FormatError(kFmt, at, "GNU.sparse.offset without its GNU.sparse.numbytes");
        if (pax.sparse_pairs.size() >= kMaxSparseRegions) throw FormatError(kFmt, at, "sparse map of more than 1048576 regions");
        pax.sparse_pairs.push_back({parse_decimal(value, at, "GNU.sparse.offset"), 0});
        pax.sparse_offset_pending = true;
      } else if (key == "GNU.sparse.numbytes") {
        if (!pax.sparse_offset_pending) throw FormatError(kFmt, at, "GNU.sparse.numbytes without a GNU.sparse.offset");
        pax.sparse_pairs.back().length = parse_decimal(value, at, "GNU.sparse.numbytes");
        pax.sparse_offset_pending = false;
      }
      pos += len;
      continue;
    }
    if (!global) {
      if (key == "path") pax.path = value;
      else if (key == "linkpath") pax.linkpath = value;
      else if (key == "size") pax.size = parse_decimal(value, at, "size");
      else if (key == "mtime") pax.mtime = value;
      else if (key == "uid") pax.uid = parse_decimal(value, at, "uid");
      else if (key == "gid") pax.gid = parse_decimal(value, at, "gid");
    }
    pos += len;
  }
}

int64_t mtime_seconds(const std::string& s, bool& clamped) {
  // "1795667668.1344376" -> 1795667668; negative -> 0 and past kMaxTarMtime -> kMaxTarMtime
  // (clamped); malformed -> 0 (a cosmetic field).
  if (!s.empty() && s[0] == '-') {
    clamped = s.find_first_not_of("-0.") != std::string::npos;
    return 0;
  }
  int64_t v = 0;
  for (char c : s) {
    if (c == '.') break;
    if (c < '0' || c > '9') return 0;
    if (v > kMaxTarMtime) break;
    v = v * 10 + (c - '0');
  }
  if (v > kMaxTarMtime) {
    clamped = true;
    return kMaxTarMtime;
  }
  return v;
}

// The header's mtime field: octal, or base-256 (0x80 positive, 0xff negative), clamped to
// [0, kMaxTarMtime].
int64_t header_mtime(const unsigned char* f, uint64_t at, bool& clamped) {
  if (f[0] & 0x80) {
    if (f[0] & 0x40) {  // negative (two's complement base-256)
      clamped = true;
      return 0;
    }
    uint64_t v = f[0] & 0x3f;
    bool big = false;
    for (size_t i = 1; i < 12; ++i) {
      if (v >> 55) big = true;
      v = (v << 8) | f[i];
    }
    if (big || v > static_cast<uint64_t>(kMaxTarMtime)) {
      clamped = true;
      return kMaxTarMtime;
    }
    return static_cast<int64_t>(v);
  }
  uint64_t v = parse_tar_number(f, 12, at, "mtime");
  if (v > static_cast<uint64_t>(kMaxTarMtime)) {
    clamped = true;
    return kMaxTarMtime;
  }
  return static_cast<int64_t>(v);
}

// Up to `n` (offset, numbytes) pairs of 24 bytes at `p`; false once the list has ended (an entry
// whose offset or numbytes field starts with NUL).
bool oldgnu_pairs(const unsigned char* p, int n, uint64_t at, std::vector<SparseRegion>& out) {
  for (int i = 0; i < n; ++i, p += 24) {
    if (p[0] == 0 || p[12] == 0) return false;
    if (out.size() >= kMaxSparseRegions) throw FormatError(kFmt, at, "sparse map of more than 1048576 regions");
    out.push_back({parse_tar_number(p, 12, at, "sparse offset"), parse_tar_number(p + 12, 12, at, "sparse numbytes")});
  }
  return true;
}

}  // namespace

uint64_t parse_tar_number(const unsigned char* f, size_t len, uint64_t at, const char* what) {
  if (len && (f[0] & 0x80)) {
    if (f[0] == 0xff) throw FormatError(kFmt, at, std::string("negative base-256 ") + what);
    uint64_t v = f[0] & 0x7f;
    for (size_t i = 1; i < len; ++i) {
      if (v >> 56) throw FormatError(kFmt, at, std::string("base-256 ") + what + " too large");
      v = (v << 8) | f[i];
    }
    return v;
  }
  // As GNU tar, bsdtar and CPython read it: leading spaces skipped; the field ends at its first
  // NUL, so an empty or NUL-led field is 0 (whatever digits follow the NUL).
  size_t i = 0;
  while (i < len && f[i] == ' ') ++i;
  uint64_t v = 0;
  for (; i < len; ++i) {
    if (f[i] == ' ' || f[i] == 0) break;
    if (f[i] < '0' || f[i] > '7') throw FormatError(kFmt, at, std::string("bad octal digit in ") + what);
    if (v >> 61) throw FormatError(kFmt, at, std::string(what) + " too large");
    v = (v << 3) | static_cast<uint64_t>(f[i] - '0');
  }
  while (i < len && f[i] == ' ') ++i;
  if (i < len && f[i] != 0) throw FormatError(kFmt, at, std::string("garbage after ") + what);
  return v;
}

bool tar_checksum_ok(const unsigned char* h) {
  uint64_t stored = 0;
  try {
    stored = parse_tar_number(h + 148, 8, 0, "checksum");
  } catch (const FormatError&) {
    return false;
  }
  uint64_t usum = 0;
  int64_t ssum = 0;
  for (size_t i = 0; i < kBlock; ++i) {
    unsigned char c = (i >= 148 && i < 156) ? ' ' : h[i];
    usum += c;
    ssum += static_cast<signed char>(c);
  }
  return stored == usum || static_cast<int64_t>(stored) == ssum;
}

std::vector<SparseRegion> parse_sparse_oldgnu(const unsigned char* h, const std::string& ext, uint64_t at,
                                              size_t* ext_needed) {
  std::vector<SparseRegion> out;
  bool open = oldgnu_pairs(h + 386, 4, at, out);
  bool extended = h[482] != 0;
  size_t blocks = 0;
  while (extended) {
    if ((blocks + 1) * kBlock > ext.size()) {
      if (ext_needed) *ext_needed = blocks + 1;
      return out;
    }
    const auto* b = reinterpret_cast<const unsigned char*>(ext.data()) + blocks * kBlock;
    if (open) open = oldgnu_pairs(b, 21, at + (blocks + 1) * kBlock, out);
    extended = b[504] != 0;
    ++blocks;
  }
  if (ext_needed) *ext_needed = blocks;
  return out;
}

std::vector<SparseRegion> parse_sparse_map01(const std::string& map, uint64_t at) {
  std::vector<SparseRegion> out;
  if (map.empty()) return out;
  std::vector<uint64_t> nums;
  size_t pos = 0;
  while (true) {
    size_t comma = map.find(',', pos);
    std::string_view tok = std::string_view(map).substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    if (nums.size() >= 2 * kMaxSparseRegions) throw FormatError(kFmt, at, "sparse map of more than 1048576 regions");
    nums.push_back(parse_decimal(tok, at, "GNU.sparse.map"));
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  if (nums.size() % 2) throw FormatError(kFmt, at, "GNU.sparse.map has an odd count of numbers");
  for (size_t i = 0; i < nums.size(); i += 2) out.push_back({nums[i], nums[i + 1]});
  return out;
}

std::vector<SparseRegion> parse_sparse_map10(const std::string& data, uint64_t at, uint64_t* map_bytes) {
  size_t pos = 0;
  auto number = [&](const char* what) {
    size_t nl = data.find('\n', pos);
    if (nl == std::string::npos)
      throw FormatError(kFmt, at, "sparse map (format 1.0) runs past the member's data");
    uint64_t v = parse_decimal(std::string_view(data).substr(pos, nl - pos), at, what);
    pos = nl + 1;
    return v;
  };
  uint64_t n = number("sparse map count");
  if (n > kMaxSparseRegions) throw FormatError(kFmt, at, "sparse map of more than 1048576 regions");
  std::vector<SparseRegion> out;
  out.reserve(static_cast<size_t>(n));
  for (uint64_t i = 0; i < n; ++i) {
    uint64_t o = number("sparse map offset");
    out.push_back({o, number("sparse map length")});
  }
  *map_bytes = (pos + kBlock - 1) / kBlock * kBlock;
  return out;
}

std::vector<SparseRegion> check_sparse_map(const std::vector<SparseRegion>& map, uint64_t logical, uint64_t stored,
                                           const std::string& name, uint64_t at) {
  std::vector<SparseRegion> out;
  uint64_t prev_off = 0, prev_end = 0, total = 0;
  const std::string who = "sparse member '" + name + "': ";
  for (size_t i = 0; i < map.size(); ++i) {
    const SparseRegion& r = map[i];
    std::string region = "region " + std::to_string(i) + " (" + std::to_string(r.offset) + "+" + std::to_string(r.length) + ")";
    if (r.offset < prev_off)
      throw FormatError(kFmt, at, who + "sparse map goes backwards at " + region + ", after offset " + std::to_string(prev_off));
    if (r.offset < prev_end)
      throw FormatError(kFmt, at, who + "sparse map regions overlap at " + region + ", the previous one ends at " + std::to_string(prev_end));
    auto end = try_add(r.offset, r.length);
    if (!end || *end > logical)
      throw FormatError(kFmt, at, who + "sparse map runs past the logical size " + std::to_string(logical) + " at " + region);
    total += r.length;  // <= logical: no overflow
    if (total > stored)
      throw FormatError(kFmt, at, who + "sparse data runs past the member: the map holds " + std::to_string(total) +
                                      "+ bytes, the archive stores " + std::to_string(stored));
    prev_off = r.offset;
    prev_end = *end;
    if (r.length) out.push_back(r);
  }
  return out;
}

const TarEntryRare& TarEntry::empty_rare() {
  static const TarEntryRare empty;
  return empty;
}

TarIndex index_tar(const ByteSource& src) {
  TarIndex idx;
  index_tar(src, idx, [&](TarEntry&& e) { idx.entries.push_back(std::move(e)); });
  return idx;
}

void index_tar(const ByteSource& src, TarIndex& idx, const std::function<void(TarEntry&&)>& each) {
  const uint64_t total = src.size();
  uint64_t off = 0;
  Pax pax;
  std::optional<std::string> gnu_name, gnu_link;
  uint64_t entry_start = 0;
  bool pending = false;  // metadata blocks seen for the next entry
  unsigned char h[kBlock];

  while (true) {
    if (off == total) break;  // clean EOF without end blocks: tolerated like CPython
    if (total - off < kBlock) throw FormatError(kFmt, off, "truncated header block (" + std::to_string(total - off) + " bytes left)");
    if (src.read_at(off, h, kBlock) != kBlock) throw FormatError(kFmt, off, "truncated header block");
    if (all_zero(h, kBlock)) {
      if (pending) throw FormatError(kFmt, off, "archive ends between an extended header and its member");
      idx.end_of_entries = off;
      idx.end_marker = true;
      return;
    }
    // Checksum: unsigned (POSIX) or signed (historic) sum with the field as spaces.
    if (!tar_checksum_ok(h)) {
      parse_tar_number(h + 148, 8, off, "checksum");  // a malformed field gets its own message
      throw FormatError(kFmt, off, "header checksum mismatch (not a tar archive, or corrupt)");
    }

    if (!pending) entry_start = off;
    char type = static_cast<char>(h[156]);
    uint64_t size = parse_tar_number(h + 124, 12, off, "size");
    if (type == 'x' || type == 'g' || type == 'L' || type == 'K') {
      if (size > (64u << 20)) throw FormatError(kFmt, off, "extended header larger than 64 MiB");
      uint64_t data_off = off + kBlock;
      if (size > total - data_off) throw FormatError(kFmt, off, "extended header runs past the end of the archive");
      std::string data = read_exact(src, data_off, static_cast<size_t>(size), kFmt);
      if (type == 'x') parse_pax(data, off, pax, false);
      else if (type == 'g') parse_pax(data, off, pax, true);
      else {
        std::string s = field_string(reinterpret_cast<const unsigned char*>(data.data()), data.size());
        (type == 'L' ? gnu_name : gnu_link) = s;
      }
      pending = true;
      // An extended header whose padding is cut off by EOF must still be reported as an orphan
      // extended header below, not as a truncated block at an offset past the end.
      off = std::min(total, data_off + ((size + kBlock - 1) / kBlock) * kBlock);
      continue;
    }
    // Old GNU sparse: the map is in this header and in the extension blocks after it.
    uint64_t header_end = off + kBlock;
    std::vector<SparseRegion> oldgnu_map;
    uint64_t oldgnu_real = 0;
    if (type == 'S') {
      std::string ext;
      bool extended = h[482] != 0;
      while (extended) {
        if (total - header_end < kBlock)
          throw FormatError(kFmt, off, "sparse extension block runs past the end of the archive");
        if (ext.size() >= (64u << 20)) throw FormatError(kFmt, off, "sparse extension blocks larger than 64 MiB");
        std::string b = read_exact(src, header_end, kBlock, kFmt);
        extended = b[504] != 0;
        ext += b;
        header_end += kBlock;
      }
      oldgnu_map = parse_sparse_oldgnu(h, ext, off, nullptr);
      oldgnu_real = parse_tar_number(h + 483, 12, off, "sparse realsize");
    }

    TarEntry e;
    e.typeflag = type;
    std::string name = field_string(h, 100);
    bool ustar = std::memcmp(h + 257, "ustar\0", 6) == 0;
    std::string prefix = ustar ? field_string(h + 345, 155) : std::string();
    if (!prefix.empty()) name = prefix + "/" + name;
    if (gnu_name) name = *gnu_name;
    if (pax.path) name = *pax.path;
    if (pax.sparse_name) name = *pax.sparse_name;
    e.name = std::move(name);
    TarEntryRare rare;
    rare.linkname = pax.linkpath ? *pax.linkpath : gnu_link ? *gnu_link : field_string(h + 157, 100);
    e.mode = static_cast<uint32_t>(parse_tar_number(h + 100, 8, off, "mode") & 07777);
    e.uid = pax.uid ? *pax.uid : parse_tar_number(h + 108, 8, off, "uid");
    e.gid = pax.gid ? *pax.gid : parse_tar_number(h + 116, 8, off, "gid");
    bool clamped = false;
    e.mtime = header_mtime(h + 136, off, clamped);
    if (pax.mtime) {
      clamped = false;
      e.mtime = mtime_seconds(*pax.mtime, clamped);
      if (!clamped) rare.mtime_text = *pax.mtime;  // a clamped time keeps no fraction
    }
    e.mtime_clamped = clamped;
    if (pax.size) size = *pax.size;
    switch (type) {
      // Old (pre-POSIX) archives mark directories only by a trailing '/' on a '\0' entry; CPython
      // reads those as directories too.
      case '\0': e.type = !e.name.empty() && e.name.back() == '/' ? TarType::Dir : TarType::File; break;
      case '0': case '7': case 'S': e.type = TarType::File; break;
      case '5': e.type = TarType::Dir; break;
      case '2': e.type = TarType::Symlink; break;
      case '1': e.type = TarType::Hardlink; break;
      default: e.type = TarType::Other; break;
    }
    // As in CPython's tarfile: only regular files (and unknown types) own data blocks; the size
    // field of links, directories, devices and fifos is ignored.
    bool has_data = e.type == TarType::File || (e.type == TarType::Other && !(type == '3' || type == '4' || type == '6'));
    if (!has_data) size = 0;
    if (e.name.empty()) throw FormatError(kFmt, off, "member with an empty name");
    e.header_offset = entry_start;
    e.data_offset = header_end;
    e.size = size;
    if (e.data_offset > total || size > total - e.data_offset)
      throw FormatError(kFmt, off, "member '" + e.name + "' (" + std::to_string(size) + " bytes) runs past the end of the archive");
    uint64_t padded = checked_add(size, kBlock - 1, kFmt, off, "member size") / kBlock * kBlock;
    e.end_offset = e.data_offset + padded;
    if (e.end_offset > total) e.end_offset = total;  // last member without its padding: tolerated
    e.stored_size = size;
    if (type == 'S' || (pax.sparse() && has_data)) {
      std::vector<SparseRegion> map;
      uint64_t logical = 0;
      if (type == 'S') {
        map = std::move(oldgnu_map);
        logical = oldgnu_real;
      } else {
        if (!pax.sparse_size) throw FormatError(kFmt, off, "sparse member '" + e.name + "' without GNU.sparse.size or GNU.sparse.realsize");
        logical = *pax.sparse_size;
        if (pax.sparse_map) {  // 0.1
          map = parse_sparse_map01(*pax.sparse_map, off);
        } else if (pax.sparse_major || pax.sparse_minor) {
          if (pax.sparse_major.value_or(0) != 1 || pax.sparse_minor.value_or(0) != 0)
            throw FormatError(kFmt, off, "sparse member '" + e.name + "': GNU sparse format " + std::to_string(pax.sparse_major.value_or(0)) +
                                             "." + std::to_string(pax.sparse_minor.value_or(0)) + " is not known");
          // 1.0: the map opens the data.
          uint64_t want = std::min<uint64_t>(size, 1u << 20), map_bytes = 0;
          while (true) {
            std::string head = read_exact(src, e.data_offset, static_cast<size_t>(want), kFmt);
            try {
              map = parse_sparse_map10(head, e.data_offset, &map_bytes);
              break;
            } catch (const FormatError&) {
              if (want == size || want >= (64u << 20)) throw;
              want = std::min<uint64_t>(size, 64u << 20);
            }
          }
          if (map_bytes > size) throw FormatError(kFmt, e.data_offset, "sparse map (format 1.0) runs past the member's data");
          e.data_offset += map_bytes;
          e.stored_size = size - map_bytes;
        } else {  // 0.0
          if (pax.sparse_offset_pending) throw FormatError(kFmt, off, "GNU.sparse.offset without its GNU.sparse.numbytes");
          map = std::move(pax.sparse_pairs);
        }
      }
      rare.regions = check_sparse_map(map, logical, e.stored_size, e.name, off);
      e.sparse = true;
      e.size = logical;
    }
    if (!rare.linkname.empty() || !rare.mtime_text.empty() || !rare.regions.empty())
      e.rare = std::make_shared<const TarEntryRare>(std::move(rare));
    off = e.end_offset;
    each(std::move(e));
    pax = Pax{};
    gnu_name.reset();
    gnu_link.reset();
    pending = false;
  }
  if (pending) throw FormatError(kFmt, off, "archive ends between an extended header and its member");
  idx.end_of_entries = off;
}

}  // namespace nemofs
