#include "fs/edit/plan.h"

#include <cerrno>
#include <functional>
#include <unordered_set>

#include "formats/core/errors.h"
#include "formats/core/io.h"
#include "fs/edit/yaml_check.h"

namespace nemofs {

CommitPlan plan_commit(MemberTree& ns, bool commit_junk) {
  const Archive& base = *ns.archive();
  CommitPlan plan;
  auto& items = plan.items;
  std::unordered_set<Ino> emitted;
  auto verbatim = [&](const TarEntry& e, const std::string& label) {
    CommitItem it;
    it.kind = CommitItem::Kind::Verbatim;
    it.label = label;
    it.from = e.header_offset;
    it.to = e.end_offset;
    it.entry = e;
    items.push_back(std::move(it));
  };
  auto member = [&](MemberNode& n, const std::string& p) {
    CommitItem it;
    it.kind = CommitItem::Kind::Member;
    it.label = p.empty() ? "." : p;
    timespec mt = ns_to_timespec(ns.mtime_of(n));
    const FileBody* f = n.file();
    it.member = TarMember{p, n.is_folder(), n.mode, static_cast<int64_t>(mt.tv_sec), static_cast<uint32_t>(mt.tv_nsec),
                          f ? f->size : 0};
    if (f && f->size) {
      if (f->copied_up()) {
        it.data_fd = f->fd.get();
        it.data_off = 0;
      } else if (auto fr = f->base->file_range(0, f->size)) {
        it.data_fd = fr->fd;
        it.data_off = fr->offset;
      } else {
        it.data_src = f->base;  // inside a gzip stream
      }
    }
    it.header = tar_header(it.member, base.style);
    items.push_back(std::move(it));
    emitted.insert(n.ino);
  };
  const auto& entries = base.nemo->index.entries;
  for (size_t i = 0; i < entries.size(); ++i) {
    const TarEntry& e = entries[i];
    if (e.type == TarType::Symlink || e.type == TarType::Hardlink || e.type == TarType::Other) {
      verbatim(e, e.name);  // not shown, so never edited: kept as they were
      continue;
    }
    std::string p = normalize_member_name(e.name, e.header_offset);
    MemberNode* n = ns.resolve(p);
    auto mit = base.members.find(p);
    bool winner = mit != base.members.end() && mit->second.entry == static_cast<int>(i);
    if (!winner) {  // an earlier duplicate (tar "last wins"): kept while its path is untouched
      if (n && ns.identical(*n)) verbatim(e, p);
      continue;
    }
    if (!n || emitted.count(n->ino)) continue;
    if (n->is_folder() != (e.type == TarType::Dir)) continue;
    if (ns.identical(*n)) {
      verbatim(e, p);
      emitted.insert(n->ino);
    } else if (!ns.junk(*n, commit_junk)) {
      member(*n, p);
    }
  }
  std::function<void(MemberNode&, const std::string&)> walk = [&](MemberNode& d, const std::string& dp) {
    for (auto& [name, c] : d.folder()->children) {
      MemberNode& k = ns.node(c.ino);
      if (k.is_view() || ns.junk(k, commit_junk)) continue;
      std::string p = join_path(dp, name);
      if (!emitted.count(k.ino)) {
        // A folder the archive only implies (no header of its own), unchanged and not empty, stays
        // implied.
        bool implicit_unchanged = false;
        if (k.is_folder() && k.origin) {
          auto it = base.members.find(*k.origin);
          implicit_unchanged = it != base.members.end() && it->second.entry < 0 && it->second.dir &&
                               k.mode == it->second.mode && k.mtime_ns == it->second.mtime_ns &&
                               !k.folder()->children.empty();
        }
        if (!implicit_unchanged) member(k, p);
      }
      if (k.is_folder()) walk(k, p);
    }
  };
  MemberNode& root = ns.node(kRootIno);
  if (!emitted.count(kRootIno) && !ns.identical(root)) member(root, "");
  walk(root, "");
  return plan;
}

std::optional<std::string> check_plan_yaml(const CommitPlan& plan) {
  for (const auto& it : plan.items) {
    if (it.kind != CommitItem::Kind::Member || it.member.dir) continue;
    const std::string& p = it.member.path;
    if (!is_yaml_path(p)) continue;
    if (it.member.size > (256u << 20)) continue;  // not a config file
    std::string bytes(it.member.size, '\0');
    if (!bytes.empty()) {
      size_t got = 0;
      try {
        got = it.data_fd >= 0 ? io::pread_full(it.data_fd, bytes.data(), bytes.size(), it.data_off)
                              : it.data_src->read_at(0, bytes.data(), bytes.size());
      } catch (const std::exception& e) {
        throw SysError(EIO, "cannot read " + p + ": " + e.what());
      }
      if (got != bytes.size()) throw SysError(EIO, "cannot read " + p);
    }
    if (auto bad = check_yaml(p, bytes)) return "invalid YAML: " + *bad;
  }
  return std::nullopt;
}

}  // namespace nemofs
