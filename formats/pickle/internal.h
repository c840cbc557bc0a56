// What the pickle sources share and nothing outside formats/pickle should see.
#pragma once

#include <string>
#include <string_view>

#include "formats/pickle/pickle.h"

namespace nemofs::pickle::detail {

inline constexpr const char* kFmt = "pickle";

// Python's word for a kind, as error messages and cycle markers name it (pickle.cpp).
const char* kind_name(Kind k);

// allowlist.cpp. Protocol-2 pickles name Python 2 modules (__builtin__, copy_reg, ...) and old torch
// ones; renaming them first lets one allow-list entry serve every protocol.
void remap_python2_name(std::string& module, std::string& name);

struct Allowed {
  Tag tag = Tag::Unknown;
  const char* dtype = nullptr;  // TypedStorage / TorchDtype: the torch dtype name
};
// What the allow-list knows `module`.`name` (already remapped) to be.
Allowed look_up(std::string_view module, std::string_view name);

}  // namespace nemofs::pickle::detail
