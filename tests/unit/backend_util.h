// Helpers shared by the unit tests that drive a Backend without FUSE.
#pragma once

#include <cstdlib>
#include <string>

#include "formats/core/io.h"
#include "fs/backends/backend.h"

namespace nemofs {

// The whole file `ino` as a reader gets it: memory segments and spliced file segments alike.
// A short file segment, or a source file changed since it was opened, throws (the test fails).
inline std::string read_all(Backend& b, Ino ino) {
  ReadResult r;
  b.read(ino, 0, 0, 1 << 24, r);
  std::string out;
  for (const auto& s : r.segments) {
    if (s.fd < 0) {
      out.append(r.memory.get() + s.mem_off, s.len);
    } else {
      std::string buf(s.len, '\0');
      io::pread_exact(s.fd, buf.data(), s.len, s.pos, "file segment of a read reply");
      out += buf;
    }
  }
  r.verify_guards();  // as the FUSE edge does once the bytes are taken
  return out;
}

// XDG_CACHE_HOME pointed at a folder for the test's life.
struct CacheHome {
  std::string saved;
  bool had;
  explicit CacheHome(const std::string& dir) {
    const char* old = std::getenv("XDG_CACHE_HOME");
    had = old != nullptr;
    if (had) saved = old;
    ::setenv("XDG_CACHE_HOME", dir.c_str(), 1);
  }
  ~CacheHome() {
    if (had) ::setenv("XDG_CACHE_HOME", saved.c_str(), 1);
    else ::unsetenv("XDG_CACHE_HOME");
  }
};

}  // namespace nemofs
