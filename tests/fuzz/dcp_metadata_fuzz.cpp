// Fuzz target: arbitrary bytes as a distributed checkpoint's .metadata.
//   1. The whole folder build (build_dcp) over an in-memory folder whose every data file holds the
//      same input bytes (so chunk items are arbitrary bytes too), then the tree's properties
//      (fuzz_properties.h) checked.
//   2. parse_metadata, and for each tensor whose chunks pass validate_tiling (and that is small),
//      chunk assembly from in-memory chunks compared byte for byte with a naive assembly.
// Bad input must be refused with FormatError (SysError for a chunk that fails on first read), never
// crash, hang or assemble wrong bytes (a mismatch aborts).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "formats/core/errors.h"
#include "formats/core/tensor.h"
#include "formats/dcp/dcp.h"
#include "formats/dcp/sharded.h"
#include "formats/detect/checkpoint.h"
#include "tests/fuzz/fuzz_properties.h"

namespace {

using namespace nemofs;

class MemFileSet final : public FileSet {
 public:
  explicit MemFileSet(SourcePtr bytes) : bytes_(std::move(bytes)) {}
  std::vector<std::string> list() const override { return {".metadata"}; }
  SourcePtr open(const std::string& rel) const override {
    if (rel == "meta.pt" || rel == "common.pt") return nullptr;
    return bytes_;
  }
  std::string describe() const override { return "fuzz"; }

 private:
  SourcePtr bytes_;
};

void check_assembly(const dcp::Entry& e) {
  auto dt = dtype_from_torch(e.torch_dtype);
  if (!dt || dt->bits % 8 != 0) return;
  const uint64_t elem = dt->bits / 8;
  uint64_t numel = 1;
  for (uint64_t s : e.shape) {
    if (s > (1u << 20) || (numel = numel * s) > (1u << 18)) return;
  }
  if (e.chunks.size() > 4096) return;
  std::vector<dcp::Box> boxes;
  for (const auto& c : e.chunks) boxes.push_back(c.box);
  dcp::validate_tiling(e.shape, boxes, "fuzz");  // throws FormatError when not a tiling
  std::string global(numel * elem, '\0');
  for (size_t i = 0; i < global.size(); ++i) global[i] = static_cast<char>((i * 2654435761u) >> 13);
  std::vector<dcp::ShardChunk> chunks;
  for (const auto& b : boxes) {
    std::string bytes;
    uint64_t n = 1;
    for (uint64_t s : b.sizes) n *= s;
    std::vector<uint64_t> l(b.sizes.size(), 0);
    for (uint64_t k = 0; k < n; ++k) {
      uint64_t g = 0;
      for (size_t d = 0; d < e.shape.size(); ++d) g = g * e.shape[d] + b.offsets[d] + l[d];
      bytes.append(global, g * elem, elem);
      for (size_t d = b.sizes.size(); d-- > 0;) {
        if (++l[d] < b.sizes[d]) break;
        l[d] = 0;
      }
    }
    auto src = std::make_shared<MemorySource>(std::move(bytes));
    chunks.push_back(dcp::ShardChunk{b, [src] { return src; }, "c"});
  }
  dcp::ShardedTensorSource t(e.shape, elem, std::move(chunks), "fuzz");
  std::string out(global.size(), '\0');
  if (t.read_at(0, out.data(), out.size()) != out.size() || out != global) std::abort();
  // A few unaligned ranges.
  for (uint64_t off = 1; off < global.size(); off = off * 3 + 1) {
    uint64_t len = std::min<uint64_t>(global.size() - off, off * 2 + 5);
    std::string part(len, '\0');
    if (t.read_at(off, part.data(), len) != len || part != global.substr(off, len)) std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto src = fuzz::file_source(data, size);
  Tree tree;
  bool built = true;
  try {
    dcp::build_dcp(tree, Tree::kRoot, MemFileSet(src));
  } catch (const FormatError&) {
    built = false;
  } catch (const SysError&) {
    built = false;
  }
  if (built) {
    fuzz::CheckOptions o;
    o.allow_io_error = true;  // a chunk is checked on its first read
    fuzz::check_tree(tree, o);
  }
  try {
    auto md = dcp::parse_metadata(*src);
    for (const auto& e : md.entries) {
      if (!e.is_tensor) continue;
      try {
        check_assembly(e);
      } catch (const FormatError&) {
      }
    }
  } catch (const FormatError&) {
  }
  return 0;
}
