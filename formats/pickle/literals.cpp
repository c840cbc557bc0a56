// The machine's number and string arguments that need more than a byte copy: protocol-0 text
// (INT, LONG, STRING, UNICODE) and the two's complement LONG1/LONG4 integers.
#include <charconv>
#include <string>
#include <vector>

#include "formats/core/utf8.h"
#include "formats/pickle/machine.h"

namespace nemofs::pickle::detail {
namespace {

int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Magnitude (big-endian base 2^32 limbs) to decimal.
std::string limbs_to_decimal(std::vector<uint32_t> limbs, bool negative) {
  std::string digits;
  while (!limbs.empty()) {
    uint64_t rem = 0;
    for (auto& l : limbs) {
      uint64_t cur = (rem << 32) | l;
      l = static_cast<uint32_t>(cur / 1000000000u);
      rem = cur % 1000000000u;
    }
    while (!limbs.empty() && limbs.front() == 0) limbs.erase(limbs.begin());
    for (int k = 0; k < 9; ++k) {
      digits += static_cast<char>('0' + rem % 10);
      rem /= 10;
      if (limbs.empty() && rem == 0) break;
    }
  }
  while (digits.size() > 1 && digits.back() == '0') digits.pop_back();
  if (digits.empty()) digits = "0";
  if (negative && digits != "0") digits += '-';
  return {digits.rbegin(), digits.rend()};
}

}  // namespace

Value* Machine::int_from_decimal(std::string text) {
  while (!text.empty() && (text.back() == ' ' || text.back() == '\r')) text.pop_back();
  size_t start = 0;
  while (start < text.size() && text[start] == ' ') ++start;
  text = text.substr(start);
  bool neg = false;
  size_t i = 0;
  if (i < text.size() && (text[i] == '-' || text[i] == '+')) neg = text[i++] == '-';
  if (i == text.size()) fail(std::string(op_name(op_)) + " argument is not an integer");
  for (size_t k = i; k < text.size(); ++k)
    if (text[k] < '0' || text[k] > '9') fail(std::string(op_name(op_)) + " argument '" + text.substr(0, 40) + "' is not an integer");
  if (text.size() - i > limits_.max_int_bytes * 5 / 2)
    fail(std::string(op_name(op_)) + " integer has more than " + std::to_string(limits_.max_int_bytes * 5 / 2) + " digits");
  int64_t v = 0;
  auto r = std::from_chars(text.data() + (text[0] == '+' ? 1 : 0), text.data() + text.size(), v);
  if (r.ec == std::errc() && r.ptr == text.data() + text.size()) return make_int(v);
  while (i + 1 < text.size() && text[i] == '0') ++i;
  Value* x = make(Kind::BigInt);
  x->str = arena_->text((neg ? "-" : "") + text.substr(i));
  return x;
}

Value* Machine::int_from_le(const std::string& bytes) {
  if (bytes.empty()) return make_int(0);
  size_t n = bytes.size();
  bool neg = static_cast<unsigned char>(bytes[n - 1]) & 0x80;
  std::vector<unsigned char> mag(bytes.begin(), bytes.end());
  if (neg) {  // two's complement magnitude
    for (auto& c : mag) c = static_cast<unsigned char>(~c);
    for (auto& c : mag) {
      if (++c != 0) break;
    }
  }
  while (!mag.empty() && mag.back() == 0) mag.pop_back();
  if (mag.size() <= 8) {
    uint64_t m = 0;
    for (size_t k = mag.size(); k-- > 0;) m = (m << 8) | mag[k];
    if (!neg && m <= static_cast<uint64_t>(INT64_MAX)) return make_int(static_cast<int64_t>(m));
    if (neg && m <= static_cast<uint64_t>(INT64_MAX) + 1) return make_int(static_cast<int64_t>(0 - m));
  }
  std::vector<uint32_t> limbs((mag.size() + 3) / 4, 0);
  for (size_t k = 0; k < mag.size(); ++k) limbs[limbs.size() - 1 - k / 4] |= static_cast<uint32_t>(mag[k]) << (8 * (k % 4));
  Value* x = make(Kind::BigInt);
  x->str = arena_->text(limbs_to_decimal(std::move(limbs), neg));
  return x;
}

std::string Machine::decode_string_escape(const std::string& line) {
  std::string s = line;
  while (!s.empty() && (s.back() == '\r' || s.back() == ' ')) s.pop_back();
  if (s.size() < 2 || (s.front() != '\'' && s.front() != '"') || s.back() != s.front())
    fail("STRING argument is not a quoted string");
  s = s.substr(1, s.size() - 2);
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '\\' || i + 1 == s.size()) {
      out += s[i];
      continue;
    }
    char c = s[++i];
    switch (c) {
      case 'n': out += '\n'; break;
      case 't': out += '\t'; break;
      case 'r': out += '\r'; break;
      case 'a': out += '\a'; break;
      case 'b': out += '\b'; break;
      case 'f': out += '\f'; break;
      case 'v': out += '\v'; break;
      case '\\': out += '\\'; break;
      case '\'': out += '\''; break;
      case '"': out += '"'; break;
      case '\n': break;
      case 'x': {
        int h = i + 2 < s.size() ? hexval(s[i + 1]) : -1, l = i + 2 < s.size() ? hexval(s[i + 2]) : -1;
        if (h < 0 || l < 0) fail("STRING argument has a bad \\x escape");
        out += static_cast<char>(h * 16 + l);
        i += 2;
        break;
      }
      default:
        if (c >= '0' && c <= '7') {
          int v = c - '0';
          for (int k = 0; k < 2 && i + 1 < s.size() && s[i + 1] >= '0' && s[i + 1] <= '7'; ++k) v = v * 8 + (s[++i] - '0');
          out += static_cast<char>(v & 0xFF);
        } else {
          out += '\\';
          out += c;
        }
    }
  }
  return out;
}

std::string Machine::decode_raw_unicode_escape(const std::string& raw) {
  std::string out;
  for (size_t i = 0; i < raw.size(); ++i) {
    auto c = static_cast<unsigned char>(raw[i]);
    if (c == '\\' && i + 1 < raw.size() && (raw[i + 1] == 'u' || raw[i + 1] == 'U')) {
      size_t n = raw[i + 1] == 'u' ? 4 : 8;
      if (i + 2 + n > raw.size()) fail("UNICODE argument has a truncated \\u escape");
      uint32_t cp = 0;
      for (size_t k = 0; k < n; ++k) {
        int h = hexval(raw[i + 2 + k]);
        if (h < 0) fail("UNICODE argument has a bad \\u escape");
        cp = cp * 16 + static_cast<uint32_t>(h);
      }
      if (cp > 0x10FFFF) fail("UNICODE argument has a code point beyond U+10FFFF");
      append_utf8(out, cp);
      i += 1 + n;
    } else {
      append_utf8(out, c);  // raw-unicode-escape: every other byte is Latin-1
    }
  }
  return out;
}

}  // namespace nemofs::pickle::detail
