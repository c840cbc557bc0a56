#include "formats/core/utf8.h"

namespace nemofs {
namespace {

// Length of the sequence that starts at s[i] (its code point in `cp`), or 0 when `check` refuses
// it. Inlined into walk(), where `check` is constant.
inline size_t sequence_at(const unsigned char* s, size_t n, size_t i, Utf8Check check, uint32_t& cp) {
  unsigned char c = s[i];
  if (c < 0x80) {
    cp = c;
    return 1;
  }
  size_t len;
  if ((c >> 5) == 6) len = 2, cp = c & 0x1F;
  else if ((c >> 4) == 14) len = 3, cp = c & 0x0F;
  else if ((c >> 3) == 30) len = 4, cp = c & 0x07;
  else return 0;  // continuation byte or F8..FF
  const bool strict = check == Utf8Check::WellFormed;
  if (strict && (c < 0xC2 || c > 0xF4)) return 0;  // C0/C1 are always overlong; F5.. exceed U+10FFFF
  if (n - i < len) return 0;
  for (size_t k = 1; k < len; ++k) {
    if (check != Utf8Check::LeadOnly && (s[i + k] & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (s[i + k] & 0x3F);
  }
  if (strict) {
    if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000)) return 0;  // overlong
    if (cp >= 0xD800 && cp <= 0xDFFF) return 0;                             // surrogate
    if (cp > 0x10FFFF) return 0;
  }
  return len;
}

// Calls f(code point) for each sequence of `text`; returns the offset of the first one `check`
// refuses.
template <typename F>
std::optional<size_t> walk(std::string_view text, Utf8Check check, F&& f) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  size_t i = 0;
  uint32_t cp;
  while (i < n) {
    size_t len = sequence_at(s, n, i, check, cp);
    if (len == 0) return i;
    f(cp);
    i += len;
  }
  return std::nullopt;
}

}  // namespace

std::optional<size_t> find_invalid_utf8(std::string_view text, Utf8Check check) {
  return walk(text, check, [](uint32_t) {});
}

bool decode_utf8(std::string_view text, Utf8Check check, std::vector<uint32_t>& out) {
  return !walk(text, check, [&](uint32_t cp) { out.push_back(cp); });
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

}  // namespace nemofs
