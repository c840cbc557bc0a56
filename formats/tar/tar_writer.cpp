#include "formats/tar/tar_writer.h"

#include <cstdio>
#include <cstring>
#include <stdexcept>

namespace nemofs {
namespace {

constexpr uint64_t kRecord = 10240;
constexpr const char kPadName[] = "pax_global_header";
constexpr const char kPadComment[] = "comment=nemofs alignment padding ";

void put_octal(char* field, size_t len, uint64_t v) {
  // len-1 octal digits, zero padded, then NUL (CPython's itn for the POSIX range).
  std::snprintf(field, len, "%0*llo", static_cast<int>(len - 1), static_cast<unsigned long long>(v));
}

void put_string(char* field, size_t len, const std::string& s) {
  std::memcpy(field, s.data(), std::min(len, s.size()));
}

std::string field_string(const unsigned char* p, size_t len) {
  size_t n = 0;
  while (n < len && p[n] != 0) ++n;
  return std::string(reinterpret_cast<const char*>(p), n);
}

void finish_block(char* h) {
  std::memset(h + 148, ' ', 8);
  unsigned sum = 0;
  for (int i = 0; i < 512; ++i) sum += static_cast<unsigned char>(h[i]);
  char buf[8];
  std::snprintf(buf, sizeof buf, "%06o", sum);
  std::memcpy(h + 148, buf, 7);  // six digits, NUL; the eighth byte stays a space
}

std::string ustar_block(const std::string& name, uint32_t mode, uint64_t uid, uint64_t gid, uint64_t size,
                        uint64_t mtime, char type, const std::string& uname, const std::string& gname) {
  std::string b(512, '\0');
  char* h = b.data();
  put_string(h, 100, name);
  put_octal(h + 100, 8, mode & 07777);
  put_octal(h + 108, 8, uid);
  put_octal(h + 116, 8, gid);
  put_octal(h + 124, 12, size);
  put_octal(h + 136, 12, mtime);
  h[156] = type;
  std::memcpy(h + 257, "ustar\0" "00", 8);
  put_string(h + 265, 32, uname);
  put_string(h + 297, 32, gname);
  finish_block(h);
  return b;
}

std::string pax_record(const std::string& key, const std::string& value) {
  // "<len> key=value\n" where len counts itself (CPython's fixed-point loop).
  size_t l = key.size() + value.size() + 3;
  size_t n = 0, p = 0;
  while (true) {
    n = l + std::to_string(p).size();
    if (n == p) break;
    p = n;
  }
  return std::to_string(p) + " " + key + "=" + value + "\n";
}

bool is_ascii(const std::string& s) {
  for (unsigned char c : s)
    if (c >= 0x80) return false;
  return true;
}

}  // namespace

TarStyle TarStyle::of_archive(const ByteSource& src, const TarIndex& idx) {
  TarStyle s;
  if (idx.entries.empty()) return s;
  const TarEntry* ref = &idx.entries.back();
  for (auto it = idx.entries.rbegin(); it != idx.entries.rend(); ++it)
    if (it->type == TarType::File) {
      ref = &*it;
      break;
    }
  s.dot_slash = ref->name.rfind("./", 0) == 0;
  s.pax_mtime = !ref->mtime_text().empty();
  s.uid = ref->uid;
  s.gid = ref->gid;
  unsigned char h[512];
  if (ref->data_offset >= 512 && src.read_at(ref->data_offset - 512, h, 512) == 512) {
    s.uname = field_string(h + 265, 32);
    s.gname = field_string(h + 297, 32);
  }
  return s;
}

std::string tar_name(const std::string& path, bool dir, const TarStyle& style) {
  if (path.empty()) return "./";
  std::string n = (style.dot_slash ? "./" : "") + path;
  if (dir) n += "/";
  return n;
}

std::string tar_header(const TarMember& m, const TarStyle& style) {
  std::string name = tar_name(m.path, m.dir, style);
  std::string records;
  std::string ustar_name = name;
  if (name.size() > 100 || !is_ascii(name)) {
    records += pax_record("path", name);
    for (char& c : ustar_name)
      if (static_cast<unsigned char>(c) >= 0x80) c = '?';
    if (ustar_name.size() > 100) ustar_name.resize(100);
  }
  constexpr uint64_t kMaxOctal11 = 077777777777ull;  // 8 GiB - 1
  uint64_t size = m.dir ? 0 : m.size;
  uint64_t ustar_size = size;
  if (size > kMaxOctal11) {
    records += pax_record("size", std::to_string(size));
    ustar_size = 0;
  }
  int64_t rounded = m.mtime_sec + (m.mtime_nsec >= 500000000u ? 1 : 0);
  uint64_t ustar_mtime = 0;
  if (rounded < 0 || static_cast<uint64_t>(rounded) > kMaxOctal11) {
    records += pax_record("mtime", std::to_string(m.mtime_sec));
  } else {
    ustar_mtime = static_cast<uint64_t>(rounded);
    if (style.pax_mtime && m.mtime_nsec) {
      char frac[16];
      std::snprintf(frac, sizeof frac, "%09u", m.mtime_nsec);
      std::string f = frac;
      while (!f.empty() && f.back() == '0') f.pop_back();
      records += pax_record("mtime", std::to_string(m.mtime_sec) + "." + f);
    }
  }
  std::string out;
  if (!records.empty()) {
    out += ustar_block("././@PaxHeader", 0, 0, 0, records.size(), 0, 'x', "", "");
    out += records;
    out.append(tar_padding(records.size()), '\0');
  }
  out += ustar_block(ustar_name, m.mode, style.uid, style.gid, ustar_size, ustar_mtime, m.dir ? '5' : '0',
                     style.uname, style.gname);
  return out;
}

uint64_t tar_end_size(uint64_t offset) {
  uint64_t end = offset + 1024;
  return end + (kRecord - end % kRecord) % kRecord - offset;
}

}  // namespace nemofs

namespace nemofs {

std::string tar_pad(uint64_t total) {
  if (total < 1024 || total % 512 || total > (64u << 20)) throw std::invalid_argument("tar_pad: bad size");
  const uint64_t l = total - 512;
  std::string out = ustar_block(kPadName, 0666, 0, 0, l, 0, 'g', "", "");
  // "<L> comment=...x\n": the digits of L, a space, the keyword, the filler and the newline.
  const std::string len = std::to_string(l);
  const size_t fixed = len.size() + 1 + (sizeof kPadComment - 1) + 1;
  out += len + " " + kPadComment + std::string(static_cast<size_t>(l) - fixed, 'x') + "\n";
  return out;
}

uint64_t tar_pad_at(const ByteSource& src, uint64_t off) {
  unsigned char h[512 + 64];
  if (src.read_at(off, h, sizeof h) != sizeof h) return 0;
  if (h[156] != 'g' || field_string(h, 100) != kPadName || std::memcmp(h + 257, "ustar", 5) != 0) return 0;
  // The size field as written (11 octal digits): anything else is not ours.
  uint64_t l = 0;
  for (int i = 0; i < 11; ++i) {
    const unsigned char c = h[124 + i];
    if (c < '0' || c > '7') return 0;
    l = l * 8 + (c - '0');
  }
  if (l < 512 || l % 512 || l > (64u << 20)) return 0;
  const std::string len = std::to_string(l);
  const std::string head = len + " " + kPadComment;
  if (std::memcmp(h + 512, head.data(), head.size()) != 0) return 0;
  return l + 512;
}

}  // namespace nemofs
