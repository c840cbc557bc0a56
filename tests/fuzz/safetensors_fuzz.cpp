// Fuzz target: a .safetensors file (header parse, validation, tree building). Refusing input with
// FormatError is fine; any other exception, crash or sanitizer report is a bug, and so is a tree
// that breaks a property of fuzz_properties.h (every file readable in full, tensor size = shape x
// dtype as the sidecar says, extents inside the input file).
#include <cstdint>
#include <string>

#include "formats/core/errors.h"
#include "formats/core/tree.h"
#include "formats/safetensors/safetensors.h"
#include "tests/fuzz/fuzz_properties.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto src = nemofs::fuzz::file_source(data, size);
  nemofs::Tree tree;
  try {
    nemofs::build_safetensors(tree, nemofs::Tree::kRoot, src);
  } catch (const nemofs::FormatError&) {
    return 0;
  }
  nemofs::fuzz::check_tree(tree);
  return 0;
}
