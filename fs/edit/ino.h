// Inode numbers as the kernel sees them (FUSE_ROOT_ID = 1 is the root), shared by the edit
// namespace and every backend.
#pragma once

#include <cstdint>

namespace nemofs {

using Ino = uint64_t;
constexpr Ino kRootIno = 1;

}  // namespace nemofs
