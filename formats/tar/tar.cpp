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
    if (key.rfind("GNU.sparse.", 0) == 0) throw FormatError(kFmt, at, "GNU sparse members are not supported");
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

int64_t mtime_seconds(const std::string& s) {
  // "1795667668.1344376" -> 1795667668; negative or malformed -> 0 (cosmetic field).
  int64_t v = 0;
  for (char c : s) {
    if (c == '.') break;
    if (c < '0' || c > '9') return 0;
    if (v > (INT64_MAX - 9) / 10) return 0;
    v = v * 10 + (c - '0');
  }
  return v;
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
  size_t i = 0;
  while (i < len && (f[i] == ' ' || f[i] == 0)) ++i;  // leading padding
  uint64_t v = 0;
  bool any = false;
  for (; i < len; ++i) {
    if (f[i] == ' ' || f[i] == 0) break;
    if (f[i] < '0' || f[i] > '7') throw FormatError(kFmt, at, std::string("bad octal digit in ") + what);
    if (v >> 61) throw FormatError(kFmt, at, std::string(what) + " too large");
    v = (v << 3) | static_cast<uint64_t>(f[i] - '0');
    any = true;
  }
  for (; i < len; ++i)
    if (f[i] != ' ' && f[i] != 0) throw FormatError(kFmt, at, std::string("garbage after ") + what);
  (void)any;
  return v;
}

TarIndex index_tar(const ByteSource& src) {
  TarIndex idx;
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
      return idx;
    }
    // Checksum: unsigned (POSIX) or signed (historic) sum with the field as spaces.
    uint64_t stored = parse_tar_number(h + 148, 8, off, "checksum");
    uint64_t usum = 0;
    int64_t ssum = 0;
    for (size_t i = 0; i < kBlock; ++i) {
      unsigned char c = (i >= 148 && i < 156) ? ' ' : h[i];
      usum += c;
      ssum += static_cast<signed char>(c);
    }
    if (stored != usum && static_cast<int64_t>(stored) != ssum)
      throw FormatError(kFmt, off, "header checksum mismatch (not a tar archive, or corrupt)");

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
    if (type == 'S') throw FormatError(kFmt, off, "GNU sparse members are not supported");

    TarEntry e;
    e.typeflag = type;
    std::string name = field_string(h, 100);
    bool ustar = std::memcmp(h + 257, "ustar\0", 6) == 0;
    std::string prefix = ustar ? field_string(h + 345, 155) : std::string();
    if (!prefix.empty()) name = prefix + "/" + name;
    if (gnu_name) name = *gnu_name;
    if (pax.path) name = *pax.path;
    e.name = name;
    e.linkname = pax.linkpath ? *pax.linkpath : gnu_link ? *gnu_link : field_string(h + 157, 100);
    e.mode = static_cast<uint32_t>(parse_tar_number(h + 100, 8, off, "mode") & 07777);
    e.uid = pax.uid ? *pax.uid : parse_tar_number(h + 108, 8, off, "uid");
    e.gid = pax.gid ? *pax.gid : parse_tar_number(h + 116, 8, off, "gid");
    uint64_t mt = parse_tar_number(h + 136, 12, off, "mtime");
    e.mtime = mt > static_cast<uint64_t>(INT64_MAX) ? 0 : static_cast<int64_t>(mt);
    if (pax.mtime) {
      e.mtime_text = *pax.mtime;
      e.mtime = mtime_seconds(*pax.mtime);
    }
    if (pax.size) size = *pax.size;
    switch (type) {
      // Old (pre-POSIX) archives mark directories only by a trailing '/' on a '\0' entry; CPython
      // reads those as directories too.
      case '\0': e.type = !e.name.empty() && e.name.back() == '/' ? TarType::Dir : TarType::File; break;
      case '0': case '7': e.type = TarType::File; break;
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
    e.data_offset = off + kBlock;
    e.size = size;
    if (e.data_offset > total || size > total - e.data_offset)
      throw FormatError(kFmt, off, "member '" + e.name + "' (" + std::to_string(size) + " bytes) runs past the end of the archive");
    uint64_t padded = checked_add(size, kBlock - 1, kFmt, off, "member size") / kBlock * kBlock;
    e.end_offset = e.data_offset + padded;
    if (e.end_offset > total) e.end_offset = total;  // last member without its padding: tolerated
    off = e.end_offset;
    idx.entries.push_back(std::move(e));
    pax = Pax{};
    gnu_name.reset();
    gnu_link.reset();
    pending = false;
  }
  if (pending) throw FormatError(kFmt, off, "archive ends between an extended header and its member");
  idx.end_of_entries = off;
  return idx;
}

}  // namespace nemofs
