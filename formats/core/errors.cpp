#include "formats/core/errors.h"

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

}  // namespace nemofs
