// The read-only backend: serves a frozen Tree (any checkpoint format) with long cache timeouts.
//
// Inodes are node ids + 1, so they are dense and stable for the life of the mount; forget is a
// no-op. File reads are answered with file segments whenever the bytes are one span of a real file
// (ByteSource::file_range), so the kernel splices them; computed content is read into memory.
#pragma once

#include <sys/types.h>

#include <vector>

#include "formats/core/tree.h"
#include "fs/backends/backend.h"

namespace nemofs {

class TreeBackend final : public Backend {
 public:
  // `tree` must outlive the backend. `mtime` is used for nodes without one of their own.
  TreeBackend(const Tree& tree, int64_t default_mtime, uid_t uid, gid_t gid);

  Entry lookup(Ino parent, std::string_view name) override;
  Entry getattr(Ino ino) override;
  void readdir(Ino ino, uint64_t offset,
               const std::function<bool(const DirEntryOut&, uint64_t)>& emit) override;
  OpenResult open(Ino ino, int flags) override;
  void read(Ino ino, uint64_t fh, uint64_t off, size_t size, ReadResult& out) override;
  struct statvfs statfs() override;

  // The attributes a node shows (exposed for tests and `inspect`).
  struct stat stat_of(NodeId id) const;

  static constexpr double kTimeout = 86400.0;  // immutable: cache names and attrs for a day

 private:
  NodeId node_of(Ino ino) const;

  const Tree& tree_;
  int64_t default_mtime_;
  uid_t uid_;
  gid_t gid_;
  // Every folder's children in readdir order, back to back: node id's are kids_[first_[id] ..
  // first_[id + 1]). 8 bytes a node, where a vector per node took 28 (issue 19).
  std::vector<uint32_t> first_;
  std::vector<NodeId> kids_;
  std::vector<uint32_t> subdirs_;  // per directory: number of child directories (nlink)
  uint64_t total_bytes_ = 0;
};

// Fills `out` with the bytes of `src` at [off, off + size): one file segment when the span lies in
// one real file, else memory. Shared by every backend.
void read_source(const ByteSource& src, uint64_t off, size_t size, ReadResult& out);

}  // namespace nemofs
