// Fuzz target: the restricted pickle machine and its JSON and OmegaConf YAML rendering. Any input must either
// unpickle or be refused with FormatError; nothing may crash, hang or allocate without bound.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "formats/core/errors.h"
#include "formats/pickle/pickle.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace nemofs;
  try {
    auto doc = pickle::unpickle(std::string_view(reinterpret_cast<const char*>(data), size));
    pickle::RenderBudget budget;
    budget.nodes_left = 1u << 20;
    (void)pickle::to_json(*doc.root, budget).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    // The OmegaConf YAML twin (omegaconf.cpp): any config-shaped input must emit or decline.
    if (pickle::holds_omegaconf(*doc.root)) (void)pickle::to_yaml(*doc.root, budget);
  } catch (const FormatError&) {
  }
  return 0;
}
