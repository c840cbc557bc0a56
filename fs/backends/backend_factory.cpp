#include "fs/backends/backend_factory.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include "formats/core/errors.h"
#include "formats/core/io.h"
#include "fs/backends/tree_backend.h"
#include "fs/backends/writable_backend.h"

namespace nemofs {

BackendChoice make_backend(Checkpoint& cp, const MountRequest& req) {
  struct stat st {};
  int64_t mtime = ::stat(req.source.c_str(), &st) == 0 ? st.st_mtim.tv_sec : 0;
  BackendChoice c;
  if (cp.writable_candidate && !req.read_only) {
    std::string dir = io::dir_of(req.source);
    if (::access(dir.c_str(), W_OK) != 0 || ::access(req.source.c_str(), R_OK) != 0) {
      // The overlay and the commit need the archive's folder; without it the mount is read-only.
      std::fprintf(stderr, "nemofs: %s: warning: folder %s is not writable: mounting read-only\n", req.source.c_str(),
                   dir.c_str());
    } else {
      WritableOptions o;
      o.archive_path = req.source;
      o.observer = req.observer;
      o.uid = getuid();
      o.gid = getgid();
      o.commit_junk = req.nemofs_options.count("commit_junk") > 0;
      if (auto it = req.nemofs_options.find("output"); it != req.nemofs_options.end()) {
        const std::string& out = it->second;
        char buf[PATH_MAX];
        if (out.empty() || out.back() == '/' || !::realpath(io::dir_of(out).c_str(), buf))
          throw SysError(ENOENT, "output=" + out + ": its folder does not exist");
        o.output = std::string(buf) + "/" + io::base_of(out);
        if (o.output == req.source) o.output.clear();
      }
      c.backend = std::make_unique<WritableBackend>(std::move(cp), std::move(o));
      c.read_only = false;
      c.mode = "rw";
      return c;
    }
  }
  c.backend = std::make_unique<TreeBackend>(cp.tree, mtime, getuid(), getgid());
  c.read_only = true;
  c.mode = "ro";
  return c;
}

}  // namespace nemofs
