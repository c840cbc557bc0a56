// Error vocabulary of the whole project: two exception types, no more.
//
// FormatError: the bytes of a source are not what the format says they must be (always at
// open/index time, so nothing half-broken is ever mounted). Its message names the format, the
// byte offset and what is wrong.
//
// SysError: an operation failed with an errno (a read, a write, a refused namespace operation, a
// commit step). It carries that errno from wherever it is thrown to the one place that answers:
// the FUSE edge replies with err(), the CLI prints what() and picks its exit code. Anything else
// that escapes to the FUSE edge becomes EIO.
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

class SysError : public std::runtime_error {
 public:
  // err 0 is never carried: it becomes EIO (a failure must reach the caller as a failure).
  explicit SysError(int err, const std::string& what = {});
  int err() const { return err_; }

 private:
  int err_;
};

// "what: strerror(err)", as SysError. For ENOSPC/EDQUOT the message says the disk is full.
[[noreturn]] void throw_sys(int err, const std::string& what);

}  // namespace nemofs
