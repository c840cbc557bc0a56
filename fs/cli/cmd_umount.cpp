// `nemofs umount` and `nemofs status`.
#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <thread>

#include "formats/core/io.h"
#include "fs/cli/cli.h"
#include "fs/cli/progress.h"
#include "fs/cli/state.h"

namespace nemofs {
namespace {

std::string real_path(const std::string& p) {
  char buf[PATH_MAX];
  if (!::realpath(p.c_str(), buf)) return {};
  return buf;
}

// Runs fusermount3 -u (works for root and for the user who mounted). Returns its exit status.
int run_fusermount(const std::string& mp) {
  pid_t pid = ::fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    ::execlp("fusermount3", "fusermount3", "-u", "--", mp.c_str(), (char*)nullptr);
    std::_Exit(127);
  }
  return io::wait_child(pid);
}

// Waits until the daemon has written its result (the archive on disk is then final) or has
// exited. Not waiting for the exit itself matters after a commit: the daemon's last close frees
// the replaced archive (seconds for many GiB), which is none of the caller's business.
// The result is looked for every 2 ms: a longer interval adds half of itself to every commit on
// average. (inotify would wake at once, but closing an inotify descriptor waits for an SRCU grace
// period, ~13 ms here: more than it saves.)
void wait_for_result_or_exit(pid_t pid, const std::string& result_file) {
  constexpr int kIntervalMs = 2;
  UniqueFd pfd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
  while (true) {
    if (::access(result_file.c_str(), F_OK) == 0) break;
    if (pfd) {
      pollfd p{pfd.get(), POLLIN, 0};
      int rc = ::poll(&p, 1, kIntervalMs);
      if (rc > 0) break;
    } else {
      if (::kill(pid, 0) != 0 && errno != EPERM) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(kIntervalMs));
    }
  }
}

}  // namespace

int cmd_umount(const std::vector<std::string>& args) {
  if (args.size() != 1 || args[0].empty() || args[0][0] == '-') {
    std::fprintf(stderr, "usage: nemofs umount MOUNTPOINT\n");
    return kExitUsage;
  }
  std::string mp = real_path(args[0]);
  if (mp.empty() || !is_nemofs_mount(mp)) {
    std::fprintf(stderr, "nemofs: %s: not a nemofs mount (see 'nemofs status')\n", args[0].c_str());
    return kExitNotMounted;
  }
  auto state = read_state(mp);
  pid_t pid = 0;
  if (state && state->contains("pid") && (*state)["pid"].is_number_integer()) pid = (*state)["pid"].get<pid_t>();
  int rc = run_fusermount(mp);
  if (rc != 0) {
    std::fprintf(stderr, "nemofs: %s: cannot unmount (busy? close files and leave the folder, then retry)\n",
                 args[0].c_str());
    return kExitNotMounted;
  }
  if (pid > 0) {
    ProgressWatcher progress(mp);  // a writable .nemo commits now
    wait_for_result_or_exit(pid, result_file_for(mp));
  }
  auto result = take_result(mp);
  if (!result) {
    std::printf("nemofs: %s: unmounted\n", args[0].c_str());
    return kExitOk;
  }
  bool ok = result->value("ok", false);
  std::string msg = result->value("message", std::string());
  std::fprintf(ok ? stdout : stderr, "nemofs: %s: %s\n", args[0].c_str(), msg.c_str());
  return ok ? kExitOk : kExitCommitFailed;
}

int cmd_status(const std::vector<std::string>& args) {
  bool json = !args.empty() && args[0] == "--json";
  nlohmann::json list = nlohmann::json::array();
  for (const auto& m : nemofs_mounts()) {
    nlohmann::json e{{"source", m.source}, {"mountpoint", m.mountpoint}};
    if (auto st = read_state(m.mountpoint)) {
      for (const char* k : {"pid", "format", "mode", "pending_edits", "warnings", "source_changed", "remote"})
        if (st->contains(k)) e[k] = (*st)[k];
    }
    list.push_back(std::move(e));
  }
  if (json) {
    std::cout << list.dump(2) << "\n";
    return kExitOk;
  }
  if (list.empty()) {
    std::cout << "no nemofs mounts\n";
    return kExitOk;
  }
  for (const auto& e : list) {
    std::cout << e["mountpoint"].get<std::string>() << "  " << e.value("mode", std::string("?")) << "  "
              << e.value("format", std::string("?")) << "  " << e["source"].get<std::string>();
    if (e.contains("pending_edits")) std::cout << "  pending edits: " << e["pending_edits"].dump();
    std::cout << "\n";
    // A folder mount's warnings arrive while it serves (a view that could not be built).
    if (e.contains("warnings"))
      for (const auto& w : e["warnings"]) std::cout << "  warning: " << w.get<std::string>() << "\n";
    if (e.contains("remote") && e["remote"].is_object()) {
      const auto& r = e["remote"];
      std::cout << "  remote: " << r.value("requests", uint64_t{0}) << " requests, " << r.value("bytes_fetched", uint64_t{0})
                << " bytes fetched, " << r.value("cache_hits", uint64_t{0}) << " cache hits, "
                << r.value("cache_misses", uint64_t{0}) << " blocks fetched, " << r.value("errors", uint64_t{0}) << " errors";
      if (r.contains("last_error")) std::cout << " (last: " << r["last_error"].get<std::string>() << ")";
      std::cout << "\n";
    }
    if (e.contains("source_changed") && e["source_changed"].is_array())
      for (const auto& p : e["source_changed"])
        if (p.is_string())
          std::cout << "  source changed: " << p.get<std::string>()
                    << " changed since it was mounted; reads of it fail (EIO): remount to see the new file\n";
  }
  return kExitOk;
}

}  // namespace nemofs
