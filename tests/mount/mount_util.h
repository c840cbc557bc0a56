// Mount-tier helpers: real FUSE mounts through the real `nemofs` binary, black box.
//
// Tests skip with a visible message (GTEST_SKIP) when /dev/fuse or fusermount3 is missing; they
// never pass silently. Every mount made is unmounted by the guard's destructor.
#pragma once

#include <string>
#include <vector>

namespace nemofs::testing {

// Path of the built nemofs executable.
std::string nemofs_bin();
// Empty string when FUSE mounts can run here, else the reason.
std::string fuse_unavailable_reason();

struct RunResult {
  int status = -1;  // exit status, or -1 if killed by a signal
  std::string out, err;
};
// Runs argv (no shell) and captures stdout/stderr; kills it after timeout_s.
RunResult run(const std::vector<std::string>& argv, int timeout_s = 120);
RunResult run_shell(const std::string& script, int timeout_s = 120);

// A fresh temporary folder removed (recursively) on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& rel) const { return path_ + "/" + rel; }

 private:
  std::string path_;
};

// `nemofs mount [opts] source mp`; unmounts (nemofs umount, then fusermount3 -uz) on destruction
// if still mounted.
class Mount {
 public:
  Mount(const std::string& source, const std::string& mountpoint, const std::vector<std::string>& extra = {});
  ~Mount();
  bool ok() const { return result_.status == 0; }
  const RunResult& result() const { return result_; }
  const std::string& path() const { return mp_; }
  RunResult umount();  // nemofs umount; after this the destructor does nothing

 private:
  std::string mp_;
  RunResult result_;
  bool mounted_ = false;
};

#define NEMOFS_REQUIRE_FUSE()                                                    \
  do {                                                                           \
    std::string why_ = ::nemofs::testing::fuse_unavailable_reason();             \
    if (!why_.empty()) GTEST_SKIP() << "FUSE mount tier skipped: " << why_;      \
  } while (0)

}  // namespace nemofs::testing
