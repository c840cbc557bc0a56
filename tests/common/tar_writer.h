// Hand-written tar archives for unit tests and fuzz seeds: 512-byte blocks, real checksums, and the
// field encodings CPython and GNU tar produce (pax records, GNU 'L' names, base-256 numbers, the
// ustar prefix). Each piece is explicit so a test can break exactly one thing.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>

namespace nemofs::testing {

struct TarHeader {
  std::string name;
  uint64_t size = 0;
  char typeflag = '0';
  std::string linkname;
  std::string prefix;            // ustar prefix field (POSIX magic only)
  bool gnu_magic = false;        // "ustar  \0" instead of "ustar\0" "00"
  bool base256_size = false;     // size field as GNU base-256
  std::string raw_size;          // when non-empty: the 12 size-field bytes verbatim
  uint32_t mode = 0644;
  uint64_t mtime = 1795667668;
  int checksum_delta = 0;        // added to the correct checksum (0 = correct)
  std::string raw_mtime;         // when non-empty: the 12 mtime-field bytes verbatim
  bool v7 = false;               // no magic, version, uname or gname (a pre-POSIX header)
  bool signed_checksum = false;  // the checksum as a signed-char sum (historic Unix tars)
  std::string at386;             // bytes written from offset 386 (old GNU sparse map, isextended, realsize)
};

inline std::string octal_field(uint64_t v, size_t len) {
  // len-1 octal digits, zero padded, NUL terminated (CPython's itn for the POSIX/GNU formats).
  std::string s(len, '\0');
  for (size_t i = len - 1; i-- > 0;) {
    s[i] = static_cast<char>('0' + (v & 7));
    v >>= 3;
  }
  return s;
}

inline std::string tar_header_block(const TarHeader& h) {
  std::string b(512, '\0');
  auto put = [&](size_t off, const std::string& v, size_t len) { std::memcpy(&b[off], v.data(), std::min(len, v.size())); };
  put(0, h.name, 100);
  put(100, octal_field(h.mode, 8), 8);
  put(108, octal_field(0, 8), 8);
  put(116, octal_field(0, 8), 8);
  if (!h.raw_size.empty()) {
    put(124, h.raw_size, 12);
  } else if (h.base256_size) {
    std::string f(12, '\0');
    f[0] = static_cast<char>(0x80);
    uint64_t v = h.size;
    for (int i = 11; i >= 4; --i, v >>= 8) f[i] = static_cast<char>(v & 0xff);
    put(124, f, 12);
  } else {
    put(124, octal_field(h.size, 12), 12);
  }
  if (!h.raw_mtime.empty()) put(136, h.raw_mtime, 12);
  else put(136, octal_field(h.mtime, 12), 12);
  b[156] = h.typeflag;
  put(157, h.linkname, 100);
  if (!h.v7) {
    if (h.gnu_magic) put(257, std::string("ustar  \0", 8), 8);
    else put(257, std::string("ustar\0" "00", 8), 8);
    put(265, "root", 32);
    put(297, "root", 32);
  }
  if (!h.prefix.empty()) put(345, h.prefix, 155);
  if (!h.at386.empty()) put(386, h.at386, 126);
  std::memset(&b[148], ' ', 8);
  unsigned sum = 0;
  for (unsigned char c : b) sum += h.signed_checksum ? static_cast<unsigned>(static_cast<int>(static_cast<signed char>(c))) : c;
  sum = static_cast<unsigned>(static_cast<int>(sum) + h.checksum_delta);
  char ck[8];
  std::snprintf(ck, sizeof ck, "%06o", sum & 0777777);
  std::memcpy(&b[148], ck, 6);
  b[154] = '\0';
  b[155] = ' ';
  return b;
}

inline std::string pad512(std::string data) {
  data.resize((data.size() + 511) / 512 * 512, '\0');
  return data;
}

// One pax record "<len> key=value\n" where len counts the whole record.
inline std::string pax_record(const std::string& key, const std::string& value) {
  size_t body = 1 + key.size() + 1 + value.size() + 1;  // ' ' key '=' value '\n'
  size_t len = body + 1;
  while (std::to_string(len).size() + body != len) len = std::to_string(len).size() + body;
  return std::to_string(len) + " " + key + "=" + value + "\n";
}

// A pax 'x' header block + its padded data, as CPython writes before every member.
inline std::string pax_block(const std::string& records) {
  TarHeader h;
  h.name = "././@PaxHeader";
  h.typeflag = 'x';
  h.size = records.size();
  return tar_header_block(h) + pad512(records);
}

inline std::string gnu_longname_block(const std::string& name) {
  TarHeader h;
  h.name = "././@LongLink";
  h.typeflag = 'L';
  h.gnu_magic = true;
  h.size = name.size() + 1;
  return tar_header_block(h) + pad512(name + std::string(1, '\0'));
}

// A member as CPython 3.8+ writes it: pax header with a fractional mtime, then the ustar header.
inline std::string tar_member(const std::string& name, const std::string& data, char type = '0') {
  TarHeader h;
  h.name = name;
  h.typeflag = type;
  h.size = data.size();
  return pax_block(pax_record("mtime", "1795667668.1344376")) + tar_header_block(h) + pad512(data);
}

inline std::string tar_end() { return std::string(1024, '\0'); }

}  // namespace nemofs::testing
