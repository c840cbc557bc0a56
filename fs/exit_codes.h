// Exit codes of the `nemofs` command and of mount.nemofs (documented in docs/man/nemofs.1.md and
// SEMANTICS.md). Shared by every layer of fs/ that ends a process: the FUSE edge's serve() returns
// them, the CLI passes them on.
#pragma once

namespace nemofs {

enum ExitCode : int {
  kExitOk = 0,
  kExitUsage = 1,             // bad arguments or options
  kExitSourceUnreadable = 2,  // the SOURCE could not be read (missing, permission, I/O error)
  kExitSourceInvalid = 3,     // not a checkpoint nemofs knows, or corrupt (file and byte offset named)
  kExitMountFailed = 4,       // mountpoint missing or busy, no /dev/fuse, server died
  kExitCommitFailed = 5,      // the commit failed (the original archive is untouched, edits kept), or
                              // `nemofs export` could not write DEST (DEST is as it was)
  kExitNotMounted = 6,        // not a nemofs mount, or unmounting failed
};

}  // namespace nemofs
