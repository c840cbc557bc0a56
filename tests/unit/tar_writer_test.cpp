// The tar header writer against the bytes CPython's tarfile really wrote (the real .nemo fixtures):
// rebuilding every member's header blocks from its metadata must give the same bytes.
#include <gtest/gtest.h>

#include "formats/core/byte_source.h"
#include "formats/nemo/nemo.h"
#include "formats/tar/tar.h"
#include "formats/tar/tar_writer.h"
#include "tests/common/manifest_check.h"

using namespace nemofs;
using namespace nemofs::testing;

namespace {

TarMember member_of(const TarEntry& e) {
  TarMember m;
  m.path = normalize_member_name(e.name, e.header_offset);
  m.dir = e.type == TarType::Dir;
  m.mode = e.mode;
  m.size = e.size;
  m.mtime_sec = e.mtime;
  auto dot = e.mtime_text().find('.');
  if (dot != std::string::npos) {
    std::string frac = e.mtime_text().substr(dot + 1, 9);
    frac.append(9 - frac.size(), '0');
    m.mtime_nsec = static_cast<uint32_t>(std::stoul(frac));
  }
  return m;
}

void expect_headers_rebuilt(const std::string& fixture) {
  auto src = std::make_shared<FileSource>(data_path(fixture));
  TarIndex idx = index_tar(*src);
  TarStyle style = TarStyle::of_archive(*src, idx);
  EXPECT_TRUE(style.dot_slash);
  EXPECT_TRUE(style.pax_mtime);
  ASSERT_FALSE(idx.entries.empty());
  for (const auto& e : idx.entries) {
    std::string want = read_exact(*src, e.header_offset, e.data_offset - e.header_offset, "test");
    EXPECT_EQ(tar_header(member_of(e), style), want) << fixture << ": " << e.name;
  }
  // The end of the archive: two zero blocks, padded to 10240.
  EXPECT_EQ(idx.end_of_entries + tar_end_size(idx.end_of_entries), src->size());
}

}  // namespace

TEST(TarWriter, RebuildsCPythonHeadersOfAsrCtc) { expect_headers_rebuilt("real/nemo/asr_ctc.nemo"); }
TEST(TarWriter, RebuildsCPythonHeadersOfMegatronGpt) { expect_headers_rebuilt("real/nemo/megatron_gpt.nemo"); }

TEST(TarWriter, HugeSizeAndLongNonAsciiNameGoToPaxRecords) {
  TarStyle style;
  TarMember m;
  m.path = std::string(150, 'a') + "/\xc3\xa9t\xc3\xa9.bin";
  m.size = (8ull << 30) + 1;
  m.mtime_sec = 1700000000;
  std::string h = tar_header(m, style);
  ASSERT_EQ(h.size() % 512, 0u);
  // Index the header followed by a fake (sparse) data region: the index must see the pax values.
  class Fake final : public ByteSource {
   public:
    explicit Fake(std::string h) : h_(std::move(h)) {}
    uint64_t size() const override { return h_.size() + (8ull << 30) + 512 + 1024; }
    size_t read_at(uint64_t off, void* buf, size_t len) const override {
      size_t n = static_cast<size_t>(std::min<uint64_t>(len, size() - off));
      for (size_t i = 0; i < n; ++i)
        static_cast<char*>(buf)[i] = off + i < h_.size() ? h_[static_cast<size_t>(off + i)] : '\0';
      return n;
    }
    std::string h_;
  };
  Fake f(h);
  TarIndex idx = index_tar(f);
  ASSERT_EQ(idx.entries.size(), 1u);
  EXPECT_EQ(idx.entries[0].name, "./" + m.path);
  EXPECT_EQ(idx.entries[0].size, m.size);
  EXPECT_EQ(idx.entries[0].mtime, 1700000000);
}
