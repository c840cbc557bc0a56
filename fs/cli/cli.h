// The `nemofs` command line. Exit codes (documented in the man page and SEMANTICS.md):
//   0 success
//   1 usage error (bad arguments or options)
//   2 the SOURCE could not be read (missing, permission, I/O error)
//   3 the SOURCE is not a checkpoint nemofs knows, or is corrupt (message names file and byte offset)
//   4 the mount failed (mountpoint missing or busy, no /dev/fuse, server died)
//   5 the commit of a writable .nemo failed (the original archive is untouched, edits kept), or
//     `nemofs export` could not write DEST (no space, I/O error; DEST is as it was)
//   6 not a nemofs mount, or unmounting failed
#pragma once

#include <string>
#include <vector>

#include "fs/exit_codes.h"

namespace nemofs {


int cmd_mount(const std::vector<std::string>& args);
int cmd_umount(const std::vector<std::string>& args);
int cmd_inspect(const std::vector<std::string>& args);
int cmd_status(const std::vector<std::string>& args);
int cmd_commit(const std::vector<std::string>& args);
int cmd_export(const std::vector<std::string>& args);

// Splits "a,b=c,d" honouring backslash-escaped commas.
std::vector<std::string> split_options(const std::string& s);

}  // namespace nemofs
