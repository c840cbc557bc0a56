#include "fs/edit/archive.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>

#include "formats/core/errors.h"
#include "formats/gzip/gzip_index.h"

namespace nemofs {

int64_t entry_mtime_ns(const TarEntry& e) {
  int64_t ns = e.mtime * 1000000000;
  auto dot = e.mtime_text().find('.');
  if (dot != std::string::npos && e.mtime_text()[0] != '-') {
    std::string frac = e.mtime_text().substr(dot + 1, 9);
    bool digits = !frac.empty() && std::all_of(frac.begin(), frac.end(), [](char c) { return c >= '0' && c <= '9'; });
    if (digits) {
      frac.append(9 - frac.size(), '0');
      ns += std::stoll(frac);
    }
  }
  return ns;
}

timespec ns_to_timespec(int64_t ns) {
  timespec ts{};
  ts.tv_sec = static_cast<time_t>(ns / 1000000000);
  ts.tv_nsec = static_cast<long>(ns % 1000000000);
  if (ts.tv_nsec < 0) {
    ts.tv_nsec += 1000000000;
    ts.tv_sec -= 1;
  }
  return ts;
}

std::shared_ptr<const Archive> Archive::open(Checkpoint&& cp, const std::string& path) {
  auto g = std::make_shared<Archive>();
  g->path = path;
  g->cp = std::move(cp);
  g->nemo = std::static_pointer_cast<NemoArchive>(g->cp.keepalive);
  if (!g->nemo) throw SysError(EINVAL, "internal: the .nemo index is missing");
  // A plain tar is its own stream; a gzip .nemo's members lie in the GzipSource over the file.
  g->stream = g->nemo->archive;
  const ByteSource* file = g->stream.get();
  if (const auto* gz = dynamic_cast<const GzipSource*>(file)) {
    g->gzip = true;
    file = gz->compressed().get();
  }
  auto* fs = dynamic_cast<const FileSource*>(file);
  if (!fs) throw SysError(EINVAL, "internal: the archive is not a plain file");
  g->fd = fs->fd();
  g->identity = FileIdentity::of_fd(g->fd, true);
  g->style = TarStyle::of_archive(*g->nemo->archive, g->nemo->index);
  const int64_t archive_mtime = g->identity.mtime_ns;
  g->mtime_sec = archive_mtime / 1000000000;
  const auto& entries = g->nemo->index.entries;
  g->members[""] = BaseMember{-1, true, 0755, archive_mtime, nullptr};
  for (size_t i = 0; i < entries.size(); ++i) {
    const TarEntry& e = entries[i];
    if (e.type != TarType::Dir) continue;
    std::string p;
    try {
      p = normalize_member_name(e.name, e.header_offset);
    } catch (const FormatError&) {
      continue;
    }
    if (p.empty()) g->members[""] = BaseMember{static_cast<int>(i), true, e.mode & 07777, entry_mtime_ns(e), nullptr};
  }
  g->nemo->for_each_member(g->cp.tree, [&](const std::string& p, size_t i) {
    const TarEntry& e = entries[i];
    BaseMember m{static_cast<int>(i), e.type == TarType::Dir, e.mode & 07777, entry_mtime_ns(e), nullptr};
    if (!m.dir) {
      auto id = g->cp.tree.resolve(p);
      if (id && g->cp.tree.node(*id).type == NodeType::File) m.data = g->cp.tree.node(*id).data;
      else return;
    }
    g->members[p] = m;
    // Folders the archive implies without a header of their own.
    for (auto s = p.rfind('/'); s != std::string::npos; s = p.rfind('/', s - 1)) {
      std::string anc = p.substr(0, s);
      if (!g->members.count(anc)) g->members[anc] = BaseMember{-1, true, 0755, archive_mtime, nullptr};
      if (s == 0) break;
    }
  });
  return g;
}

}  // namespace nemofs
