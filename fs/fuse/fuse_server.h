// The FUSE edge: runs a Backend behind a libfuse3 low-level session.
//
// Every request is answered exactly once: each op computes its answer inside one exception
// wrapper (SysError -> its errno; bad_alloc -> ENOMEM; anything else, FormatError included -> EIO)
// and replies as its last statement. The loop is multi-threaded; reads of file-backed extents are
// answered with fd buffers so the kernel splices them.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "fs/backends/backend.h"
#include "fs/exit_codes.h"

namespace nemofs {

struct ServerOptions {
  std::string mountpoint;
  std::string fsname;                  // shown by mount(8) / df: the source path
  bool foreground = false;
  bool debug = false;
  bool read_only = true;
  std::vector<std::string> fuse_options;  // passed through as -o (allow_other, ...)
  unsigned max_threads = 8;
  // Called in the serving process once the session is mounted and about to serve (after the fork
  // when daemonised), e.g. to record its pid.
  std::function<void()> on_serving;
  // Called in the parent (daemon mode) or before serving (foreground) once the mount answers.
  std::function<void(pid_t server_pid)> on_ready;
  // Called in the serving process after the session ended and the backend's destroy() ran.
  std::function<void()> on_finished;
};

// Mounts and serves until unmounted. In daemon mode the calling process returns as soon as the
// mount answers (return 0) or the server failed to start (non-zero, message on stderr); the
// forked server process never returns (it exits when unmounted); in daemon mode a successful
// parent exits with status 0 from inside serve(). In foreground mode it returns
// when unmounted. Returns the exit status for the command (an ExitCode).
int serve(Backend& backend, const ServerOptions& opts);

}  // namespace nemofs
