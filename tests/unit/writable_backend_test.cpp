// The writable .nemo backend without FUSE: `<member>.tensors/` views (grafted by hand here, as
// add_checkpoint_views does, since this branch has no tensor formats yet), inode stability and
// the overlay journal, driven through the Backend interface.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <set>

#include "formats/detect/checkpoint.h"
#include "fs/backends/writable_backend.h"
#include "tests/common/manifest_check.h"
#include "tests/unit/backend_util.h"

using namespace nemofs;
using namespace nemofs::testing;

namespace {

struct Fixture {
  std::string dir, archive;
  std::unique_ptr<WritableBackend> b;
  Fixture() {
    char tmpl[] = "/tmp/nemofs-wb-XXXXXX";
    dir = ::mkdtemp(tmpl);
    archive = dir + "/asr_ctc.nemo";
    std::filesystem::copy_file(data_path("real/nemo/asr_ctc.nemo"), archive);
    Checkpoint cp = open_checkpoint(archive);
    Tree view;
    view.add_file(Tree::kRoot, "w.bin", std::make_shared<MemorySource>("abcd"));
    cp.tree.graft(Tree::kRoot, "model_weights.ckpt.tensors", view);
    WritableOptions o;
    o.archive_path = archive;
    o.uid = getuid();
    o.gid = getgid();
    b = std::make_unique<WritableBackend>(std::move(cp), o);
  }
  ~Fixture() {
    b.reset();
    std::filesystem::remove_all(dir);
  }
  std::vector<std::string> names(Ino ino) {
    std::vector<std::string> out;
    b->readdir(ino, 0, [&](const DirEntryOut& e, uint64_t) {
      out.push_back(e.name);
      return true;
    });
    return out;
  }
  int err_of(const std::function<void()>& f) {
    try {
      f();
      return 0;
    } catch (const SysError& e) {
      return e.err();
    }
  }
};


bool listed(const std::vector<std::string>& v, const std::string& n) { return std::find(v.begin(), v.end(), n) != v.end(); }

}  // namespace

TEST(WritableBackend, ViewsAreReadOnlyAndHiddenWhileTheirMemberIsChanged) {
  Fixture f;
  Backend& b = *f.b;
  Entry view = b.lookup(kRootIno, "model_weights.ckpt.tensors");
  EXPECT_TRUE(S_ISDIR(view.attr.st_mode));
  EXPECT_EQ(view.entry_timeout, 0.0);  // its visibility depends on the member
  Entry w = b.lookup(view.attr.st_ino, "w.bin");
  EXPECT_EQ(read_all(b, w.attr.st_ino), "abcd");
  EXPECT_EQ(f.err_of([&] { b.open(w.attr.st_ino, O_WRONLY); }), EROFS);
  EXPECT_EQ(f.err_of([&] { b.unlink(view.attr.st_ino, "w.bin"); }), EROFS);
  EXPECT_EQ(f.err_of([&] { b.rename(kRootIno, "model_weights.ckpt.tensors", kRootIno, "x", 0); }), EROFS);
  EXPECT_EQ(f.err_of([&] { b.mkdir(view.attr.st_ino, "d", 0755); }), EROFS);

  // Renaming the member away hides its view; renaming it back shows it again.
  Entry m = b.lookup(kRootIno, "model_weights.ckpt");
  b.rename(kRootIno, "model_weights.ckpt", kRootIno, "moved.ckpt", 0);
  EXPECT_EQ(f.err_of([&] { b.lookup(kRootIno, "model_weights.ckpt.tensors"); }), ENOENT);
  EXPECT_FALSE(listed(f.names(kRootIno), "model_weights.ckpt.tensors"));
  EXPECT_EQ(f.b->pending_edits(), 2u);  // one moved member: a new path, a deleted path
  b.rename(kRootIno, "moved.ckpt", kRootIno, "model_weights.ckpt", 0);
  EXPECT_EQ(f.b->pending_edits(), 0u);
  EXPECT_TRUE(listed(f.names(kRootIno), "model_weights.ckpt.tensors"));
  // The inode number survived both renames.
  EXPECT_EQ(b.lookup(kRootIno, "model_weights.ckpt").attr.st_ino, m.attr.st_ino);

  // Writing the member copies it up and hides the view.
  b.open(m.attr.st_ino, O_RDWR);
  EXPECT_EQ(b.write(m.attr.st_ino, 0, 0, "PK", 2), 2u);
  EXPECT_EQ(f.err_of([&] { b.lookup(kRootIno, "model_weights.ckpt.tensors"); }), ENOENT);
  b.release(m.attr.st_ino, 0);
  EXPECT_EQ(f.b->pending_edits(), 1u);
}

TEST(WritableBackend, JournalBringsEditsBackInANewBackend) {
  std::string dir;
  {
    Fixture f;
    Backend& b = *f.b;
    OpenResult o;
    Entry e = b.create(kRootIno, "new.txt", 0644, O_WRONLY, o);
    b.write(e.attr.st_ino, 0, 0, "hello", 5);
    b.flush(e.attr.st_ino, 0);
    b.release(e.attr.st_ino, 0);
    b.unlink(kRootIno, "model_config.yaml");
    // A second backend over the same archive (after this one is gone) sees the edits.
    std::string archive = f.archive;
    f.b.reset();
    Checkpoint cp = open_checkpoint(archive);
    WritableOptions opts;
    opts.archive_path = archive;
    WritableBackend again(std::move(cp), opts);
    EXPECT_EQ(read_all(again, again.lookup(kRootIno, "new.txt").attr.st_ino), "hello");
    EXPECT_THROW(again.lookup(kRootIno, "model_config.yaml"), SysError);
    EXPECT_EQ(again.pending_edits(), 2u);
  }
}

// A folder larger than readdir's batch (128): every entry once, in order, whether one reply takes
// them all or replies stop early and resume at the offset they gave (as the kernel's do).
TEST(WritableBackend, ReaddirOfALargeFolderInBatchesAndPartialReplies) {
  Fixture f;
  Backend& b = *f.b;
  std::vector<std::string> made;
  for (int i = 0; i < 200; ++i) {
    char name[16];
    std::snprintf(name, sizeof name, "n%03d.txt", i);
    OpenResult o;
    Entry e = b.create(kRootIno, name, 0644, O_WRONLY, o);
    b.release(e.attr.st_ino, 0);
    made.push_back(name);
  }
  std::vector<std::string> all = f.names(kRootIno);
  std::vector<std::string> news(all.begin(), all.end());
  std::erase_if(news, [](const std::string& n) { return n.size() != 8 || n[0] != 'n' || n.find(".txt") != 4; });
  EXPECT_EQ(news, made);  // cookies follow creation order
  std::set<std::string> unique(all.begin(), all.end());
  EXPECT_EQ(unique.size(), all.size());
  // Replies of 7 entries, each resuming where the last stopped.
  std::vector<std::string> paged;
  uint64_t off = 0;
  for (int reply = 0; reply < 1000; ++reply) {
    size_t got = 0;
    uint64_t next_off = off;
    b.readdir(kRootIno, off, [&](const DirEntryOut& e, uint64_t next) {
      if (got == 7) return false;
      ++got;
      paged.push_back(e.name);
      next_off = next;
      return true;
    });
    if (got == 0) break;
    off = next_off;
  }
  EXPECT_EQ(paged, all);
}
