// What a commit checks and filters in edited members: YAML configs must parse, and editor/OS junk
// is left out unless asked for.
#pragma once

#include <optional>
#include <string>

namespace nemofs {

// The YAML check: nullopt when `bytes` parse, else "label:line:column: problem" (1-based).
std::optional<std::string> check_yaml(const std::string& label, const std::string& bytes);

// Whether a member path names a YAML file (.yaml, .yml).
bool is_yaml_path(const std::string& path);

// Editor and OS junk that is not committed unless asked: vim swap files (.*.sw?), vim's write
// probe 4913, backup files (*~), .DS_Store, AppleDouble files (._*). `name` is a base name.
bool is_junk_name(const std::string& name);
// Whether any component of a '/'-separated path is junk.
bool is_junk_path(const std::string& path);

}  // namespace nemofs
