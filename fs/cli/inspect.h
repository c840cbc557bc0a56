// `nemofs inspect`: the tree a mount would show, printed without FUSE. It walks the very Tree that
// open_checkpoint() builds for the mount, so it doubles as the tests' oracle.
//
// --json output is a stable, versioned interface (schema version 1):
//   {"nemofs_inspect": 1, "source": str, "format": str, "warnings": [str],
//    "entries": [{"path": str, "type": "dir"|"file"|"tensor", "size": int,
//                 "dtype": str, "shape": [int]   (tensors only)}]}
// A "tensor" is a file with a sidecar `<file>.json` naming its dtype/shape/nbytes; the sidecar is
// itself listed as a "file". Paths are relative to the mount root, '/'-separated, dirs included.
#pragma once

#include <ostream>
#include <string>

#include <nlohmann/json.hpp>

#include "formats/detect/checkpoint.h"

namespace nemofs {

nlohmann::json inspect_json(const Checkpoint& cp, const std::string& source);
void inspect_text(const Checkpoint& cp, std::ostream& out);

}  // namespace nemofs
