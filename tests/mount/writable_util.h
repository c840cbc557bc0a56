// Helpers shared by the writable-.nemo mount tests: the fixture's member names, the python
// checker (check_commit.py, CPython tarfile + NeMo's restore steps), and daemon/overlay lookups.
#pragma once

#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <initializer_list>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "tests/mount/mount_util.h"

namespace nemofs::testing {

// Raw tar names of asr_ctc(.legacy_gz).nemo's members, as NeMo wrote them.
inline const std::string kConfig = "./model_config.yaml";
inline const std::string kTokModel = "./1d2bda5531411bb07ee07d0c150fdd6c_tokenizer.model";
inline const std::string kTokVocab = "./6106331dab5dfa1dd78969f3e73bf1d3_tokenizer.vocab";
inline const std::string kVocabTxt = "./b61a41f8cc8053f1a730cce9c90087c4_vocab.txt";
inline const std::string kLexicon = "./lexicon_" + std::string(110, 'x') + ".txt";
inline const std::string kWeights = "./model_weights.ckpt";

inline nlohmann::json pairs(std::initializer_list<std::pair<std::string, std::string>> ps) {
  nlohmann::json a = nlohmann::json::array();
  for (const auto& [x, y] : ps) a.push_back(nlohmann::json::array({x, y}));
  return a;
}

// A helper script in tests/mount/.
inline std::string script(const std::string& name) { return std::string(NEMOFS_TEST_DATA_DIR) + "/../mount/" + name; }

inline RunResult check_commit(const std::string& orig, const std::string& now, const nlohmann::json& spec) {
  return run({"/usr/bin/python3", script("check_commit.py"), orig, now, spec.dump()}, 300);
}

// hashlib uses OpenSSL (SHA-NI where the CPU has it): ~2.5x faster than sha256sum on 1 GiB.
inline std::string sha256_file(const std::string& path) {
  return run({"/usr/bin/python3", "-c",
              "import hashlib, sys\nh = hashlib.sha256()\nf = open(sys.argv[1], 'rb')\n"
              "while b := f.read(1 << 24): h.update(b)\nprint(h.hexdigest())",
              path},
             300)
      .out.substr(0, 64);
}

inline bool exists(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

// The overlay folder nemofs keeps beside an archive.
inline std::string overlay_of(const std::string& archive) {
  auto p = std::filesystem::path(archive);
  return (p.parent_path() / ("." + p.filename().string() + ".nemofs")).string();
}

// Commit temporaries left in a folder.
inline std::vector<std::string> temporaries(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(dir))
    if (e.path().filename().string().find(".nemofs-tmp-") != std::string::npos) out.push_back(e.path().string());
  return out;
}

// The daemon serving `mp`, from `nemofs status --json` (0 if none).
inline pid_t daemon_pid(const std::string& mp) {
  auto j = nlohmann::json::parse(run({nemofs_bin(), "status", "--json"}).out, nullptr, false);
  if (!j.is_array()) return 0;
  std::string real = std::filesystem::canonical(mp).string();
  for (const auto& e : j)
    if (e.value("mountpoint", std::string()) == real && e.contains("pid")) return e["pid"].get<pid_t>();
  return 0;
}

// A tmpfs of `size` bytes at `dir` (root only), unmounted on destruction.
class Tmpfs {
 public:
  Tmpfs(const std::string& dir, const std::string& size) : dir_(dir) {
    ::mkdir(dir.c_str(), 0755);
    ok_ = ::mount("tmpfs", dir.c_str(), "tmpfs", 0, ("size=" + size).c_str()) == 0;
  }
  ~Tmpfs() {
    if (ok_) ::umount2(dir_.c_str(), MNT_DETACH);
  }
  bool ok() const { return ok_; }

 private:
  std::string dir_;
  bool ok_ = false;
};

struct KillMidCommit {
  bool killed = false;  // the daemon was killed while its new archive had bytes in it
  RunResult commit;     // what `nemofs commit` said
};

// Runs `nemofs commit` on the writable mount `mp` of an archive in `dir`, and kill -9s the
// daemon `pid` as soon as the commit's temporary in `dir` holds bytes: the copy is in flight.
inline KillMidCommit kill_daemon_mid_commit(const std::string& mp, pid_t pid, const std::string& dir,
                                            std::chrono::seconds within) {
  KillMidCommit k;
  std::thread committer([&] { k.commit = run({nemofs_bin(), "commit", mp}, 300); });
  auto deadline = std::chrono::steady_clock::now() + within;
  while (!k.killed && std::chrono::steady_clock::now() < deadline) {
    for (const auto& t : temporaries(dir)) {
      struct stat st {};
      if (::stat(t.c_str(), &st) == 0 && st.st_size > 0) {
        ::kill(pid, SIGKILL);
        k.killed = true;
        break;
      }
    }
    if (!k.killed) std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  committer.join();
  return k;
}

}  // namespace nemofs::testing
