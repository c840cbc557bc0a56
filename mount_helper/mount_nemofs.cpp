// mount.nemofs (also installed as mount.fuse.nemofs): the helper util-linux mount(8) runs for
// `mount -t nemofs` / `mount -t fuse.nemofs` and for fstab lines of either type:
//
//   mount.nemofs SOURCE MOUNTPOINT [-sfnv] [-N NAMESPACE] [-o OPTIONS] [-t TYPE]
//
// It behaves like mount.fuse3: options that only mean something to mount(8), systemd or fstab
// readers (noauto, nofail, _netdev, user, users, auto, defaults, x-*, comment=*) are dropped,
// setuid=USER runs the filesystem as USER, and everything else is handed to
//   nemofs mount -o OPTIONS SOURCE MOUNTPOINT
// with exec, so the exit status is nemofs's own (see nemofs(1)). Kept thin on purpose: all the
// checking of SOURCE and MOUNTPOINT happens in nemofs.
#include <grp.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "fs/exit_codes.h"

#ifndef NEMOFS_INSTALLED_BIN
#define NEMOFS_INSTALLED_BIN "/usr/bin/nemofs"
#endif

namespace {

using nemofs::kExitOk;
using nemofs::kExitUsage;  // the same code nemofs uses for bad arguments
constexpr int kExitSystem = 2;  // mount(8)'s "system error" (could not drop privileges, exec failed)

const char* prog = "mount.nemofs";

void usage(FILE* f) {
  std::fprintf(f,
               "usage: %s SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS] [-t nemofs|fuse.nemofs]\n"
               "Mounts SOURCE with 'nemofs mount'; normally run by mount(8). See mount.nemofs(8).\n",
               prog);
}

// Splits on commas not escaped by a backslash; the escapes are kept so the pieces can be joined
// back unchanged for nemofs, which does its own unescaping.
std::vector<std::string> split_keep_escapes(const std::string& s) {
  std::vector<std::string> out;
  std::string cur;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size()) {
      cur += s[i];
      cur += s[++i];
    } else if (s[i] == ',') {
      out.push_back(cur);
      cur.clear();
    } else {
      cur += s[i];
    }
  }
  out.push_back(cur);
  return out;
}

// Options that only mean something to mount(8), systemd or people reading fstab; mount.fuse3
// drops the same ones before starting a filesystem.
bool is_mount8_only(const std::string& o) {
  static const char* const exact[] = {"", "defaults", "auto", "noauto", "user", "nouser", "users",
                                      "nofail", "_netdev", "owner", "group"};
  for (const char* e : exact)
    if (o == e) return true;
  return o.rfind("x-", 0) == 0 || o.rfind("comment=", 0) == 0;
}

bool is_executable(const std::string& p) { return !p.empty() && ::access(p.c_str(), X_OK) == 0; }

// The nemofs to run: $NEMOFS_BIN (only when not running set-id, for tests of an uninstalled
// build), else the path configured at build time, else the package's /usr/bin/nemofs, else PATH.
std::string find_nemofs() {
  if (::getuid() == ::geteuid() && ::getgid() == ::getegid()) {
    if (const char* e = std::getenv("NEMOFS_BIN"); e && *e) return e;
  }
  for (const char* p : {NEMOFS_INSTALLED_BIN, "/usr/bin/nemofs"})
    if (is_executable(p)) return p;
  return "nemofs";  // execvp searches PATH
}

// Becomes USER for good (supplementary groups, gid, uid), with the environment a login as USER
// would have for the parts nemofs reads (HOME, USER, LOGNAME, XDG_RUNTIME_DIR for its state).
bool drop_privileges(const std::string& user) {
  errno = 0;
  struct passwd* pw = ::getpwnam(user.c_str());
  if (!pw) {
    std::fprintf(stderr, "%s: setuid=%s: no such user (check the name in /etc/passwd)\n", prog, user.c_str());
    return false;
  }
  uid_t uid = pw->pw_uid;
  gid_t gid = pw->pw_gid;
  std::string home = pw->pw_dir ? pw->pw_dir : "/";
  if (::geteuid() != 0) {
    if (uid == ::geteuid()) return true;
    std::fprintf(stderr, "%s: setuid=%s: only root can run a filesystem as another user\n", prog, user.c_str());
    return false;
  }
  if (::initgroups(user.c_str(), gid) != 0 || ::setgid(gid) != 0 || ::setuid(uid) != 0) {
    std::fprintf(stderr, "%s: setuid=%s: cannot become that user: %s\n", prog, user.c_str(), std::strerror(errno));
    return false;
  }
  if (::setuid(0) == 0) {  // must be impossible now
    std::fprintf(stderr, "%s: setuid=%s: could not drop root privileges\n", prog, user.c_str());
    return false;
  }
  ::setenv("HOME", home.c_str(), 1);
  ::setenv("USER", user.c_str(), 1);
  ::setenv("LOGNAME", user.c_str(), 1);
  std::string runtime = "/run/user/" + std::to_string(uid);
  struct stat st {};
  if (::stat(runtime.c_str(), &st) == 0 && S_ISDIR(st.st_mode) && st.st_uid == uid)
    ::setenv("XDG_RUNTIME_DIR", runtime.c_str(), 1);
  else
    ::unsetenv("XDG_RUNTIME_DIR");
  return true;
}

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 0 && argv[0]) {
    const char* slash = std::strrchr(argv[0], '/');
    prog = slash ? slash + 1 : argv[0];
  }
  std::vector<std::string> positional, options;
  bool fake = false, verbose = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "-h" || a == "--help") {
      usage(stdout);
      return kExitOk;
    }
    if (a == "-o" || a == "-t" || a == "-N") {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s: %s needs a value\n", prog, a.c_str());
        usage(stderr);
        return kExitUsage;
      }
      std::string v = argv[++i];
      if (a == "-o") {
        for (auto& o : split_keep_escapes(v)) options.push_back(o);
      } else if (a == "-t") {
        if (v != "nemofs" && v != "fuse.nemofs") {
          std::fprintf(stderr, "%s: type '%s' is not nemofs (use -t nemofs or -t fuse.nemofs)\n", prog, v.c_str());
          return kExitUsage;
        }
      } else {
        std::fprintf(stderr, "%s: -N (mount namespaces) is not supported; run mount inside the namespace\n", prog);
        return kExitUsage;
      }
    } else if (a.size() > 2 && a.rfind("-o", 0) == 0) {
      for (auto& o : split_keep_escapes(a.substr(2))) options.push_back(o);
    } else if (a.size() >= 2 && a[0] == '-' && a != "--") {
      // mount(8) passes its own flags as one group, e.g. -snv.
      for (size_t k = 1; k < a.size(); ++k) {
        switch (a[k]) {
          case 's': break;  // sloppy: nemofs hands unknown options to FUSE anyway
          case 'n': break;  // no /etc/mtab: there is none to write
          case 'f': fake = true; break;
          case 'v': verbose = true; break;
          default:
            std::fprintf(stderr, "%s: unknown flag '-%c'\n", prog, a[k]);
            usage(stderr);
            return kExitUsage;
        }
      }
    } else if (a == "--") {
      for (++i; i < argc; ++i) positional.push_back(argv[i]);
    } else {
      positional.push_back(a);
    }
  }
  if (positional.size() != 2) {
    usage(stderr);
    return kExitUsage;
  }
  std::string source = positional[0];
  // The old fuse fstab spelling `nemofs#SOURCE`.
  if (source.rfind("nemofs#", 0) == 0) source = source.substr(7);

  std::string setuid_user;
  std::vector<std::string> kept;
  // mount(8) passes `rw` unless told `ro`; a URL mounts read-only and `nemofs mount -o rw URL`
  // refuses, so the helper leaves mount(8)'s default out for one.
  const bool url = source.find("://") != std::string::npos;
  for (const auto& o : options) {
    if (o.rfind("setuid=", 0) == 0) setuid_user = o.substr(7);
    else if (url && o == "rw") continue;
    else if (!is_mount8_only(o)) kept.push_back(o);
  }
  std::string joined;
  for (const auto& o : kept) joined += (joined.empty() ? "" : ",") + o;

  std::string nemofs = find_nemofs();
  std::vector<std::string> cmd{nemofs, "mount"};
  if (!joined.empty()) {
    cmd.push_back("-o");
    cmd.push_back(joined);
  }
  // nemofs mount takes no "--": keep a path that starts with '-' from reading as a flag.
  for (std::string p : {source, positional[1]}) cmd.push_back(p.rfind('-', 0) == 0 ? "./" + p : p);

  if (verbose || fake) {
    std::string line = setuid_user.empty() ? "" : "(as " + setuid_user + ") ";
    for (size_t i = 0; i < cmd.size(); ++i) line += (i ? " " : "") + shell_quote(cmd[i]);
    std::fprintf(stderr, "%s: %s%s\n", prog, fake ? "would run " : "", line.c_str());
  }
  if (fake) return kExitOk;
  if (!setuid_user.empty() && !drop_privileges(setuid_user)) return kExitSystem;

  std::vector<char*> cargv;
  for (auto& s : cmd) cargv.push_back(s.data());
  cargv.push_back(nullptr);
  ::execvp(cargv[0], cargv.data());
  std::fprintf(stderr, "%s: cannot run %s: %s (is the nemofs package installed?)\n", prog, nemofs.c_str(),
               std::strerror(errno));
  return kExitSystem;
}
