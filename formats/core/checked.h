// Checked arithmetic and little-endian decoding for every integer that comes from a file.
//
// Rule of the formats library: no raw +, * or narrowing on values read from a source. Overflow is
// reported as a FormatError so hostile sizes become a one-line refusal, never a wrap-around.
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <type_traits>

#include "formats/core/errors.h"

namespace nemofs {

inline std::optional<uint64_t> try_add(uint64_t a, uint64_t b) {
  uint64_t r;
  if (__builtin_add_overflow(a, b, &r)) return std::nullopt;
  return r;
}
inline std::optional<uint64_t> try_mul(uint64_t a, uint64_t b) {
  uint64_t r;
  if (__builtin_mul_overflow(a, b, &r)) return std::nullopt;
  return r;
}

inline uint64_t checked_add(uint64_t a, uint64_t b, const char* format, std::optional<uint64_t> at, const char* what) {
  auto r = try_add(a, b);
  if (!r) throw FormatError(format, at, std::string(what) + ": arithmetic overflow");
  return *r;
}
inline uint64_t checked_mul(uint64_t a, uint64_t b, const char* format, std::optional<uint64_t> at, const char* what) {
  auto r = try_mul(a, b);
  if (!r) throw FormatError(format, at, std::string(what) + ": arithmetic overflow");
  return *r;
}

template <typename T>
inline T load_le(const void* p) {
  static_assert(std::is_integral_v<T>);
  std::make_unsigned_t<T> v = 0;
  const auto* b = static_cast<const unsigned char*>(p);
  for (size_t i = 0; i < sizeof(T); ++i) v |= static_cast<std::make_unsigned_t<T>>(b[i]) << (8 * i);
  return static_cast<T>(v);
}

template <typename T>
inline void store_le(void* p, T value) {
  auto v = static_cast<std::make_unsigned_t<T>>(value);
  auto* b = static_cast<unsigned char*>(p);
  for (size_t i = 0; i < sizeof(T); ++i) b[i] = static_cast<unsigned char>(v >> (8 * i));
}

}  // namespace nemofs
