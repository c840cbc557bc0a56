// Fuzz target: a tar / .nemo archive (index_tar, name normalisation, the .nemo tree and the nested
// `<member>.tensors/` views). FormatError is a refusal; anything else is a bug, and so is a tree
// that breaks a property of fuzz_properties.h. Members are raw bytes, so sidecar checks apply only
// to files of the `.tensors/` views; every member's extent must be its data in the archive.
#include <cstdint>
#include <string>

#include "formats/core/errors.h"
#include "formats/core/tree.h"
#include "formats/nemo/nemo.h"
#include "tests/fuzz/fuzz_properties.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace nemofs;
  auto src = fuzz::file_source(data, size);
  Tree tree;
  NemoArchive nemo;
  try {
    nemo = build_nemo(tree, src);
  } catch (const FormatError&) {
    return 0;
  }
  fuzz::CheckOptions o;
  o.allow_io_error = true;  // a deflated torch zip entry inside a view may be corrupt
  o.may_be_tensor = [&](const std::string& p) {
    return !nemo.entry_of(tree, p) && !nemo.entry_of(tree, p + ".json");
  };
  fuzz::check_tree(tree, o);
  nemo.for_each_member(tree, [&](const std::string& path, size_t i) {
    const TarEntry& e = nemo.index.entries.at(i);
    auto id = tree.resolve(path);
    if (!id) fuzz::violation("member '" + path + "' is not in the tree");
    const Node& n = tree.node(*id);
    if (n.type != NodeType::File) return;
    if (n.data->size() != e.size) fuzz::violation("member '" + path + "' has another size than its header says");
    if (e.size == 0) return;
    if (e.sparse) {  // its first data region maps to the first stored bytes
      if (e.regions().empty()) return;
      auto fr = n.data->file_range(e.regions()[0].offset, e.regions()[0].length);
      if (!fr || fr->offset != e.data_offset) fuzz::violation("sparse member '" + path + "' does not map to its data");
      return;
    }
    auto fr = n.data->file_range(0, e.size);
    if (!fr || fr->offset != e.data_offset) fuzz::violation("member '" + path + "' does not map to its data in the archive");
  });
  return 0;
}
