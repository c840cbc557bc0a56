#include "fs/backend_factory.h"

#include <sys/stat.h>
#include <unistd.h>

#include "fs/tree_backend.h"

namespace nemofs {

BackendChoice make_backend(Checkpoint& cp, const MountRequest& req) {
  struct stat st {};
  int64_t mtime = ::stat(req.source.c_str(), &st) == 0 ? st.st_mtim.tv_sec : 0;
  BackendChoice c;
  c.backend = std::make_unique<TreeBackend>(cp.tree, mtime, getuid(), getgid());
  c.read_only = true;
  c.mode = "ro";
  return c;
}

}  // namespace nemofs
