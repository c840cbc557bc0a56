// The tests' oracle: shared/fixtures/real/manifest.json (copied to tests/data/real), which says what
// a mount of each real fixture must show. The same check runs over an in-memory Tree (unit tier)
// and over a real mounted folder (mount tier).
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "formats/core/tree.h"

namespace nemofs::testing {

// Absolute path of a file under tests/data.
std::string data_path(const std::string& rel);
std::string sha256_hex(const std::string& bytes);
std::string read_whole_file(const std::string& path);  // throws on failure

const nlohmann::json& manifest();
// The manifest entry whose "file" is `file` (e.g. "torch/zoo.pt"); throws if absent.
const nlohmann::json& fixture(const std::string& file);

// Every fixture's "file" in manifest.json, in manifest order (for parameterised tests).
std::vector<std::string> all_fixture_files();
// A gtest parameter name for a fixture path ("torch/zoo.pt" -> "torch_zoo_pt").
std::string fixture_test_name(const std::string& file);

struct View {
  // Bytes of the file at a '/'-separated path relative to the view's root, or nullopt if absent.
  std::function<std::optional<std::string>(const std::string&)> read_file;
};
View tree_view(const Tree& tree);
View dir_view(const std::string& root);

// Every mismatch between the view and the fixture's manifest entry (tensors: bytes, size, sidecar
// dtype/shape/nbytes; values: JSON equality, null = must exist; files: sha256), one line each.
// `prefix` is prepended to every manifest path (for a fixture viewed inside another view).
std::vector<std::string> check_against_manifest(const View& view, const nlohmann::json& fixture,
                                                const std::string& prefix = "");
// Only the "files" part, or only tensors+values (for .nemo members without tensor views yet).
std::vector<std::string> check_files(const View& view, const nlohmann::json& fixture);
std::vector<std::string> check_tensors_and_values(const View& view, const nlohmann::json& fixture,
                                                  const std::string& prefix = "");

}  // namespace nemofs::testing
