#include "fs/edit/editor.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "formats/core/errors.h"
#include "formats/core/io.h"
#include "fs/edit/commit.h"
#include "fs/edit/plan.h"
#include "fs/edit/yaml_check.h"

namespace nemofs {
namespace {

int64_t now_ns() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}



std::string human(uint64_t bytes) {
  char buf[32];
  if (bytes >= (1ull << 30)) std::snprintf(buf, sizeof buf, "%.2f GB", bytes / 1e9);
  else if (bytes >= (1ull << 20)) std::snprintf(buf, sizeof buf, "%.1f MB", bytes / 1e6);
  else std::snprintf(buf, sizeof buf, "%llu bytes", static_cast<unsigned long long>(bytes));
  return buf;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// The session: the archive, its lock, the namespace, the overlay.

Editor::Editor(Checkpoint&& cp, EditOptions opts) : opts_(std::move(opts)), overlay_(opts_.archive_path) {
  gen_ = Archive::open(std::move(cp), opts_.archive_path);
  lock_ = io::open(opts_.archive_path, O_RDONLY);
  if (::flock(lock_.get(), LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK)
      throw SysError(EBUSY, "already mounted writable by another nemofs mount (unmount it first, or mount with -o ro)");
    throw_sys(errno, "cannot lock the archive");
  }
  if (!archive_identity(lock_.get()).same_archive(gen_->identity))
    throw SysError(EAGAIN, "the archive changed while it was being mounted; try again");
  remove_stale_temporaries(opts_.archive_path);
  if (!opts_.output.empty()) remove_stale_temporaries(opts_.output);
  ns_ = std::make_unique<MemberTree>(gen_);
  if (!overlay_.exists()) return;
  std::optional<Journal> j;
  try {
    j = overlay_.load();
  } catch (const SysError& e) {
    throw SysError(e.err(), std::string("the pending edits cannot be read: ") + e.what() + " (mount with -o ro, or move " +
                                overlay_.dir() + " away)");
  }
  if (!j) {
    overlay_.remove_all();  // a crash before the first journal: nothing was recorded
  } else if (j->committing && j->committing->same_archive(gen_->identity)) {
    overlay_.remove_all();  // a commit renamed its result into place, then was interrupted
  } else if (j->base.same_archive(gen_->identity)) {
    next_data_ = std::max(next_data_, ns_->apply(*j, overlay_));
    last_pending_ = count_pending(ns_->diff(next_data_));
  } else {
    throw SysError(ESTALE, "the archive changed since the pending edits in " + overlay_.dir() +
                               " were made (mount with -o ro to look at it, or move that folder away to drop the edits)");
  }
}

Editor::~Editor() = default;

// ---------------------------------------------------------------------------------------------
// Journal.

size_t Editor::count_pending(const Journal& j) const {
  size_t n = j.deleted.size();
  for (const auto& jn : j.nodes)
    if (opts_.commit_junk || !is_junk_path(jn.path)) ++n;
  return n;
}

void Editor::note_pending(size_t n) {
  if (last_pending_ && *last_pending_ == n) return;
  last_pending_ = n;
  if (opts_.observer) opts_.observer->pending_edits(n);
}

void Editor::save_journal() {
  Journal j = ns_->diff(next_data_);
  overlay_.save(j);
  note_pending(count_pending(j));
}

size_t Editor::pending_edits() { return count_pending(ns_->diff(next_data_)); }

// ---------------------------------------------------------------------------------------------
// File contents.

void Editor::copy_up(MemberNode& n, bool keep_bytes, bool journal) {
  FileBody& f = *n.file();
  int64_t id = next_data_++;
  UniqueFd fd = overlay_.create_data(id);
  uint64_t size = keep_bytes ? f.size : 0;
  try {
    if (size) {
      // File spans by copy_file_range, holes of a sparse member left holes, the rest (a member
      // inside a gzip stream) read and written.
      std::vector<Piece> pieces;
      if (auto fr = f.base->file_range(0, size)) pieces.push_back(Piece{size, false, fr});
      else f.base->pieces(0, size, pieces);
      io::ftruncate(fd.get(), size, "copy-up");
      std::vector<char> buf;
      uint64_t at = 0;
      for (const auto& p : pieces) {
        if (p.file) {
          if (io::copy_range(p.file->fd, p.file->offset, fd.get(), at, p.len, "copy-up") != p.len)
            throw SysError(EIO, "copy-up: member shorter than expected");
        } else if (!p.zero) {
          buf.resize(1 << 20);
          for (uint64_t done = 0; done < p.len;) {
            size_t want = static_cast<size_t>(std::min<uint64_t>(p.len - done, buf.size()));
            if (f.base->read_at(at + done, buf.data(), want) != want) throw SysError(EIO, "copy-up: member shorter than expected");
            io::pwrite_full(fd.get(), buf.data(), want, at + done, "copy-up");
            done += want;
          }
        }
        at += p.len;
      }
    }
    io::fdatasync(fd.get(), "copy-up");
  } catch (...) {
    fd.reset();
    overlay_.remove_data(id);
    throw;
  }
  timespec times[2] = {ns_to_timespec(n.mtime_ns), ns_to_timespec(n.mtime_ns)};
  ::futimens(fd.get(), times);
  f.fd = std::move(fd);
  f.data = id;
  f.base.reset();
  f.size = size;
  if (!n.linked) {
    overlay_.remove_data(id);
    f.data = -1;
  } else if (journal) {
    save_journal();
  }
}

void Editor::truncate(MemberNode& n, uint64_t size) {
  FileBody* f = n.file();
  if (!f) throw SysError(n.is_folder() ? EISDIR : EROFS);
  if (!f->copied_up() && size != f->size) copy_up(n, size != 0);
  if (!f->copied_up()) return;
  io::ftruncate(f->fd.get(), size);
  f->size = size;
  f->dirty = true;
}

void Editor::truncate_on_open(MemberNode& n) {
  if (n.file()->size) truncate(n, 0);
}

void Editor::set_mode(MemberNode& n, mode_t mode) {
  if ((mode & 07777) == n.mode) return;
  n.mode = mode & 07777;
  save_journal();
}

void Editor::set_times(MemberNode& n, const timespec* atime, const timespec* mtime) {
  FileBody* f = n.file();
  if (f && f->copied_up()) {
    timespec times[2] = {atime ? *atime : timespec{0, UTIME_OMIT}, mtime ? *mtime : timespec{0, UTIME_OMIT}};
    if (::futimens(f->fd.get(), times) != 0) throw SysError(errno);
  } else if (mtime && timespec_to_ns(*mtime) != n.mtime_ns) {
    n.mtime_ns = timespec_to_ns(*mtime);
    save_journal();
  }
}

size_t Editor::write(MemberNode& n, uint64_t off, const char* data, size_t size) {
  FileBody* f = n.file();
  if (!f) throw SysError(n.is_folder() ? EISDIR : EROFS);
  if (!f->copied_up()) copy_up(n, true);
  io::pwrite_full(f->fd.get(), data, size, off, "write");
  f->size = std::max<uint64_t>(f->size, off + size);
  f->dirty = true;
  return size;
}

void Editor::flush(MemberNode& n) {
  FileBody* f = n.file();
  if (f && f->dirty && f->copied_up()) {
    io::fdatasync(f->fd.get());
    f->dirty = false;
  }
}

void Editor::fsync(MemberNode& n, bool datasync) {
  FileBody* f = n.file();
  if (f && f->copied_up()) {
    if (datasync) io::fdatasync(f->fd.get());
    else io::fsync(f->fd.get());
    f->dirty = false;
  }
}

// ---------------------------------------------------------------------------------------------
// Namespace edits.

void Editor::check_mutable_dir(MemberNode& dir) {
  if (dir.is_view()) throw SysError(EROFS);
  if (!dir.is_folder()) throw SysError(ENOTDIR);
  if (!dir.linked) throw SysError(ENOENT);
}

void Editor::check_name(std::string_view name) {
  if (name.empty() || name == "." || name == ".." || name.find('/') != std::string_view::npos) throw SysError(EINVAL);
  if (name.size() > 255) throw SysError(ENAMETOOLONG);
}

MemberNode& Editor::dir_for_new_entry(Ino parent, std::string_view name) {
  MemberNode& d = ns_->node(parent);
  check_mutable_dir(d);
  check_name(name);
  if (MemberNode* c = ns_->child(d, name)) {
    if (ns_->visible(*c)) throw SysError(EEXIST);
    ns_->detach(*c);  // a hidden view: the new entry replaces it
    ns_->drop(*c, overlay_);
  }
  return d;
}

MemberNode& Editor::link_new(MemberNode& d, const std::string& name, MemberNode& n, mode_t mode) {
  n.mode = mode & 07777;
  n.mtime_ns = now_ns();
  ns_->attach(d, name, n);
  try {
    save_journal();
  } catch (...) {
    ns_->detach(n);
    ns_->drop(n, overlay_);
    throw;
  }
  return n;
}

MemberNode& Editor::new_file(MemberNode& d, const std::string& name, mode_t mode) {
  int64_t id = next_data_++;
  UniqueFd fd = overlay_.create_data(id);
  MemberNode& n = ns_->create(FileBody{});
  n.file()->fd = std::move(fd);
  n.file()->data = id;
  return link_new(d, name, n, mode);
}

MemberNode& Editor::new_folder(MemberNode& d, const std::string& name, mode_t mode) {
  return link_new(d, name, ns_->create(FolderBody{}), mode);
}

MemberNode& Editor::removable_child(Ino parent, std::string_view name, bool folder) {
  MemberNode& d = ns_->node(parent);
  check_mutable_dir(d);
  MemberNode* c = ns_->child(d, name);
  if (!c || !ns_->visible(*c)) throw SysError(ENOENT);
  if (c->is_view()) throw SysError(EROFS);
  if (c->is_folder() != folder) throw SysError(folder ? ENOTDIR : EISDIR);
  return *c;
}

void Editor::unlink(Ino parent, std::string_view name) {
  MemberNode* c = &removable_child(parent, name, false);
  ns_->detach(*c);
  save_journal();
  ns_->drop(*c, overlay_);
}

void Editor::rmdir(Ino parent, std::string_view name) {
  MemberNode* c = &removable_child(parent, name, true);
  std::vector<Ino> hidden;
  for (const auto& [nm, k] : c->folder()->children) {
    if (ns_->visible(ns_->node(k.ino))) throw SysError(ENOTEMPTY);
    hidden.push_back(k.ino);
  }
  for (Ino h : hidden) {
    ns_->detach(ns_->node(h));
    ns_->drop(ns_->node(h), overlay_);
  }
  ns_->detach(*c);
  save_journal();
  ns_->drop(*c, overlay_);
}

void Editor::rename(Ino parent, std::string_view name, Ino newparent, std::string_view newname, bool noreplace) {
  MemberNode& sd = ns_->node(parent);
  MemberNode& td = ns_->node(newparent);
  check_mutable_dir(sd);
  check_mutable_dir(td);
  check_name(newname);
  MemberNode* s = ns_->child(sd, name);
  if (!s || !ns_->visible(*s)) throw SysError(ENOENT);
  if (s->is_view()) throw SysError(EROFS);
  MemberNode* t = ns_->child(td, newname);
  if (t && !ns_->visible(*t)) {
    ns_->detach(*t);
    ns_->drop(*t, overlay_);
    t = nullptr;
  }
  if (t == s) return;
  if (t) {
    if (noreplace) throw SysError(EEXIST);
    if (t->is_view()) throw SysError(EROFS);
    if (s->is_folder()) {
      if (!t->is_folder()) throw SysError(ENOTDIR);
      for (const auto& [nm, k] : t->folder()->children)
        if (ns_->visible(ns_->node(k.ino))) throw SysError(ENOTEMPTY);
    } else if (t->is_folder()) {
      throw SysError(EISDIR);
    }
  }
  if (s->is_folder()) {
    for (MemberNode* x = &td;; x = &ns_->node(x->parent)) {
      if (x == s) throw SysError(EINVAL);
      if (x->ino == kRootIno) break;
    }
  }
  if (t) ns_->detach(*t);
  ns_->detach(*s);
  ns_->attach(td, std::string(newname), *s);
  save_journal();
  if (t) ns_->drop(*t, overlay_);
}

// ---------------------------------------------------------------------------------------------
// Commits.

void Editor::reap_retired(bool force) {
  if (retired_.empty() && retired_fds_.empty()) return;
  if (!force && std::chrono::steady_clock::now() - retired_at_ < std::chrono::seconds(2)) return;
  retired_.clear();
  retired_fds_.clear();
}

void Editor::report_progress(uint64_t done, uint64_t total) {
  auto now = std::chrono::steady_clock::now();
  if (done != total && now - last_progress_ < std::chrono::milliseconds(100)) return;
  last_progress_ = now;
  if (opts_.observer) opts_.observer->progress(done, total, opts_.output.empty() ? gen_->path : opts_.output);
}

CommitOutcome Editor::commit(bool final) {
  auto t0 = std::chrono::steady_clock::now();
  reap_retired();
  const std::string target = opts_.output.empty() ? gen_->path : opts_.output;
  const std::string kept = "; " + gen_->path + " is unchanged and the edits are kept (" + overlay_.dir() + ")";
  Journal j = ns_->diff(next_data_);
  size_t pending = count_pending(j);
  if (pending == 0) {
    if (committed_output_) return {true, 0, "committed to " + target + "; no changes since"};
    return {true, 0, "no changes to commit; " + gen_->path + " is unchanged"};
  }
  auto refuse = [&](const std::string& why, int err) { return CommitOutcome{false, err ? err : EIO, why + kept}; };
  // The archive must still be the one the edits apply to.
  try {
    UniqueFd fd = io::open(gen_->path, O_RDONLY);
    if (!archive_identity(fd.get()).same_archive(gen_->identity))
      return refuse("commit refused: " + gen_->path + " changed on disk since it was mounted", ESTALE);
  } catch (const SysError& e) {
    return refuse(std::string("commit refused: ") + e.what(), e.err());
  }

  CommitPlan plan;
  try {
    plan = plan_commit(*ns_, opts_.commit_junk);
    if (auto bad = check_plan_yaml(plan)) return refuse("commit refused: " + *bad, EINVAL);
  } catch (const SysError& e) {
    return refuse(std::string("commit failed: ") + e.what(), e.err());
  } catch (const std::exception& e) {
    return refuse(std::string("commit failed: ") + e.what(), EIO);
  }

  CommitRequest req;
  req.archive_fd = gen_->fd;
  req.archive_path = gen_->path;
  req.archive = gen_->stream;
  req.compression = gen_->gzip ? Compression::Gzip : Compression::None;  // gzip in, gzip out
  req.target_path = target;
  req.items = std::move(plan.items);
  req.progress = [this](uint64_t d, uint64_t t) { report_progress(d, t); };
  const bool in_place = opts_.output.empty();
  if (in_place) {
    req.before_rename = [&](const FileIdentity& result) {
      Journal jj = j;
      jj.committing = result;
      overlay_.save(jj);
    };
  }
  CommitResult res;
  try {
    res = write_archive(req);
  } catch (const SysError& e) {
    if (opts_.observer) opts_.observer->progress_done();
    return refuse(std::string("commit failed: ") + e.what(), e.err());
  }
  if (opts_.observer) opts_.observer->progress_done();
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  char tail[128];
  // A plain archive says how much of it shares blocks with the old one (reflink filesystems): the
  // rest was written. gzip output never shares.
  if (gen_->gzip)
    std::snprintf(tail, sizeof tail, " (%s in %.1f s)", human(res.bytes).c_str(), secs);
  else
    std::snprintf(tail, sizeof tail, " (%s, %s shared, in %.1f s)", human(res.bytes).c_str(), human(res.shared).c_str(), secs);
  CommitOutcome out{true, 0,
                    "committed " + std::to_string(pending) + (pending == 1 ? " change" : " changes") + " to " + target + tail};
  if (!in_place) {
    committed_output_ = true;
    return out;
  }
  if (final) {
    // The session is ending: the archive is final; the overlay is obsolete.
    try {
      overlay_.remove_all();
    } catch (const SysError&) {
      // Its journal names the result as `committing`: the next mount removes it.
    }
    return out;
  }
  try {
    rebase(std::move(res.fd), target);
  } catch (const std::exception& e) {
    out.message += "; but the mount could not switch to the new archive (" + std::string(e.what()) + "): remount it";
  }
  return out;
}

void Editor::rebase(UniqueFd result, const std::string& path) {
  ArchivePtr g = Archive::open(open_checkpoint(path), path);
  retired_.push_back(gen_);
  retired_at_ = std::chrono::steady_clock::now();
  gen_ = g;
  lock_ = std::move(result);
  ns_->rebase(g, overlay_, retired_fds_, opts_.commit_junk, [&](MemberNode& n) { copy_up(n, true, false); });
  Journal j = ns_->diff(next_data_);
  if (j.nodes.empty() && j.deleted.empty()) overlay_.remove_all();
  else overlay_.save(j);
  last_pending_.reset();
  note_pending(count_pending(j));
}

CommitOutcome Editor::finish() {
  CommitOutcome out = commit(true);
  // The session is over: a new writable mount may start as soon as the outcome is known.
  lock_.reset();
  if (out.ok) {
    // Left: at most junk, which is not kept past the session.
    try {
      overlay_.remove_all();
    } catch (const SysError&) {
    }
  }
  return out;
}

}  // namespace nemofs
