// Error vocabulary of the FUSE-free formats library.
//
// Parsers throw FormatError when the bytes of a source are not what the format says they must be
// (always at open/index time, so nothing half-broken is ever mounted). Byte sources throw IoError
// when the operating system fails a read; the FUSE edge turns that into EIO for the one request.
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>

namespace nemofs {

class FormatError : public std::runtime_error {
 public:
  FormatError(std::string format, std::optional<uint64_t> offset, std::string detail);
  FormatError(std::string format, std::string detail) : FormatError(std::move(format), std::nullopt, std::move(detail)) {}

  const std::string& format() const { return format_; }
  const std::optional<uint64_t>& offset() const { return offset_; }
  const std::string& detail() const { return detail_; }

 private:
  std::string format_;
  std::optional<uint64_t> offset_;
  std::string detail_;
};

// An operating-system failure while reading bytes (errno preserved for the FUSE reply).
class IoError : public std::runtime_error {
 public:
  IoError(int err, const std::string& what) : std::runtime_error(what), errno_(err) {}
  int error_number() const { return errno_; }

 private:
  int errno_;
};

}  // namespace nemofs
