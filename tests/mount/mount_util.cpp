#include "tests/mount/mount_util.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <stdexcept>

namespace nemofs::testing {

std::string nemofs_bin() { return std::string(NEMOFS_BINARY_DIR) + "/fs/nemofs"; }

std::string fuse_unavailable_reason() {
  if (::access("/dev/fuse", R_OK | W_OK) != 0) return "/dev/fuse is not available";
  if (run({"sh", "-c", "command -v fusermount3"}).status != 0) return "fusermount3 is not installed";
  return "";
}

namespace {
void drain(int fd, std::string& into) {
  char buf[65536];
  ssize_t n = ::read(fd, buf, sizeof buf);
  if (n > 0) into.append(buf, static_cast<size_t>(n));
}
}  // namespace

RunResult run(const std::vector<std::string>& argv, int timeout_s) {
  RunResult r;
  int out[2], err[2];
  if (::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(err, O_CLOEXEC) != 0) throw std::runtime_error("pipe");
  pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(out[1], 1);
    ::dup2(err[1], 2);
    int devnull = ::open("/dev/null", O_RDONLY);
    ::dup2(devnull, 0);
    std::vector<char*> a;
    for (const auto& s : argv) a.push_back(const_cast<char*>(s.c_str()));
    a.push_back(nullptr);
    ::execvp(a[0], a.data());
    std::_Exit(127);
  }
  ::close(out[1]);
  ::close(err[1]);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
  bool out_open = true, err_open = true;
  // A daemonised child may keep the pipes open (it should not: it redirects to /dev/null), so
  // stop reading once the direct child has exited and the pipes are drained.
  while (out_open || err_open) {
    pollfd p[2] = {{out[0], POLLIN, 0}, {err[0], POLLIN, 0}};
    int rc = ::poll(p, 2, 100);
    if (rc > 0) {
      for (int i = 0; i < 2; ++i) {
        if (p[i].revents & (POLLIN | POLLHUP)) {
          std::string& into = i == 0 ? r.out : r.err;
          size_t before = into.size();
          drain(p[i].fd, into);
          if (into.size() == before) (i == 0 ? out_open : err_open) = false;
        }
      }
    }
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(pid, SIGKILL);
      break;
    }
  }
  ::close(out[0]);
  ::close(err[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  r.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

RunResult run_shell(const std::string& script, int timeout_s) { return run({"bash", "-c", script}, timeout_s); }

TempDir::TempDir() {
  char tmpl[] = "/tmp/nemofs-test-XXXXXX";
  if (!::mkdtemp(tmpl)) throw std::runtime_error("mkdtemp");
  path_ = tmpl;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

Mount::Mount(const std::string& source, const std::string& mountpoint, const std::vector<std::string>& extra)
    : mp_(mountpoint) {
  ::mkdir(mp_.c_str(), 0755);
  std::vector<std::string> argv{nemofs_bin(), "mount"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  argv.push_back(source);
  argv.push_back(mp_);
  result_ = run(argv);
  mounted_ = result_.status == 0;
}

RunResult Mount::umount() {
  RunResult r = run({nemofs_bin(), "umount", mp_}, 600);
  mounted_ = false;
  return r;
}

Mount::~Mount() {
  if (mounted_) {
    RunResult r = run({nemofs_bin(), "umount", mp_}, 600);
    if (r.status == 0) return;
  }
  // Whatever happened, never leave a mount behind.
  if (run({"mountpoint", "-q", mp_}).status == 0) run({"fusermount3", "-u", "-z", mp_});
}

}  // namespace nemofs::testing
