// Fuzz target: a .safetensors file (header parse, validation, tree building, reading every file).
// Refusing input with FormatError is fine; any other exception, crash or sanitizer report is a bug.
#include <cstdint>
#include <string>

#include "formats/core/errors.h"
#include "formats/core/tree.h"
#include "formats/safetensors/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto src = std::make_shared<nemofs::MemorySource>(std::string(reinterpret_cast<const char*>(data), size));
  nemofs::Tree tree;
  try {
    nemofs::build_safetensors(tree, nemofs::Tree::kRoot, src);
  } catch (const nemofs::FormatError&) {
    return 0;
  }
  std::string buf;
  tree.walk([&](nemofs::NodeId, const nemofs::Node& n) {
    if (n.type != nemofs::NodeType::File) return;
    buf.resize(n.data->size());
    if (n.data->read_at(0, buf.data(), buf.size()) != buf.size()) __builtin_trap();
  });
  return 0;
}
