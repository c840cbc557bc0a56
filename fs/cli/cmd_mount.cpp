// `nemofs mount` and `nemofs inspect`: validate and index SOURCE before anything is mounted.
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <mutex>
#include <thread>
#include <chrono>
#include <algorithm>

#include "formats/core/errors.h"
#include "formats/core/io.h"
#include "formats/core/source_guard.h"
#include "formats/detect/checkpoint.h"
#include "formats/safetensors/safetensors_writer.h"
#include "fs/backends/backend_factory.h"
#include "fs/cli/cli.h"
#include "fs/fuse/fuse_server.h"
#include "fs/cli/inspect.h"
#include "fs/cli/state.h"
#include "fs/backends/writable_backend.h"
#include "fs/backends/folder_backend.h"
#include "formats/detect/folder.h"
#include "formats/remote/remote.h"

namespace nemofs {

std::vector<std::string> split_options(const std::string& s) {
  std::vector<std::string> out;
  std::string cur;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size()) {
      cur += s[++i];
    } else if (s[i] == ',') {
      if (!cur.empty()) out.push_back(cur);
      cur.clear();
    } else {
      cur += s[i];
    }
  }
  if (!cur.empty()) out.push_back(cur);
  return out;
}

namespace {

std::string real_path(const std::string& p) {
  char buf[PATH_MAX];
  if (!::realpath(p.c_str(), buf)) return {};
  return buf;
}

// The mount whose daemon this is, for the changed-source reporter (one mount per process).
std::string g_mountpoint;

// Told once per source file that changed under the mount (SourceGuard): a warning where the
// daemon's messages go (stderr in the foreground, syslog as a daemon) and the state file, so that
// `nemofs status` shows it.
void report_source_changed(const std::string& path, const std::string& message) {
  std::fprintf(stderr, "nemofs: warning: %s\n", message.c_str());
  ::syslog(LOG_WARNING, "nemofs: %s: warning: %s", g_mountpoint.c_str(), message.c_str());
  note_source_changed(g_mountpoint, path);
}

// Opens the checkpoint (a path, or a URL: formats/remote), printing the one-line error and
// returning the exit code on failure.
// `writable`: it may be mounted writable (see open_checkpoint).
// `safetensors_views`: a remote folder of checkpoints gives each view its -o safetensors file as it
// builds it (remote.h).
int open_or_report(const std::string& source, Checkpoint& cp, bool writable, bool safetensors_views = false) {
  try {
    cp = remote::is_remote_url(source) ? remote::open_remote_checkpoint(source, safetensors_views)
                                       : open_checkpoint(source, writable);
    return kExitOk;
  } catch (const FormatError& e) {
    std::fprintf(stderr, "nemofs: %s: %s\n", remote::display_url(source).c_str(), e.what());
    return kExitSourceInvalid;
  } catch (const SysError& e) {
    std::fprintf(stderr, "nemofs: %s\n", e.what());
    return kExitSourceUnreadable;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "nemofs: %s: out of memory while indexing\n", source.c_str());
    return kExitSourceInvalid;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "nemofs: %s: %s\n", source.c_str(), e.what());
    return kExitSourceInvalid;
  }
}

}  // namespace

int cmd_inspect(const std::vector<std::string>& args) {
  bool json = false;
  std::string source;
  for (const auto& a : args) {
    if (a == "--json") json = true;
    else if (!a.empty() && a[0] == '-') {
      std::fprintf(stderr, "nemofs inspect: unknown option '%s'\n", a.c_str());
      return kExitUsage;
    } else if (source.empty()) source = a;
    else {
      std::fprintf(stderr, "nemofs inspect: one SOURCE only\n");
      return kExitUsage;
    }
  }
  if (source.empty()) {
    std::fprintf(stderr, "usage: nemofs inspect SOURCE [--json]\n");
    return kExitUsage;
  }
  std::string folder = remote::is_remote_url(source) ? std::string() : real_path(source);
  if (!folder.empty() && is_plain_folder(folder)) {
    nlohmann::json doc;
    try {
      doc = inspect_folder_json(folder, source);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "nemofs: %s: %s\n", source.c_str(), e.what());
      return kExitSourceUnreadable;
    }
    if (json) std::cout << inspect_dump(doc) << "\n";
    else inspect_text(doc, std::cout);
    return std::cout.good() ? kExitOk : kExitSourceUnreadable;
  }
  Checkpoint cp;
  if (int rc = open_or_report(source, cp, /*writable=*/false)) return rc;
  if (json) inspect_json_write(cp, remote::display_url(source), std::cout);
  else inspect_text(cp, std::cout);
  return std::cout.good() ? kExitOk : kExitSourceUnreadable;
}

int cmd_mount(const std::vector<std::string>& args) {
  std::vector<std::string> positional, fuse_opts;
  MountRequest req;
  bool foreground = false, debug = false, explicit_rw = false;
  remote::Options ropt;
  std::vector<std::string> remote_only;  // remote options given (refused for a local SOURCE)
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "-f") foreground = true;
    else if (a == "-d") debug = foreground = true;
    else if (a == "-o" || (a.size() > 2 && a.rfind("-o", 0) == 0)) {
      std::string opts;
      if (a == "-o") {
        if (i + 1 >= args.size()) {
          std::fprintf(stderr, "nemofs mount: -o needs OPTIONS\n");
          return kExitUsage;
        }
        opts = args[++i];
      } else {
        opts = a.substr(2);
      }
      for (const auto& o : split_options(opts)) {
        auto eq = o.find('=');
        std::string key = o.substr(0, eq);
        if (key == "ro") req.read_only = true;
        else if (key == "rw") {
          req.read_only = false;
          explicit_rw = true;
        } else if (key == "cache_size" || key == "retries" || key == "timeout" || key == "connections") {
          std::string v = eq == std::string::npos ? std::string() : o.substr(eq + 1);
          try {
            uint64_t n = key == "cache_size" ? remote::parse_size(v) : std::stoull(v);
            if (key == "cache_size") ropt.cache_size = n;
            else if (key == "retries") ropt.retries = static_cast<int>(std::min<uint64_t>(n, 20));
            else if (key == "timeout") ropt.timeout_s = static_cast<long>(std::max<uint64_t>(1, std::min<uint64_t>(n, 3600)));
            else ropt.connections = static_cast<unsigned>(std::max<uint64_t>(1, std::min<uint64_t>(n, 64)));
          } catch (const std::exception&) {
            std::fprintf(stderr, "nemofs mount: option %s needs a number%s\n", key.c_str(),
                         key == "cache_size" ? " (bytes, K/M/G suffix)" : "");
            return kExitUsage;
          }
          remote_only.push_back(key);
        }
        else if (key == "debug") debug = foreground = true;
        else if (key == "commit_junk" || key == "safetensors") req.nemofs_options[key] = "1";
        else if (key == "output" || key == "commit") {
          if (eq == std::string::npos) {
            std::fprintf(stderr, "nemofs mount: option %s needs a value\n", key.c_str());
            return kExitUsage;
          }
          req.nemofs_options[key] = o.substr(eq + 1);
        } else if (key == "fsname" || key == "subtype") {
          // nemofs sets these itself (mount(8) and `nemofs status` rely on them).
        } else {
          fuse_opts.push_back(o);
        }
      }
    } else if (a == "-h" || a == "--help") {
      std::printf("usage: nemofs mount [-o OPTIONS] [-f] [-d] SOURCE MOUNTPOINT\n");
      return kExitOk;
    } else if (!a.empty() && a[0] == '-') {
      std::fprintf(stderr, "nemofs mount: unknown option '%s'\n", a.c_str());
      return kExitUsage;
    } else {
      positional.push_back(a);
    }
  }
  if (positional.size() != 2) {
    std::fprintf(stderr, "usage: nemofs mount [-o OPTIONS] [-f] [-d] SOURCE MOUNTPOINT\n");
    return kExitUsage;
  }
  const std::string& source_arg = positional[0];
  const std::string& mp_arg = positional[1];
  const bool is_remote = remote::is_remote_url(source_arg);
  if (is_remote) {
    if (explicit_rw) {
      std::fprintf(stderr, "nemofs mount: %s: remote sources are mounted read-only (-o rw is not available)\n",
                   remote::display_url(source_arg).c_str());
      return kExitUsage;
    }
    if (req.nemofs_options.count("output") || req.nemofs_options.count("commit_junk")) {
      std::fprintf(stderr, "nemofs mount: output= and commit_junk are for a writable .nemo, not a remote source\n");
      return kExitUsage;
    }
    req.read_only = true;
    remote::configure(ropt);
  } else if (!remote_only.empty()) {
    std::fprintf(stderr, "nemofs mount: option %s is for remote sources (URLs) only\n", remote_only.front().c_str());
    return kExitUsage;
  }
  req.source = is_remote ? source_arg : real_path(source_arg);
  if (req.source.empty()) {
    std::fprintf(stderr, "nemofs: %s: %s\n", source_arg.c_str(), std::strerror(errno));
    return kExitSourceUnreadable;
  }
  req.mountpoint = real_path(mp_arg);
  struct stat st {};
  if (req.mountpoint.empty() || ::stat(req.mountpoint.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    std::fprintf(stderr, "nemofs: %s: mountpoint is not an existing folder (create it with mkdir)\n", mp_arg.c_str());
    return kExitMountFailed;
  }
  if (is_nemofs_mount(req.mountpoint)) {
    std::fprintf(stderr, "nemofs: %s: already a nemofs mount (nemofs umount it first)\n", mp_arg.c_str());
    return kExitMountFailed;
  }

  Checkpoint cp;
  BackendChoice choice;
  const bool folder = !is_remote && is_plain_folder(req.source);
  if (folder) {
    // A folder of checkpoints: nothing is indexed now (views are built on first access), so
    // warnings come while serving. Each goes to stderr (seen with -f) and into the mount's state
    // file, where `nemofs status --json` shows it.
    cp.format = Format::Folder;
    std::string mp = req.mountpoint, src = source_arg;
    auto warn = [mp, src](const std::string& w) {
      static std::mutex mu;
      std::lock_guard lk(mu);
      std::fprintf(stderr, "nemofs: %s: warning: %s\n", src.c_str(), w.c_str());
      try {
        if (auto st = read_state(mp)) {
          (*st)["warnings"].push_back(w);
          write_state(mp, *st);
        }
      } catch (const std::exception&) {
      }
    };
    choice.backend =
        std::make_unique<FolderBackend>(req.source, getuid(), getgid(), warn, req.nemofs_options.count("safetensors") > 0);
    choice.read_only = true;
    choice.mode = "ro";
  } else {
    if (int rc = open_or_report(req.source, cp, !req.read_only, req.nemofs_options.count("safetensors") > 0)) return rc;
  }
  // What mount(8), status and messages show of a URL: no query string, no credentials.
  const std::string shown_source = is_remote ? remote::display_url(req.source) : req.source;
  req.observer = std::make_shared<StateObserver>(req.mountpoint);
  if (req.nemofs_options.count("safetensors")) {
    // The view is part of the frozen tree: a writable mount's tree changes with every edit.
    if (cp.writable_candidate && !req.read_only) {
      std::fprintf(stderr, "nemofs mount: -o safetensors needs a read-only mount of a .nemo (add -o ro)\n");
      return kExitUsage;
    }
    // A folder mount adds the views as it indexes each checkpoint (FolderBackend; a remote folder
    // of checkpoints as it builds them).
    if (!folder && cp.format != Format::Folder)
      add_safetensors_views(cp.tree, cp.format == Format::Tar || cp.format == Format::GzipTar, cp.warnings);
  }
  for (const auto& w : cp.warnings) std::fprintf(stderr, "nemofs: %s: warning: %s\n", shown_source.c_str(), w.c_str());

  if (!folder) {
    try {
      choice = make_backend(cp, req);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "nemofs: %s: %s\n", shown_source.c_str(), e.what());
      return kExitMountFailed;
    }
  }
  Backend& backend = *choice.backend;

  ServerOptions so;
  so.mountpoint = req.mountpoint;
  so.fsname = shown_source;
  // A comma would end the fsname option early (libfuse takes "\," as a literal comma).
  for (size_t i = 0; (i = so.fsname.find(',', i)) != std::string::npos; i += 2) so.fsname.insert(i, "\\");
  so.foreground = foreground;
  so.debug = debug;
  so.read_only = choice.read_only;
  so.fuse_options = fuse_opts;
  nlohmann::json state{{"source", shown_source},
                       {"mountpoint", req.mountpoint},
                       {"format", format_name(cp.format)},
                       {"mode", choice.mode}};
  // What indexing warned about (views left out, members not shown), for `nemofs status`; a local
  // folder mount adds its views' warnings as it builds them.
  if (!cp.warnings.empty()) state["warnings"] = cp.warnings;
  if (auto* wb = dynamic_cast<WritableBackend*>(&backend)) state["pending_edits"] = wb->pending_edits();
  std::string mp = req.mountpoint;
  so.on_ready = [&state, mp](pid_t pid) {
    state["pid"] = pid;
    try {
      io::unlink(result_file_for(mp));
      write_state(mp, state);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "nemofs: warning: %s\n", e.what());
    }
  };
  if (is_remote) {
    state["remote"] = remote::stats(req.source);
    // The counters go to the state file once a second while they change, from the serving
    // process (a thread started before the daemon forks would not survive the fork).
    std::string url = req.source;
    so.on_serving = [mp, url] {
      remote::enable_prefetch();
      std::thread([mp, url] {
        nlohmann::json last;
        for (;;) {
          std::this_thread::sleep_for(std::chrono::seconds(1));
          nlohmann::json now = remote::stats(url);
          if (now == last) continue;
          last = now;
          update_state(mp, [&](nlohmann::json& st) { st["remote"] = now; });
        }
      }).detach();
    };
  }
  g_mountpoint = mp;
  SourceGuard::set_reporter(&report_source_changed);
  remote::set_change_reporter(&report_source_changed);
  so.on_finished = [&backend, mp] {
    try {
      write_result(mp, backend.outcome_ok(), backend.outcome_message());
      remove_state(mp);
    } catch (...) {
    }
  };
  return serve(backend, so);
}

}  // namespace nemofs
