// Fuzz target: a torch.save file (zip, or legacy stream when it starts with torch's legacy magic)
// turned into a tree. Bad input must be refused with FormatError, never crash or hang; the tree
// must keep the properties of fuzz_properties.h (a deflated entry may fail its first read with
// SysError; a read that returns delivers every byte).
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "formats/core/errors.h"
#include "formats/detect/checkpoint.h"
#include "formats/torch/torch.h"
#include "tests/fuzz/fuzz_properties.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace nemofs;
  auto src = fuzz::file_source(data, size);
  Tree tree;
  try {
    auto f = sniff(*src) == Format::TorchLegacy ? torch::load_torch_legacy(src) : torch::load_torch_zip(src);
    torch::build_torch_tree(tree, Tree::kRoot, *f);
  } catch (const FormatError&) {
    return 0;
  } catch (const SysError&) {
    return 0;  // a deflated data.pkl that does not inflate
  }
  fuzz::CheckOptions o;
  o.allow_io_error = true;
  fuzz::check_tree(tree, o);
  return 0;
}
