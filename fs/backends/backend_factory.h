// Chooses the backend for a mount: the read-only TreeBackend for every checkpoint, or the writable
// overlay backend for a plain-tar .nemo mounted without -o ro.
#pragma once

#include <map>
#include <memory>
#include <string>

#include "formats/detect/checkpoint.h"
#include "fs/backends/backend.h"
#include "fs/edit/observer.h"

namespace nemofs {

struct MountRequest {
  std::string source;      // real path of SOURCE
  std::string mountpoint;  // real path of MOUNTPOINT
  bool read_only = false;  // -o ro
  std::map<std::string, std::string> nemofs_options;  // e.g. output=PATH
  std::shared_ptr<EditObserver> observer;             // a writable mount's pending edits and commits
};

struct BackendChoice {
  std::unique_ptr<Backend> backend;
  bool read_only = true;
  std::string mode;  // "ro" or "rw", for status
};

// Throws FormatError/SysError with a one-line message when the mount must be
// refused (e.g. a second writable mount of the same archive).
BackendChoice make_backend(Checkpoint& cp, const MountRequest& req);

}  // namespace nemofs
