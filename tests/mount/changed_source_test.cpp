// Sources that change under a mount (issue 21, SEMANTICS section 5): for every source kind
// (safetensors, torch zip, .nemo member and nested tensor view, DCP chunk file, HF shard, gzip
// .nemo) and every kind of change (truncate, rewrite in place with the same size, append, replace
// by rename, touch of the mtime only), what each read through the mount returns: with the kernel's
// page cache kept (old bytes or EIO), with it dropped (EIO; the old bytes after a rename), and
// never a short read or another file's bytes. Other files of a folder source keep reading, and
// `nemofs status` names the changed file.
//
// The page cache of one mounted file is dropped with POSIX_FADV_DONTNEED (what drop_caches does,
// for that file only: a global drop takes seconds on a busy machine); one test uses
// /proc/sys/vm/drop_caches itself to show they agree.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tests/common/manifest_check.h"
#include "tests/mount/mount_util.h"
#include "tests/mount/writable_util.h"

using namespace nemofs::testing;

namespace {

struct Kind {
  std::string name;
  std::string fixture;  // under tests/data/real/
  std::string changed;  // the file changed, relative to the copied fixture ("" = the fixture itself)
  // Files of the mount whose bytes come from `changed` (3: one kept in the page cache, one read
  // first after the change, one read after a global drop).
  std::vector<std::string> hit;
  // Files that keep reading whatever happens to `changed` (other shards, rendered sidecars).
  std::vector<std::string> spared;
};

const std::vector<Kind>& kinds() {
  static const std::vector<Kind> k = {
      {"Safetensors", "safetensors/zoo.safetensors", "",
       {"model.embed.weight", "model.w_bf16", "model.i_i64"}, {"model.embed.weight.json", "__metadata__.json"}},
      {"TorchZip", "torch/zoo.pt", "",
       {"model.embed.weight", "channels_last", "model.i_i64"}, {"model.embed.weight.json"}},
      {"NemoMemberAndView", "nemo/asr_ctc.nemo", "",
       {"model_config.yaml", "model_weights.ckpt.tensors/decoder.decoder_layers.0.weight", "extras/README.txt"},
       {"model_weights.ckpt.tensors/decoder.decoder_layers.0.weight.json"}},
      {"DcpChunkFile", "dcp/sharded_1d", "__1_0.distcp",
       {"model/embed.weight", "model/proj.weight", "model/proj.bias"}, {"model/embed.weight.json", "step.json"}},
      {"HfShard", "hf/tiny-llama", "model-00002-of-00003.safetensors",
       {"model.layers.0.mlp.down_proj.weight", "model.layers.0.mlp.up_proj.weight",
        "model.layers.0.input_layernorm.weight"},
       {"model.embed_tokens.weight", "lm_head.weight", "model.layers.0.mlp.down_proj.weight.json"}},
      {"GzipNemo", "nemo/asr_ctc_legacy_gz.nemo", "",
       {"model_config.yaml", "1d2bda5531411bb07ee07d0c150fdd6c_tokenizer.model",
        "model_weights.ckpt.tensors/decoder.decoder_layers.0.weight"},
       {"model_weights.ckpt.tensors/decoder.decoder_layers.0.weight.json"}},
  };
  return k;
}

enum class Change { Truncate, RewriteSameSize, Append, RenameReplace, TouchMtime };

const char* change_name(Change c) {
  switch (c) {
    case Change::Truncate: return "Truncate";
    case Change::RewriteSameSize: return "RewriteSameSize";
    case Change::Append: return "Append";
    case Change::RenameReplace: return "RenameReplace";
    case Change::TouchMtime: return "TouchMtime";
  }
  return "?";
}

// What a reader gets: the bytes and errno 0, or the errno of the first failing call.
struct Got {
  int err = 0;
  std::string bytes;
};

Got read_through(const std::string& path) {
  Got g;
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) {
    g.err = errno;
    return g;
  }
  char buf[1 << 16];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0) {
      g.err = errno;
      break;
    }
    if (n == 0) break;
    g.bytes.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return g;
}

// Drops the kernel's cached pages of one mounted file, so the next read reaches the server.
void drop_file_cache(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  ASSERT_GE(fd, 0) << path;
  EXPECT_EQ(::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
  ::close(fd);
}

// Equal bytes, or a failure message that says how they differ without printing binary data.
::testing::AssertionResult same_bytes(const std::string& got, const std::string& want) {
  if (got == want) return ::testing::AssertionSuccess();
  size_t i = 0;
  while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
  return ::testing::AssertionFailure() << "got " << got.size() << " bytes, want " << want.size()
                                       << "; first difference at byte " << i;
}

// The same content with every byte changed (a file of the same size that is not the old one).
std::string flipped(const std::string& s) {
  std::string out = s;
  for (auto& c : out) c = static_cast<char>(c ^ 0x5a);
  return out;
}

void apply(Change c, const std::string& file) {
  std::string old = read_whole_file(file);
  switch (c) {
    case Change::Truncate:
      ASSERT_EQ(::truncate(file.c_str(), 100), 0);
      break;
    case Change::RewriteSameSize: {
      // torch.save over last.ckpt: open with O_TRUNC, write a new file of the same size.
      std::ofstream f(file, std::ios::binary | std::ios::trunc);
      f << flipped(old);
      ASSERT_TRUE(f.good());
      break;
    }
    case Change::Append: {
      std::ofstream f(file, std::ios::binary | std::ios::app);
      f << std::string(4096, 'A');
      ASSERT_TRUE(f.good());
      break;
    }
    case Change::RenameReplace: {
      {
        std::ofstream f(file + ".new", std::ios::binary | std::ios::trunc);
        f << flipped(old);
        ASSERT_TRUE(f.good());
      }
      ASSERT_EQ(::rename((file + ".new").c_str(), file.c_str()), 0);
      break;
    }
    case Change::TouchMtime: {
      timespec times[2] = {{0, UTIME_OMIT}, {1700000000, 123}};
      ASSERT_EQ(::utimensat(AT_FDCWD, file.c_str(), times, 0), 0);
      break;
    }
  }
}

// `nemofs status --json`'s source_changed list for the mount at `mp` (empty when none).
std::vector<std::string> changed_in_status(const std::string& mp) {
  auto r = run({nemofs_bin(), "status", "--json"});
  EXPECT_EQ(r.status, 0) << r.err;
  std::vector<std::string> out;
  auto j = nlohmann::json::parse(r.out, nullptr, false);
  if (!j.is_array()) {
    ADD_FAILURE() << "status --json: " << r.out;
    return out;
  }
  for (const auto& e : j)
    if (e.value("mountpoint", "") == mp && e.contains("source_changed"))
      for (const auto& p : e["source_changed"]) out.push_back(p.get<std::string>());
  return out;
}

std::string real(const std::string& p) {
  char buf[PATH_MAX];
  return ::realpath(p.c_str(), buf) ? buf : p;
}

void run_case(const Kind& k, Change c, bool global_drop = false) {
  NEMOFS_REQUIRE_FUSE();
  TempDir tmp;
  const std::string base = k.fixture.substr(k.fixture.rfind('/') + 1);
  const std::string src = tmp / base;
  ASSERT_EQ(run({"cp", "-a", data_path("real/" + k.fixture), src}).status, 0);
  const std::string changed = real(k.changed.empty() ? src : src + "/" + k.changed);
  Mount m(src, tmp / "mnt", {"-o", "ro"});
  ASSERT_TRUE(m.ok()) << m.result().err;
  auto at = [&](const std::string& rel) { return m.path() + "/" + rel; };

  // What the mount shows before the change: every file whole.
  std::map<std::string, std::string> before;
  for (const auto* list : {&k.hit, &k.spared})
    for (const auto& f : *list) {
      Got g = read_through(at(f));
      ASSERT_EQ(g.err, 0) << f;
      struct stat st {};
      ASSERT_EQ(::stat(at(f).c_str(), &st), 0);
      ASSERT_EQ(g.bytes.size(), static_cast<size_t>(st.st_size)) << f;
      ASSERT_FALSE(g.bytes.empty()) << f;
      before[f] = g.bytes;
    }
  // hit[0] stays in the page cache; everything else must reach the server next time.
  for (const auto& [f, _] : before)
    if (f != k.hit[0]) drop_file_cache(at(f));

  apply(c, changed);
  if (::testing::Test::HasFatalFailure()) return;
  const bool keeps_serving = c == Change::RenameReplace;

  // The page cache still holds hit[0]: the old bytes (or EIO if the kernel let them go).
  Got cached = read_through(at(k.hit[0]));
  if (cached.err == 0) EXPECT_TRUE(same_bytes(cached.bytes, before[k.hit[0]])) << "cached " << k.hit[0];
  else EXPECT_EQ(cached.err, EIO) << k.hit[0];

  // A read that reaches the server.
  Got first = read_through(at(k.hit[1]));
  if (keeps_serving) {
    EXPECT_EQ(first.err, 0) << k.hit[1];
    EXPECT_TRUE(same_bytes(first.bytes, before[k.hit[1]])) << k.hit[1];
  } else {
    EXPECT_EQ(first.err, EIO) << k.hit[1] << ": got " << first.bytes.size() << " bytes";
    EXPECT_TRUE(first.bytes.empty()) << k.hit[1] << ": " << first.bytes.size() << " bytes before the error";
  }

  // Page cache dropped: every read of the changed file's bytes reaches the server.
  if (global_drop) {
    std::ofstream("/proc/sys/vm/drop_caches") << "3\n";
  } else {
    for (const auto& f : k.hit) drop_file_cache(at(f));
  }
  for (const auto& f : k.hit) {
    Got g = read_through(at(f));
    if (keeps_serving) {
      EXPECT_EQ(g.err, 0) << f;
      EXPECT_TRUE(same_bytes(g.bytes, before[f])) << f;
    } else {
      EXPECT_EQ(g.err, EIO) << f << ": got " << g.bytes.size() << " bytes";
      EXPECT_TRUE(g.bytes.empty()) << f;
    }
  }
  // Files whose bytes do not come from the changed file read as before.
  for (const auto& f : k.spared) {
    Got g = read_through(at(f));
    EXPECT_EQ(g.err, 0) << f;
    EXPECT_TRUE(same_bytes(g.bytes, before[f])) << f;
  }

  auto listed = changed_in_status(m.path());
  if (keeps_serving) EXPECT_TRUE(listed.empty()) << ::testing::PrintToString(listed);
  else EXPECT_EQ(listed, std::vector<std::string>{changed});
  auto text = run({nemofs_bin(), "status"}).out;
  EXPECT_EQ(text.find("source changed: " + changed + " changed since it was mounted; reads of it fail (EIO): "
                      "remount to see the new file\n") != std::string::npos,
            !keeps_serving)
      << text;
  auto u = m.umount();
  EXPECT_EQ(u.status, 0) << u.err;
}

class ChangedSource : public ::testing::TestWithParam<std::tuple<size_t, Change>> {};

TEST_P(ChangedSource, ReadsAreOldBytesOrEioNeverShortOrForeign) {
  auto [ki, change] = GetParam();
  run_case(kinds()[ki], change);
}

INSTANTIATE_TEST_SUITE_P(
    AllKinds, ChangedSource,
    ::testing::Combine(::testing::Range<size_t>(0, 6),
                       ::testing::Values(Change::Truncate, Change::RewriteSameSize, Change::Append,
                                         Change::RenameReplace, Change::TouchMtime)),
    [](const ::testing::TestParamInfo<ChangedSource::ParamType>& info) {
      return kinds()[std::get<0>(info.param)].name + "_" + change_name(std::get<1>(info.param));
    });

// The literal recipe: the whole page cache dropped through /proc/sys/vm/drop_caches.
TEST(ChangedSourceGlobalDrop, SafetensorsRewrittenInPlace) {
  if (::access("/proc/sys/vm/drop_caches", W_OK) != 0) GTEST_SKIP() << "drop_caches needs root";
  run_case(kinds()[0], Change::RewriteSameSize, true);
}

// A writable .nemo: reads of unchanged members and views check the archive like a read-only mount;
// an edit made before the change still reads (its bytes are the overlay's); a copy-up after the
// change fails instead of copying foreign bytes; the commit is refused (as before).
TEST(ChangedSourceWritable, NemoReadsAndCopyUpAreEioAndCommitIsRefused) {
  NEMOFS_REQUIRE_FUSE();
  TempDir tmp;
  const std::string src = tmp / "asr_ctc.nemo";
  ASSERT_EQ(run({"cp", data_path("real/nemo/asr_ctc.nemo"), src}).status, 0);
  Mount m(src, tmp / "mnt");
  ASSERT_TRUE(m.ok()) << m.result().err;
  auto at = [&](const std::string& rel) { return m.path() + "/" + rel; };
  const std::string view = "model_weights.ckpt.tensors/decoder.decoder_layers.0.weight";
  Got config = read_through(at("model_config.yaml"));
  Got tensor = read_through(at(view));
  ASSERT_EQ(config.err, 0);
  ASSERT_EQ(tensor.err, 0);
  { std::ofstream(at("extras/README.txt"), std::ios::app) << "edited\n"; }
  Got edited = read_through(at("extras/README.txt"));
  ASSERT_EQ(edited.err, 0);

  apply(Change::RewriteSameSize, src);
  for (const auto& f : {"model_config.yaml", view.c_str(), "extras/README.txt"}) drop_file_cache(at(f));
  EXPECT_EQ(read_through(at("model_config.yaml")).err, EIO);
  EXPECT_EQ(read_through(at(view)).err, EIO);
  Got still = read_through(at("extras/README.txt"));
  EXPECT_EQ(still.err, 0);
  EXPECT_TRUE(same_bytes(still.bytes, edited.bytes));
  // A first write to an unchanged member copies it up from the archive: refused, not copied.
  {
    int fd = ::open(at("b61a41f8cc8053f1a730cce9c90087c4_vocab.txt").c_str(), O_WRONLY | O_APPEND);
    int err = 0;
    if (fd < 0) err = errno;
    else if (::write(fd, "x", 1) != 1) err = errno;
    if (fd >= 0) ::close(fd);
    EXPECT_EQ(err, EIO);
  }
  EXPECT_EQ(changed_in_status(m.path()), std::vector<std::string>{real(src)});
  auto u = m.umount();
  EXPECT_EQ(u.status, 5) << u.out << u.err;
  EXPECT_NE((u.out + u.err).find("changed on disk since it was mounted"), std::string::npos) << u.out << u.err;
}

// The FUSE edge never sends a short reply for a span of a file: an edited member's overlay file
// cut short behind the server's back (the only file segment with no source identity) is EIO.
TEST(ChangedSourceWritable, ShortFileSegmentIsEioNotAShortRead) {
  NEMOFS_REQUIRE_FUSE();
  TempDir tmp;
  const std::string src = tmp / "asr_ctc.nemo";
  ASSERT_EQ(run({"cp", data_path("real/nemo/asr_ctc.nemo"), src}).status, 0);
  Mount m(src, tmp / "mnt");
  ASSERT_TRUE(m.ok()) << m.result().err;
  const std::string member = m.path() + "/1d2bda5531411bb07ee07d0c150fdd6c_tokenizer.model";
  { std::ofstream(member, std::ios::app) << "edited"; }
  Got edited = read_through(member);
  ASSERT_EQ(edited.err, 0);
  std::vector<std::string> data;
  for (const auto& e : std::filesystem::directory_iterator(overlay_of(src) + "/data")) data.push_back(e.path());
  ASSERT_EQ(data.size(), 1u);
  ASSERT_EQ(::truncate(data[0].c_str(), 1000), 0);
  drop_file_cache(member);
  Got g = read_through(member);
  EXPECT_EQ(g.err, EIO) << "got " << g.bytes.size() << " of " << edited.bytes.size() << " bytes";
  // Put the bytes back (the edits are committed at unmount).
  { std::ofstream(data[0], std::ios::binary | std::ios::trunc) << edited.bytes; }
  drop_file_cache(member);
  Got back = read_through(member);
  EXPECT_EQ(back.err, 0);
  EXPECT_TRUE(same_bytes(back.bytes, edited.bytes));
  auto u = m.umount();
  EXPECT_EQ(u.status, 0) << u.out << u.err;
}

}  // namespace
