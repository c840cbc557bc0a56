// FNV-1a, 64 bit: the project's one non-cryptographic hash. Journals (an archive's sample hash),
// state-file names and the DCP metadata cache key already on disk were made with it: it must stay
// bit for bit what it is.
#pragma once

#include <cstddef>
#include <cstdint>

namespace nemofs {

constexpr uint64_t kFnvOffset = 1469598103934665603ull;
constexpr uint64_t kFnvPrime = 1099511628211ull;

inline uint64_t fnv1a(uint64_t h, const void* data, size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= kFnvPrime;
  }
  return h;
}

}  // namespace nemofs
