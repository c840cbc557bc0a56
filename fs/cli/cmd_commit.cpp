// `nemofs commit MOUNTPOINT`: commits a writable .nemo mount's edits while it stays mounted.
// The daemon commits synchronously inside setxattr("user.nemofs.commit") on the mount's root and
// writes the one-line outcome to the mount's result file.
#include <sys/xattr.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "fs/cli/cli.h"
#include "fs/cli/progress.h"
#include "fs/cli/state.h"

namespace nemofs {

int cmd_commit(const std::vector<std::string>& args) {
  if (args.size() != 1 || args[0].empty() || args[0][0] == '-') {
    std::fprintf(stderr, "usage: nemofs commit MOUNTPOINT\n");
    return kExitUsage;
  }
  char buf[PATH_MAX];
  std::string mp = ::realpath(args[0].c_str(), buf) ? buf : "";
  if (mp.empty() || !is_nemofs_mount(mp)) {
    std::fprintf(stderr, "nemofs: %s: not a nemofs mount (see 'nemofs status')\n", args[0].c_str());
    return kExitNotMounted;
  }
  auto state = read_state(mp);
  if (state && state->value("mode", std::string()) != "rw") {
    std::fprintf(stderr, "nemofs: %s: mounted read-only: nothing to commit\n", args[0].c_str());
    return kExitNotMounted;
  }
  take_result(mp);  // a stale one must not be mistaken for ours
  int rc, err = 0;
  {
    ProgressWatcher progress(mp);
    rc = ::setxattr(mp.c_str(), "user.nemofs.commit", "1", 1, 0);
    err = errno;
  }
  auto result = take_result(mp);
  if (result) {
    bool ok = result->value("ok", false);
    std::fprintf(ok ? stdout : stderr, "nemofs: %s: %s\n", args[0].c_str(), result->value("message", std::string()).c_str());
    return ok && rc == 0 ? kExitOk : kExitCommitFailed;
  }
  if (rc != 0) {
    std::fprintf(stderr, "nemofs: %s: commit failed: %s\n", args[0].c_str(), std::strerror(err));
    return err == ENOTSUP ? kExitNotMounted : kExitCommitFailed;
  }
  std::printf("nemofs: %s: committed\n", args[0].c_str());
  return kExitOk;
}

}  // namespace nemofs
