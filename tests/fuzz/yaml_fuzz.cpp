// Fuzz target: the YAML check a writable .nemo runs on edited *.yaml members before a commit
// (fs/commit.h check_yaml, yaml-cpp LoadAll). Any input must be accepted or refused with one
// "label:line:column: problem" line (no control bytes) whose position lies inside the input; it must never crash,
// hang, recurse without bound, or throw.
#include <cstddef>
#include <cstdint>
#include <string>

#include "fs/edit/yaml_check.h"
#include "tests/fuzz/fuzz_properties.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string bytes(reinterpret_cast<const char*>(data), size);
  auto bad = nemofs::check_yaml("model_config.yaml", bytes);
  if (!bad) return 0;
  const std::string& m = *bad;
  if (m.rfind("model_config.yaml", 0) != 0) nemofs::fuzz::violation("YAML message does not name the file: " + m);
  for (unsigned char c : m)
    if (c < 0x20 || c == 0x7f) nemofs::fuzz::violation("YAML message holds control byte " + std::to_string(c) + ": " + m);
  // "model_config.yaml:LINE:COL: ..." when yaml-cpp gives a position.
  size_t p = 17;
  if (p < m.size() && m[p] == ':' && p + 1 < m.size() && m[p + 1] >= '0' && m[p + 1] <= '9') {
    size_t q;
    unsigned long line = std::stoul(m.substr(p + 1), &q);
    size_t lines = 1;
    for (char c : bytes) lines += c == '\n';
    // yaml-cpp may point one line past a final newline (the end of the input).
    if (line < 1 || line > lines + 1)
      nemofs::fuzz::violation("YAML error line " + std::to_string(line) + " outside an input of " + std::to_string(lines) +
                              " lines: " + m);
  }
  return 0;
}
