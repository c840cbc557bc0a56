// A FileSet held in memory, for tests of folder formats (Hugging Face folders, folders of
// checkpoints) without files on disk.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "formats/core/byte_source.h"
#include "formats/detect/checkpoint.h"

namespace nemofs::testing {

class MemFileSet final : public FileSet {
 public:
  // Bytes by relative path ('/'-separated); each open() gives a fresh MemorySource of them.
  std::map<std::string, std::string> files;
  // Or a source of the test's own (one that counts or fails its reads), given out as it is.
  std::map<std::string, SourcePtr> sources;

  std::vector<std::string> list() const override {
    std::map<std::string, bool> all;
    for (const auto& [k, v] : files) all[k] = true;
    for (const auto& [k, v] : sources) all[k] = true;
    std::vector<std::string> out;
    for (const auto& [k, v] : all) out.push_back(k);
    return out;
  }
  SourcePtr open(const std::string& rel) const override {
    if (auto it = sources.find(rel); it != sources.end()) return it->second;
    auto it = files.find(rel);
    return it == files.end() ? nullptr : std::make_shared<MemorySource>(it->second, rel);
  }
  std::string describe() const override { return "<memory folder>"; }
};

}  // namespace nemofs::testing
