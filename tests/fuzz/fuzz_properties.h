// Properties every tree built from fuzz input must have, not only survival (hardening issue):
//   - every file the tree lists can be read in full: read_at(0, size) delivers exactly size bytes
//     and nothing past it (`inspect` never lists what a read cannot deliver);
//   - a tensor file's size is product(shape) x dtype bits / 8, and its sidecar's nbytes says so;
//   - every zero-copy extent (file_range) lies inside the real file it names, and holds the bytes a
//     read delivers.
// The input is handed to parsers as a real file (a memfd), so the extent checks see real fds.
// A violation prints what broke and abort()s, so libFuzzer (or the replay test) reports it.
#pragma once

#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "formats/core/byte_source.h"
#include "formats/core/errors.h"
#include "formats/core/tensor.h"
#include "formats/core/tree.h"

namespace nemofs::fuzz {

[[noreturn]] inline void violation(const std::string& what) {
  std::fprintf(stderr, "PROPERTY VIOLATION: %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}

// The input as a FileSource over an anonymous in-memory file.
inline SourcePtr file_source(const uint8_t* data, size_t size) {
  int fd = ::memfd_create("fuzz-input", MFD_CLOEXEC);
  if (fd < 0) violation("memfd_create failed");
  for (size_t done = 0; done < size;) {
    ssize_t n = ::write(fd, data + done, size - done);
    if (n <= 0) violation("write to memfd failed");
    done += static_cast<size_t>(n);
  }
  auto src = std::make_shared<FileSource>("/proc/self/fd/" + std::to_string(fd));
  ::close(fd);  // FileSource holds its own descriptor
  return src;
}

struct CheckOptions {
  // Files larger than this are read at their head and tail only (an expanded tensor can be huge).
  uint64_t full_read_limit = 8u << 20;
  // A lazily decoded file (deflate entry, DCP chunk) may fail its first read with SysError; a read
  // that returns must still deliver every byte.
  bool allow_io_error = false;
  // Whether `<path>.json` beside a file at `path` is a tensor sidecar (false: e.g. raw .nemo members).
  std::function<bool(const std::string& path)> may_be_tensor;
};

namespace detail {

// Reads [off, off + len) and checks the count; returns false on an allowed SysError.
inline bool read_range(const ByteSource& s, uint64_t off, uint64_t len, std::string& out, const std::string& path,
                       const CheckOptions& o) {
  out.assign(static_cast<size_t>(len), '\0');
  size_t got;
  try {
    got = s.read_at(off, out.data(), out.size());
  } catch (const SysError& e) {
    if (o.allow_io_error) return false;
    violation(path + ": read of a listed file failed: " + e.what());
  }
  if (got != len)
    violation(path + ": read_at(" + std::to_string(off) + ", " + std::to_string(len) + ") delivered " + std::to_string(got) +
              " bytes of a " + std::to_string(s.size()) + "-byte file");
  return true;
}

inline void check_extent(const ByteSource& s, uint64_t off, uint64_t len, const std::string* bytes, const std::string& path) {
  if (len == 0) return;
  auto fr = s.file_range(off, len);
  if (!fr) return;
  struct stat st {};
  if (::fstat(fr->fd, &st) != 0) violation(path + ": file_range names a closed descriptor");
  if (fr->offset > static_cast<uint64_t>(st.st_size) || len > static_cast<uint64_t>(st.st_size) - fr->offset)
    violation(path + ": extent [" + std::to_string(fr->offset) + ", +" + std::to_string(len) + ") runs past its file of " +
              std::to_string(st.st_size) + " bytes");
  if (!bytes) return;
  std::string real(static_cast<size_t>(len), '\0');
  if (::pread(fr->fd, real.data(), real.size(), static_cast<off_t>(fr->offset)) != static_cast<ssize_t>(len))
    violation(path + ": pread of an extent failed");
  if (real != *bytes) violation(path + ": extent at " + std::to_string(fr->offset) + " holds other bytes than a read delivers");
}

inline void check_sidecar(const Tree& tree, const Node& n, uint64_t size, const std::string& path, const CheckOptions& o) {
  auto side = tree.lookup(n.parent, n.name + ".json");
  if (!side || tree.node(*side).type != NodeType::File) return;
  if (o.may_be_tensor && !o.may_be_tensor(path)) return;
  const ByteSource& s = *tree.node(*side).data;
  std::string text(static_cast<size_t>(std::min<uint64_t>(s.size(), 1u << 20)), '\0');
  try {
    text.resize(s.read_at(0, text.data(), text.size()));
  } catch (const SysError&) {
    return;
  }
  auto j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("dtype") || !j.contains("shape") || !j.contains("nbytes")) return;
  if (!j["dtype"].is_string()) violation(path + ": sidecar dtype is not a string");
  auto dt = dtype_by_name(j["dtype"].get<std::string>());
  if (!dt) violation(path + ": sidecar dtype " + j["dtype"].dump() + " is not a known dtype");
  if (!j["shape"].is_array()) violation(path + ": sidecar shape is not an array");
  std::vector<uint64_t> shape;
  for (const auto& d : j["shape"]) {
    if (!d.is_number_unsigned()) violation(path + ": sidecar shape holds " + d.dump());
    shape.push_back(d.get<uint64_t>());
  }
  uint64_t want;
  try {
    want = tensor_nbytes(*dt, shape, "fuzz", std::nullopt);
  } catch (const FormatError& e) {
    violation(path + ": sidecar shape x dtype is not a size: " + e.what());
  }
  if (want != size)
    violation(path + ": file of " + std::to_string(size) + " bytes, sidecar shape x dtype says " + std::to_string(want));
  if (!j["nbytes"].is_number_unsigned() || j["nbytes"].get<uint64_t>() != size)
    violation(path + ": sidecar nbytes " + j["nbytes"].dump() + " differs from the file size " + std::to_string(size));
}

}  // namespace detail

// Checks every file of the tree (see the header comment).
inline void check_tree(const Tree& tree, const CheckOptions& o = {}) {
  std::string buf;
  tree.walk([&](NodeId id, const Node& n) {
    if (n.type != NodeType::File) return;
    std::string path = tree.path_of(id);
    if (!n.data) violation(path + ": file without contents");
    const ByteSource& s = *n.data;
    uint64_t size = s.size();
    bool ok;
    if (size <= o.full_read_limit) {
      ok = detail::read_range(s, 0, size, buf, path, o);
      if (ok) detail::check_extent(s, 0, size, &buf, path);
    } else {
      uint64_t piece = 1u << 16;
      ok = detail::read_range(s, 0, piece, buf, path, o);
      if (ok) detail::check_extent(s, 0, piece, &buf, path);
      if (ok) ok = detail::read_range(s, size - piece, piece, buf, path, o);
      if (ok) detail::check_extent(s, size - piece, piece, &buf, path);
      detail::check_extent(s, 0, size, nullptr, path);
    }
    if (ok) {
      char extra;
      size_t past;
      try {
        past = s.read_at(size, &extra, 1);
      } catch (const SysError& e) {
        violation(path + ": read at the end failed: " + e.what());
      }
      if (past != 0) violation(path + ": a read past the end delivered bytes");
      // An inner extent: views of views must map it too.
      if (size >= 3 && size <= o.full_read_limit) {
        std::string inner = buf.substr(static_cast<size_t>(size / 3), static_cast<size_t>(size / 3));
        detail::check_extent(s, size / 3, size / 3, &inner, path);
      }
    }
    detail::check_sidecar(tree, n, size, path, o);
  });
}

}  // namespace nemofs::fuzz
