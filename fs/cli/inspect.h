// `nemofs inspect`: the tree a mount would show, printed without FUSE. It walks the very Tree that
// open_checkpoint() builds for the mount, so it doubles as the tests' oracle.
//
// --json output is a stable, versioned interface (schema version 1):
//   {"nemofs_inspect": 1, "source": str, "format": str, "warnings": [str],
//    "entries": [{"path": str, "type": "dir"|"file"|"tensor"|"link", "size": int,
//                 "dtype": str, "shape": [int]   (tensors only),
//                 "target": str                  (links only: a folder's symbolic link)}]}
// A "tensor" is a file with a sidecar `<file>.json` naming its dtype/shape/nbytes; the sidecar is
// itself listed as a "file". Paths are relative to the mount root, '/'-separated, dirs included.
#pragma once

#include <ostream>
#include <string>

#include <nlohmann/json.hpp>

#include "formats/detect/checkpoint.h"

namespace nemofs {

nlohmann::json inspect_json(const Checkpoint& cp, const std::string& source);
// The --json text of a document: dump(2), with bytes that are not UTF-8 (tar and folder names
// are bytes) written as U+FFFD rather than refused.
std::string inspect_dump(const nlohmann::json& inspect_document);
// Writes inspect_dump(inspect_json(cp, source)) and a newline, one entry at a time (memory: one entry,
// not the listing).
void inspect_json_write(const Checkpoint& cp, const std::string& source, std::ostream& out);
// A folder of checkpoints (format "folder"): its entries and every view, indexed now; a view that
// cannot be built is left out with a warning, as the mount leaves it out.
nlohmann::json inspect_folder_json(const std::string& folder_realpath, const std::string& source);
void inspect_text(const Checkpoint& cp, std::ostream& out);
void inspect_text(const nlohmann::json& inspect_document, std::ostream& out);

}  // namespace nemofs
