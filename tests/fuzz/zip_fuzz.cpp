// Fuzz target: the zip reader alone (end records, zip64 records, central directory, local headers,
// stored and deflated entries), without torch's pickle on top. Bad input must be refused with
// FormatError; for an accepted entry, its source must have the size the directory says, a stored
// entry must map to its data inside the file, and every byte must be readable (a deflated entry
// may fail its first read with SysError, never return short).
#include <cstddef>
#include <cstdint>
#include <string>

#include "formats/core/errors.h"
#include "formats/zip/zip.h"
#include "tests/fuzz/fuzz_properties.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace nemofs;
  auto src = fuzz::file_source(data, size);
  ZipIndex idx;
  try {
    idx = index_zip(*src);
  } catch (const FormatError&) {
    return 0;
  }
  if (idx.by_name.size() > idx.entries.size()) fuzz::violation("more names than entries");
  for (const auto& [name, i] : idx.by_name) {
    if (i >= idx.entries.size() || idx.entries[i].name != name) fuzz::violation("by_name points at another entry");
    for (size_t j = i + 1; j < idx.entries.size(); ++j)
      if (idx.entries[j].name == name) fuzz::violation("'" + name + "': an earlier duplicate wins");
  }
  Tree tree;
  size_t n = 0;
  for (const auto& e : idx.entries) {
    if (e.local_header >= size) fuzz::violation("'" + e.name + "': local header offset past the file");
    if (++n > 256) break;
    try {
      uint64_t at = zip_data_offset(*src, e);
      if (at > size || e.csize > size - at) fuzz::violation("'" + e.name + "': data runs past the file");
      auto s = open_zip_entry(src, e);
      if (s->size() != e.usize) fuzz::violation("'" + e.name + "': entry source size differs from the directory's");
      // A size no deflate stream of csize bytes can inflate to is a file no read can deliver.
      if (e.method == 8 && e.usize / 1032 > e.csize)
        fuzz::violation("'" + e.name + "': deflated entry of " + std::to_string(e.csize) + " bytes accepted as " +
                        std::to_string(e.usize) + " bytes");
      if (e.method == 0 && e.usize > 0) {
        auto fr = s->file_range(0, e.usize);
        if (!fr || fr->offset != at) fuzz::violation("'" + e.name + "': stored entry does not map to its data");
      }
      tree.add_file(Tree::kRoot, std::to_string(n), s);
    } catch (const FormatError&) {
    }
  }
  fuzz::CheckOptions o;
  o.allow_io_error = true;
  o.full_read_limit = 4u << 20;
  fuzz::check_tree(tree, o);
  return 0;
}
