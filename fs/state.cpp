#include "fs/state.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace nemofs {

std::string state_dir() {
  std::string dir;
  if (geteuid() == 0) {
    dir = "/run/nemofs";
  } else if (const char* x = std::getenv("XDG_RUNTIME_DIR"); x && *x) {
    dir = std::string(x) + "/nemofs";
  } else {
    dir = "/tmp/nemofs-" + std::to_string(geteuid());
  }
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST)
    throw std::runtime_error(dir + ": cannot create state folder: " + std::strerror(errno));
  return dir;
}

namespace {
std::string hash_name(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

std::optional<std::string> slurp(const std::string& path) {
  std::ifstream f(path);
  if (!f) return std::nullopt;
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// /proc/self/mountinfo escapes space, tab, newline and backslash as \ooo.
std::string unescape_mountinfo(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size()) {
      int v = 0;
      bool ok = true;
      for (int k = 1; k <= 3; ++k) {
        char c = s[i + k];
        if (c < '0' || c > '7') ok = false;
        else v = v * 8 + (c - '0');
      }
      if (ok) {
        out += static_cast<char>(v);
        i += 3;
        continue;
      }
    }
    out += s[i];
  }
  return out;
}
}  // namespace

std::string state_file_for(const std::string& mp) { return state_dir() + "/" + hash_name(mp) + ".json"; }
std::string result_file_for(const std::string& mp) { return state_dir() + "/" + hash_name(mp) + ".result"; }
std::string progress_file_for(const std::string& mp) { return state_dir() + "/" + hash_name(mp) + ".progress"; }

void write_file_atomic(const std::string& path, const std::string& body) {
  std::string tmp = path + ".tmp." + std::to_string(getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) throw std::runtime_error(tmp + ": " + std::strerror(errno));
  size_t done = 0;
  while (done < body.size()) {
    ssize_t n = ::write(fd, body.data() + done, body.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      throw std::runtime_error(tmp + ": " + std::strerror(e));
    }
    done += static_cast<size_t>(n);
  }
  ::close(fd);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int e = errno;
    ::unlink(tmp.c_str());
    throw std::runtime_error(path + ": " + std::strerror(e));
  }
}

void write_state(const std::string& mp, const nlohmann::json& state) { write_file_atomic(state_file_for(mp), state.dump(2) + "\n"); }

std::optional<nlohmann::json> read_state(const std::string& mp) {
  auto s = slurp(state_file_for(mp));
  if (!s) return std::nullopt;
  auto j = nlohmann::json::parse(*s, nullptr, false);
  if (j.is_discarded()) return std::nullopt;
  return j;
}

void remove_state(const std::string& mp) { ::unlink(state_file_for(mp).c_str()); }

void write_result(const std::string& mp, bool ok, const std::string& message) {
  nlohmann::json j{{"ok", ok}, {"message", message}};
  write_file_atomic(result_file_for(mp), j.dump() + "\n");
}

std::optional<nlohmann::json> take_result(const std::string& mp) {
  std::string path = result_file_for(mp);
  auto s = slurp(path);
  if (!s) return std::nullopt;
  ::unlink(path.c_str());
  auto j = nlohmann::json::parse(*s, nullptr, false);
  if (j.is_discarded()) return std::nullopt;
  return j;
}

std::vector<MountInfo> nemofs_mounts() {
  std::vector<MountInfo> out;
  std::ifstream f("/proc/self/mountinfo");
  std::string line;
  while (std::getline(f, line)) {
    // id parent major:minor root mountpoint options [optional...] - fstype source superopts
    std::istringstream ss(line);
    std::string id, parent, dev, root, mp;
    ss >> id >> parent >> dev >> root >> mp;
    std::string tok;
    while (ss >> tok && tok != "-") {
    }
    std::string fstype, source;
    ss >> fstype >> source;
    if (fstype == "fuse.nemofs")
      out.push_back(MountInfo{unescape_mountinfo(source), unescape_mountinfo(mp), fstype});
  }
  return out;
}

bool is_nemofs_mount(const std::string& mp) {
  for (const auto& m : nemofs_mounts())
    if (m.mountpoint == mp) return true;
  return false;
}

}  // namespace nemofs
