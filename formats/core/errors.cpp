#include "formats/core/errors.h"

#include <cerrno>
#include <cstring>

namespace nemofs {
namespace {
std::string render(const std::string& format, const std::optional<uint64_t>& offset, const std::string& detail) {
  std::string s = format;
  if (offset) s += ": at byte " + std::to_string(*offset);
  s += ": " + detail;
  return s;
}
}  // namespace

FormatError::FormatError(std::string format, std::optional<uint64_t> offset, std::string detail)
    : std::runtime_error(render(format, offset, detail)),
      format_(std::move(format)),
      offset_(offset),
      detail_(std::move(detail)) {}

SysError::SysError(int err, const std::string& what)
    : std::runtime_error(what.empty() ? std::string(std::strerror(err ? err : EIO)) : what), err_(err ? err : EIO) {}

void throw_sys(int err, const std::string& what) {
  if (err == ENOSPC || err == EDQUOT) throw SysError(err, what + ": no space left on the device");
  throw SysError(err, what + ": " + std::strerror(err ? err : EIO));
}

}  // namespace nemofs
