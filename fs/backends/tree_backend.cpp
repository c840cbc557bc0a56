#include "fs/backends/tree_backend.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fcntl.h>

namespace nemofs {

TreeBackend::TreeBackend(const Tree& tree, int64_t default_mtime, uid_t uid, gid_t gid)
    : tree_(tree), default_mtime_(default_mtime), uid_(uid), gid_(gid) {
  // Every node but the root is one folder's child: tree.size() - 1 entries in all.
  first_.reserve(tree.size() + 1);
  kids_.reserve(tree.size() ? tree.size() - 1 : 0);
  subdirs_.assign(tree.size(), 0);
  for (NodeId id = 0; id < tree.size(); ++id) {
    const Node& n = tree.node(id);
    first_.push_back(static_cast<uint32_t>(kids_.size()));
    if (n.type == NodeType::Dir) {
      for (const auto& [name, child] : n.children) {
        kids_.push_back(child);
        if (tree.node(child).type == NodeType::Dir) ++subdirs_[id];
      }
    } else {
      total_bytes_ += n.data->size();
    }
  }
  first_.push_back(static_cast<uint32_t>(kids_.size()));
}

NodeId TreeBackend::node_of(Ino ino) const {
  if (ino < 1 || ino > tree_.size()) throw SysError(ESTALE);
  return static_cast<NodeId>(ino - 1);
}

struct stat TreeBackend::stat_of(NodeId id) const {
  const Node& n = tree_.node(id);
  struct stat st {};
  st.st_ino = id + 1;
  st.st_uid = uid_;
  st.st_gid = gid_;
  int64_t mt = n.mtime ? n.mtime : default_mtime_;
  st.st_mtim.tv_sec = mt;
  st.st_atim.tv_sec = mt;
  st.st_ctim.tv_sec = mt;
  st.st_blksize = 4096;
  if (n.type == NodeType::Dir) {
    mode_t perm = n.mode ? (n.mode & 07777 & ~0222) | 0500 : 0555;
    st.st_mode = S_IFDIR | perm;
    st.st_nlink = 2 + subdirs_[id];
    st.st_size = 4096;
    st.st_blocks = 8;
  } else {
    mode_t perm = n.mode ? (n.mode & 0777 & ~0222) | 0400 : 0444;
    st.st_mode = S_IFREG | perm;
    st.st_nlink = 1;
    st.st_size = static_cast<off_t>(n.data->size());
    st.st_blocks = static_cast<blkcnt_t>((n.data->size() + 511) / 512);
  }
  return st;
}

Entry TreeBackend::lookup(Ino parent, std::string_view name) {
  NodeId p = node_of(parent);
  if (tree_.node(p).type != NodeType::Dir) throw SysError(ENOTDIR);
  auto id = tree_.lookup(p, name);
  if (!id) throw SysError(ENOENT);
  return Entry{stat_of(*id), kTimeout, kTimeout};
}

Entry TreeBackend::getattr(Ino ino) { return Entry{stat_of(node_of(ino)), kTimeout, kTimeout}; }

void TreeBackend::readdir(Ino ino, uint64_t offset, const std::function<bool(const DirEntryOut&, uint64_t)>& emit) {
  NodeId id = node_of(ino);
  if (tree_.node(id).type != NodeType::Dir) throw SysError(ENOTDIR);
  const NodeId* kids = kids_.data() + first_[id];
  const uint64_t count = first_[id + 1] - first_[id];
  // Offsets: 0 -> ".", 1 -> "..", 2 + i -> child i. next_offset is the offset after the entry.
  for (uint64_t off = offset; off < count + 2; ++off) {
    DirEntryOut e;
    if (off == 0) {
      e.name = ".";
      e.attr = stat_of(id);
    } else if (off == 1) {
      e.name = "..";
      e.attr = stat_of(tree_.node(id).parent);
    } else {
      NodeId c = kids[off - 2];
      e.name = tree_.node(c).name;
      e.attr = stat_of(c);
    }
    if (!emit(e, off + 1)) return;
  }
}

OpenResult TreeBackend::open(Ino ino, int flags) {
  NodeId id = node_of(ino);
  if (tree_.node(id).type == NodeType::Dir) throw SysError(EISDIR);
  if ((flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC)) throw SysError(EROFS);
  OpenResult r;
  r.keep_cache = true;
  return r;
}

void read_source(const ByteSource& src, uint64_t off, size_t size, ReadResult& out) {
  uint64_t total = src.size();
  if (off >= total || size == 0) return;
  size_t n = static_cast<size_t>(std::min<uint64_t>(size, total - off));
  if (auto fr = src.file_range(off, n)) {
    out.segments.push_back(ReadSegment{fr->fd, fr->offset, n, 0, fr->guard, fr->hold});
    return;
  }
  // Pieces: file spans are spliced; holes (a sparse member) are zeros without any I/O; the rest
  // is read.
  std::vector<Piece> pieces;
  src.pieces(off, n, pieces);
  size_t mem = 0;
  for (const auto& p : pieces)
    if (!p.file && !p.data) mem += p.len;
  if (mem) out.memory.reset(new char[mem]);
  size_t mem_off = 0, pos = 0;
  for (const auto& p : pieces) {
    size_t len = static_cast<size_t>(p.len);
    if (p.file) {
      out.segments.push_back(ReadSegment{p.file->fd, p.file->offset, len, 0, p.file->guard, p.file->hold});
    } else if (p.data) {
      out.segments.push_back(ReadSegment{-1, 0, len, 0, nullptr, p.hold, p.data});
    } else {
      char* dst = out.memory.get() + mem_off;
      if (p.zero) {
        std::memset(dst, 0, len);
      } else {
        // Inside size(): fewer bytes mean the source lost some, and a short reply would tell the
        // reader (and the kernel, which then shrinks the file) that the file ends here.
        size_t got = src.read_at(off + pos, dst, len);
        if (got != len)
          throw SysError(EIO, src.describe() + ": " + std::to_string(got) + " of " + std::to_string(len) +
                                  " bytes at " + std::to_string(off + pos) + " could be read");
      }
      if (!out.segments.empty() && out.segments.back().fd < 0 && !out.segments.back().data &&
          out.segments.back().mem_off + out.segments.back().len == mem_off)
        out.segments.back().len += len;
      else
        out.segments.push_back(ReadSegment{-1, 0, len, mem_off, nullptr});
      mem_off += len;
    }
    pos += len;
  }
}

void TreeBackend::read(Ino ino, uint64_t fh, uint64_t off, size_t size, ReadResult& out) {
  NodeId id = node_of(ino);
  const Node& n = tree_.node(id);
  if (n.type == NodeType::Dir) throw SysError(EISDIR);
  read_source(*n.data, off, size, out);
}

struct statvfs TreeBackend::statfs() {
  struct statvfs s {};
  s.f_bsize = 4096;
  s.f_frsize = 4096;
  s.f_blocks = (total_bytes_ + 4095) / 4096;
  s.f_files = tree_.size();
  s.f_namemax = 255;
  s.f_flag = ST_RDONLY;
  return s;
}

}  // namespace nemofs
