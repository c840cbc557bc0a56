// Commit planning: the new archive as a list of items (fs/edit/commit.h), from the namespace as it
// is and the archive it was made from. FUSE-free and I/O-free apart from reading edited YAML files,
// so every rule is unit-testable: original members keep their order, an unchanged member is copied
// verbatim (its original header blocks, data and padding), a changed one gets a new header in the
// archive's own style, new entries follow in namespace order, junk is left out unless asked for,
// links and earlier duplicates of a path are kept as they were while their path is untouched.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "fs/edit/commit.h"
#include "fs/edit/namespace.h"

namespace nemofs {

struct CommitPlan {
  std::vector<CommitItem> items;
};

// Throws SysError (e.g. a member name the archive cannot hold).
CommitPlan plan_commit(MemberTree& ns, bool commit_junk);

// Edited YAML members must parse: nullopt, or the refusal ("invalid YAML: file:line:col: ...").
// Throws SysError when an edited file cannot be read.
std::optional<std::string> check_plan_yaml(const CommitPlan& plan);

}  // namespace nemofs
