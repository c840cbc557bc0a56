// Fuzz target: a torch.save file (zip, or legacy stream when it starts with torch's legacy magic)
// turned into a tree, then every file of the tree read in full. Bad input must be refused with
// FormatError (or IoError for a corrupt deflate stream read later), never crash or hang.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "formats/core/errors.h"
#include "formats/detect/checkpoint.h"
#include "formats/torch/torch.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace nemofs;
  auto src = std::make_shared<MemorySource>(std::string(reinterpret_cast<const char*>(data), size), "fuzz");
  try {
    auto f = sniff(*src) == Format::TorchLegacy ? torch::load_torch_legacy(src) : torch::load_torch_zip(src);
    Tree tree;
    torch::build_torch_tree(tree, Tree::kRoot, *f);
    std::string buf;
    tree.walk([&](NodeId, const Node& n) {
      if (n.type != NodeType::File || n.data->size() > (64u << 20)) return;
      buf.resize(n.data->size());
      (void)n.data->read_at(0, buf.data(), buf.size());
    });
  } catch (const FormatError&) {
  } catch (const IoError&) {
  }
  return 0;
}
