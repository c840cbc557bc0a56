#include "formats/core/source_guard.h"

#include <cerrno>

#include "formats/core/errors.h"

namespace nemofs {

namespace {
std::atomic<SourceGuard::Reporter> g_reporter{nullptr};
}  // namespace

SourceGuard::SourceGuard(int fd, const struct stat& st, std::string path)
    : fd_(fd), id_(FileIdentity::of_stat(st)), nlink_(st.st_nlink), path_(std::move(path)) {}

void SourceGuard::set_reporter(Reporter r) { g_reporter.store(r); }

bool SourceGuard::same_content(const FileIdentity& then, nlink_t then_nlink, const struct stat& now) {
  FileIdentity n = FileIdentity::of_stat(now);
  if (n.dev != then.dev || n.ino != then.ino || n.size != then.size || n.mtime_ns != then.mtime_ns) return false;
  return n.ctime_ns == then.ctime_ns || now.st_nlink != then_nlink;
}

std::string SourceGuard::message() const {
  return path_ + " changed since it was mounted; remount to see the new file";
}

void SourceGuard::throw_changed() const { throw SysError(EIO, message()); }

void SourceGuard::mark_changed() const {
  if (changed_.exchange(true)) return;  // somebody reported it already
  if (Reporter r = g_reporter.load()) r(path_, message());
}

void SourceGuard::check() const {
  check_flag();
  struct stat st {};
  if (::fstat(fd_, &st) != 0) throw_sys(errno, path_ + ": fstat");
  if (same_content(id_, nlink_, st)) return;
  mark_changed();
  throw_changed();
}

void SourceGuard::fail_short() const {
  mark_changed();
  throw_changed();
}

}  // namespace nemofs
