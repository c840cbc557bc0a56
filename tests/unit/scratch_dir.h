// A fresh temporary folder for a unit test, removed with everything in it when the test ends.
#pragma once

#include <stdlib.h>

#include <cstdio>
#include <filesystem>
#include <stdexcept>
#include <string>

namespace nemofs::testing {

struct ScratchDir {
  std::string path;
  explicit ScratchDir(const std::string& base = std::filesystem::temp_directory_path().string()) {
    std::string t = base + "/nemofs-unit-XXXXXX";
    if (!::mkdtemp(t.data())) throw std::runtime_error("mkdtemp in " + base + " failed");
    path = t;
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  // Writes `bytes` to `name` inside the folder; returns its path.
  std::string write(const std::string& name, const std::string& bytes) const {
    std::string p = path + "/" + name;
    FILE* f = std::fopen(p.c_str(), "wb");
    if (!f) throw std::runtime_error("cannot create " + p);
    const bool ok = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
    if (std::fclose(f) != 0 || !ok) throw std::runtime_error("cannot write " + p);
    return p;
  }
};

}  // namespace nemofs::testing
