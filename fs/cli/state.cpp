#include "fs/cli/state.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <sstream>
#include <stdexcept>

#include "formats/core/errors.h"
#include "formats/core/hash.h"
#include "formats/core/io.h"

namespace nemofs {

std::string state_dir() {
  std::string dir;
  if (geteuid() == 0) {
    dir = "/run/nemofs";
  } else if (const char* x = std::getenv("XDG_RUNTIME_DIR"); x && *x) {
    dir = std::string(x) + "/nemofs";
  } else {
    dir = "/tmp/nemofs-" + std::to_string(geteuid());
  }
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST)
    throw_sys(errno, dir + ": cannot create state folder");
  return dir;
}

namespace {
std::string hash_name(const std::string& s) {
  uint64_t h = fnv1a(kFnvOffset, s.data(), s.size());
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

}  // namespace

// Serialises the read-modify-write updates of one daemon's state file (pending edits come from the
// edit session, changed sources from whichever FUSE worker saw them).
std::mutex g_state_mu;

std::string state_file_for(const std::string& mp) { return state_dir() + "/" + hash_name(mp) + ".json"; }
std::string result_file_for(const std::string& mp) { return state_dir() + "/" + hash_name(mp) + ".result"; }
std::string progress_file_for(const std::string& mp) { return state_dir() + "/" + hash_name(mp) + ".progress"; }

void write_state(const std::string& mp, const nlohmann::json& state) { io::replace_file(state_file_for(mp), state.dump(2) + "\n", 0600, false); }

std::optional<nlohmann::json> read_state(const std::string& mp) {
  auto s = io::read_file(state_file_for(mp));
  if (!s) return std::nullopt;
  auto j = nlohmann::json::parse(*s, nullptr, false);
  if (j.is_discarded()) return std::nullopt;
  return j;
}

void remove_state(const std::string& mp) { io::unlink(state_file_for(mp)); }

void write_result(const std::string& mp, bool ok, const std::string& message) {
  nlohmann::json j{{"ok", ok}, {"message", message}};
  io::replace_file(result_file_for(mp), j.dump() + "\n", 0600, false);
}

std::optional<nlohmann::json> take_result(const std::string& mp) {
  std::string path = result_file_for(mp);
  auto s = io::read_file(path);
  if (!s) return std::nullopt;
  io::unlink(path);
  auto j = nlohmann::json::parse(*s, nullptr, false);
  if (j.is_discarded()) return std::nullopt;
  return j;
}

std::vector<MountInfo> nemofs_mounts() {
  std::vector<MountInfo> out;
  for (auto& m : io::mounts())
    if (m.fstype == "fuse.nemofs") out.push_back(MountInfo{std::move(m.source), std::move(m.mountpoint), m.fstype});
  return out;
}

bool is_nemofs_mount(const std::string& mp) {
  for (const auto& m : nemofs_mounts())
    if (m.mountpoint == mp) return true;
  return false;
}

void note_source_changed(const std::string& mp, const std::string& path) {
  std::lock_guard lk(g_state_mu);
  try {
    if (auto st = read_state(mp)) {
      auto& list = (*st)["source_changed"];
      if (!list.is_array()) list = nlohmann::json::array();
      for (const auto& p : list)
        if (p == path) return;
      list.push_back(path);
      write_state(mp, *st);
    }
  } catch (const std::exception&) {
    // The reads answer EIO all the same; only `nemofs status` misses the reason.
  }
}

void update_state(const std::string& mp, const std::function<void(nlohmann::json&)>& fn) {
  std::lock_guard lk(g_state_mu);
  try {
    if (auto st = read_state(mp)) {
      fn(*st);
      write_state(mp, *st);
    }
  } catch (const std::exception&) {
  }
}

void StateObserver::pending_edits(size_t n) {
  std::lock_guard lk(g_state_mu);
  try {
    if (auto st = read_state(mp_)) {
      (*st)["pending_edits"] = n;
      write_state(mp_, *st);
    }
  } catch (const std::exception&) {
    // `nemofs status` shows an older count; the edit itself is safe in the journal.
  }
}

void StateObserver::progress(uint64_t done, uint64_t total, const std::string& target) {
  try {
    nlohmann::json j{{"done", done}, {"total", total}, {"target", target}};
    io::replace_file(progress_file_for(mp_), j.dump() + "\n", 0600, false);
  } catch (const std::exception&) {
    // Progress is a courtesy: the commit goes on without it.
  }
}

void StateObserver::progress_done() { io::unlink(progress_file_for(mp_)); }

void StateObserver::commit_outcome(bool ok, const std::string& message) {
  try {
    write_result(mp_, ok, message);
  } catch (const std::exception&) {
    // `nemofs commit` then reports the errno of its setxattr call instead of the message.
  }
}

}  // namespace nemofs
