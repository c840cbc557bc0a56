// Stress of a writable .nemo: writer threads create, overwrite, truncate, append to, rename
// (plain, over another file, editor-style temp-then-rename) and delete members while reader
// threads read, list and stat through the same mount, for a bounded time, with a `nemofs commit`
// in the middle. Each writer owns its own names (and one original member), so a model of the
// expected archive can be kept without locks. Then `nemofs umount` commits, and CPython's tarfile
// (tests/mount/check_commit.py plus a member listing) checks the archive against the model.
//
// NEMOFS_STRESS_SECONDS sets the busy time (default 6).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include <nlohmann/json.hpp>

#include "tests/common/manifest_check.h"
#include "tests/mount/mount_util.h"

using namespace nemofs::testing;
using nlohmann::json;

namespace {

constexpr int kWriters = 4, kReaders = 4;

// Original members no writer touches (readers check them), and the one each writer edits.
const std::vector<std::string> kUntouched = {"model_config.yaml", "model_weights.ckpt",
                                             "1d2bda5531411bb07ee07d0c150fdd6c_tokenizer.model"};
// (edited in place, never renamed away or deleted)
const std::vector<std::string> kOwnedOriginal = {"b61a41f8cc8053f1a730cce9c90087c4_vocab.txt",
                                                 "6106331dab5dfa1dd78969f3e73bf1d3_tokenizer.vocab", "extras/README.txt",
                                                 "lexicon_" + std::string(110, 'x') + ".txt"};

std::string errno_text(const std::string& what, const std::string& path) {
  return what + " " + path + ": " + std::strerror(errno);
}

bool write_all(int fd, const std::string& bytes, off_t at) {
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::pwrite(fd, bytes.data() + done, bytes.size() - done, at + static_cast<off_t>(done));
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

// Whole file through open/read/close; nullopt with errno set on failure.
std::optional<std::string> read_file(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return std::nullopt;
  std::string out;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0) {
      int e = errno;
      ::close(fd);
      errno = e;
      return std::nullopt;
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return out;
}

struct Shared {
  std::string mp;
  std::map<std::string, std::string> baseline;  // untouched members and .tensors files: path -> bytes
  std::mutex mu;
  std::vector<std::pair<std::string, std::string>> frozen;  // written once, never touched again
  std::vector<std::string> failures;
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> writes{0}, reads{0}, listings{0}, vanished{0}, stale{0};

  void fail(const std::string& what) {
    std::lock_guard<std::mutex> g(mu);
    if (failures.size() < 20) failures.push_back(what);
  }
};

class Writer {
 public:
  Writer(Shared& s, int id, std::string original, std::string original_bytes)
      : s_(s), id_(id), rng_(1000 + id), dir_("stress/w" + std::to_string(id)) {
    files_[original] = std::move(original_bytes);
    ever_.insert(original);
  }

  void run() {
    if (!mkdir_p(dir_ + "/sub")) return;
    while (!s_.stop.load(std::memory_order_relaxed)) {
      step();
      ++s_.writes;
    }
  }

  const std::map<std::string, std::string>& files() const { return files_; }
  const std::set<std::string>& ever() const { return ever_; }

 private:
  std::string abs(const std::string& rel) const { return s_.mp + "/" + rel; }

  bool mkdir_p(const std::string& rel) {
    std::string p;
    for (size_t i = 0; i <= rel.size(); ++i) {
      if (i < rel.size() && rel[i] != '/') continue;
      p = rel.substr(0, i);
      if (::mkdir(abs(p).c_str(), 0755) != 0 && errno != EEXIST) {
        s_.fail(errno_text("mkdir", p));
        return false;
      }
    }
    return true;
  }

  std::string random_bytes(size_t n) {
    std::string b(n, '\0');
    for (auto& c : b) c = static_cast<char>(rng_());
    return b;
  }

  std::string new_name() {
    std::string sub = rng_() % 3 == 0 ? "/sub" : "";
    std::string n = dir_ + sub + "/f" + std::to_string(next_++) + ".bin";
    ever_.insert(n);
    return n;
  }

  std::string pick() {
    auto it = files_.begin();
    std::advance(it, static_cast<long>(rng_() % files_.size()));
    return it->first;
  }

  // After every change the writer reads its file back through the mount.
  void verify(const std::string& rel) {
    auto got = read_file(abs(rel));
    if (!got) return s_.fail(errno_text("read back", rel));
    if (*got != files_[rel])
      s_.fail(rel + ": read back " + std::to_string(got->size()) + " bytes, expected " + std::to_string(files_[rel].size()));
  }

  bool write_new(const std::string& rel, const std::string& bytes) {
    int fd = ::open(abs(rel).c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return s_.fail(errno_text("create", rel)), false;
    bool ok = write_all(fd, bytes, 0);
    if (!ok) s_.fail(errno_text("write", rel));
    ::close(fd);
    return ok;
  }

  void step() {
    unsigned op = static_cast<unsigned>(rng_() % 100);
    if (files_.empty() || op < 20) {  // create
      std::string rel = new_name();
      std::string bytes = random_bytes(rng_() % 40000);
      if (!write_new(rel, bytes)) return;
      files_[rel] = bytes;
      return verify(rel);
    }
    if (op < 25) {  // a frozen file: readers check it until the end
      std::string rel = dir_ + "/frozen" + std::to_string(next_++) + ".bin";
      ever_.insert(rel);
      std::string bytes = random_bytes(rng_() % 20000);
      if (!write_new(rel, bytes)) return;
      frozen_.insert(rel);
      files_[rel] = bytes;
      std::lock_guard<std::mutex> g(s_.mu);
      s_.frozen.emplace_back(rel, bytes);
      return;
    }
    std::string rel = pick();
    if (frozen_.count(rel)) return;
    // The original member stays in place (model_config.yaml names some as artifacts, and the
    // restore check needs them): it is only edited; a rename or delete becomes an append.
    if (rel.rfind(dir_ + "/", 0) != 0 && op >= 65 && op < 82) op = 50;
    if (rel.rfind(dir_ + "/", 0) != 0 && op >= 90) op = 50;
    std::string& cur = files_[rel];
    if (op < 45) {  // overwrite a range, maybe past the end (the gap reads as zeros)
      uint64_t at = rng_() % (cur.size() + 5000);
      std::string bytes = random_bytes(rng_() % 9000 + 1);
      int fd = ::open(abs(rel).c_str(), O_WRONLY);
      if (fd < 0) return s_.fail(errno_text("open for write", rel));
      if (!write_all(fd, bytes, static_cast<off_t>(at))) s_.fail(errno_text("pwrite", rel));
      ::close(fd);
      if (cur.size() < at + bytes.size()) cur.resize(at + bytes.size(), '\0');
      cur.replace(at, bytes.size(), bytes);
    } else if (op < 55) {  // append
      std::string bytes = random_bytes(rng_() % 3000 + 1);
      int fd = ::open(abs(rel).c_str(), O_WRONLY | O_APPEND);
      if (fd < 0) return s_.fail(errno_text("open for append", rel));
      if (::write(fd, bytes.data(), bytes.size()) != static_cast<ssize_t>(bytes.size())) s_.fail(errno_text("append", rel));
      ::close(fd);
      cur += bytes;
    } else if (op < 65) {  // truncate (shorter or longer)
      uint64_t n = rng_() % (cur.size() + 4000);
      if (::truncate(abs(rel).c_str(), static_cast<off_t>(n)) != 0) return s_.fail(errno_text("truncate", rel));
      cur.resize(n, '\0');
    } else if (op < 75) {  // rename to a fresh name
      std::string to = new_name();
      if (::rename(abs(rel).c_str(), abs(to).c_str()) != 0) return s_.fail(errno_text("rename", rel + " -> " + to));
      files_[to] = std::move(cur);
      files_.erase(rel);
      return verify(to);
    } else if (op < 82) {  // rename over another of its files
      std::string to = pick();
      if (to == rel || frozen_.count(to) || to.rfind(dir_ + "/", 0) != 0) return;
      if (::rename(abs(rel).c_str(), abs(to).c_str()) != 0) return s_.fail(errno_text("rename over", rel + " -> " + to));
      files_[to] = std::move(cur);
      files_.erase(rel);
      return verify(to);
    } else if (op < 90) {  // an editor's save: write a temp file, rename it over the member
      std::string tmp = dir_ + "/.tmp_save" + std::to_string(next_++);
      ever_.insert(tmp);
      std::string bytes = cur.substr(0, cur.size() / 2) + random_bytes(rng_() % 2000);
      if (!write_new(tmp, bytes)) return;
      if (::rename(abs(tmp).c_str(), abs(rel).c_str()) != 0) return s_.fail(errno_text("rename temp over", rel));
      cur = bytes;
    } else {  // delete
      if (::unlink(abs(rel).c_str()) != 0) return s_.fail(errno_text("unlink", rel));
      files_.erase(rel);
      return;
    }
    verify(rel);
  }

  Shared& s_;
  int id_;
  std::mt19937_64 rng_;
  std::string dir_;
  uint64_t next_ = 0;
  std::map<std::string, std::string> files_;  // the writer's names -> expected bytes
  std::set<std::string> frozen_;
  std::set<std::string> ever_;  // every name it ever used
};

void reader(Shared& s, unsigned seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::string> base;
  for (const auto& [p, b] : s.baseline) base.push_back(p);
  std::string buf;
  while (!s.stop.load(std::memory_order_relaxed)) {
    unsigned what = static_cast<unsigned>(rng() % 10);
    if (what < 5) {  // a random range of an untouched member or a .tensors file
      const std::string& p = base[rng() % base.size()];
      const std::string& want = s.baseline.at(p);
      uint64_t off = rng() % (want.size() + 1);
      size_t len = static_cast<size_t>(rng() % (want.size() - off + 100) + 1);
      buf.assign(len, '\0');
      int fd = ::open((s.mp + "/" + p).c_str(), O_RDONLY);
      ssize_t n = fd < 0 ? -1 : ::pread(fd, buf.data(), len, static_cast<off_t>(off));
      int e = errno;
      if (fd >= 0) ::close(fd);
      errno = e;
      // A view of the archive replaced by the mid-run commit may answer ESTALE (SEMANTICS.md 7).
      if (n < 0 && errno == ESTALE && p.find(".tensors/") != std::string::npos) {
        ++s.stale;
        continue;
      }
      if (n < 0) {
        s.fail(errno_text("read", p));
        continue;
      }
      size_t expect = static_cast<size_t>(std::min<uint64_t>(len, want.size() - off));
      if (static_cast<size_t>(n) != expect || buf.compare(0, expect, want, off, expect) != 0)
        s.fail(p + ": wrong bytes at " + std::to_string(off));
      ++s.reads;
    } else if (what < 8) {  // a frozen file, whole
      std::pair<std::string, std::string> f;
      {
        std::lock_guard<std::mutex> g(s.mu);
        if (s.frozen.empty()) continue;
        f = s.frozen[rng() % s.frozen.size()];
      }
      auto got = read_file(s.mp + "/" + f.first);
      if (!got) {
        s.fail(errno_text("read frozen", f.first));
        continue;
      }
      if (*got != f.second) s.fail(f.first + ": frozen file changed");
      ++s.reads;
    } else {  // list a writer's folder and read what is there; names may vanish meanwhile
      std::string dir = s.mp + "/stress/w" + std::to_string(rng() % kWriters) + (rng() % 2 ? "/sub" : "");
      std::error_code ec;
      std::vector<std::string> names;
      for (auto it = std::filesystem::directory_iterator(dir, ec); !ec && it != std::filesystem::directory_iterator();
           it.increment(ec))
        names.push_back(it->path().string());
      if (ec && ec.value() != ENOENT) s.fail("listing " + dir + ": " + ec.message());
      ++s.listings;
      for (const auto& n : names) {
        struct stat st {};
        if (::stat(n.c_str(), &st) != 0) {
          if (errno != ENOENT) s.fail(errno_text("stat", n));
          continue;
        }
        if (!S_ISREG(st.st_mode)) continue;
        auto got = read_file(n);
        if (!got && errno != ENOENT) s.fail(errno_text("read listed", n));
        if (!got) ++s.vanished;
      }
    }
  }
}

std::string copy_fixture(const TempDir& t, const std::string& name) {
  std::string dst = t / name;
  std::filesystem::copy_file(data_path("real/nemo/" + name), dst);
  return dst;
}

}  // namespace

TEST(WritableStress, WritersAndReadersThenCommitMatchesModel) {
  NEMOFS_REQUIRE_FUSE();
  int seconds = 6;
  if (const char* e = std::getenv("NEMOFS_STRESS_SECONDS")) seconds = std::max(1, std::atoi(e));
  TempDir tmp;
  std::string orig = data_path("real/nemo/asr_ctc.nemo");
  std::string nemo = copy_fixture(tmp, "asr_ctc.nemo");
  Mount m(nemo, tmp / "mnt");
  ASSERT_TRUE(m.ok()) << m.result().err;

  Shared s;
  s.mp = m.path();
  for (const auto& u : kUntouched) s.baseline[u] = read_whole_file(s.mp + "/" + u);
  for (const auto& e : std::filesystem::recursive_directory_iterator(s.mp + "/model_weights.ckpt.tensors"))
    if (e.is_regular_file()) {
      std::string rel = e.path().string().substr(s.mp.size() + 1);
      s.baseline[rel] = read_whole_file(e.path().string());
    }
  ASSERT_GT(s.baseline.size(), kUntouched.size()) << "model_weights.ckpt.tensors/ holds no file";

  std::vector<std::unique_ptr<Writer>> writers;
  for (int i = 0; i < kWriters; ++i)
    writers.push_back(std::make_unique<Writer>(s, i, kOwnedOriginal[i], read_whole_file(s.mp + "/" + kOwnedOriginal[i])));
  std::vector<std::thread> threads;
  for (auto& w : writers) threads.emplace_back([&w] { w->run(); });
  for (int i = 0; i < kReaders; ++i) threads.emplace_back([&s, i] { reader(s, 77 + i); });

  std::this_thread::sleep_for(std::chrono::milliseconds(seconds * 500));
  auto mid = run({nemofs_bin(), "commit", s.mp}, 300);
  std::this_thread::sleep_for(std::chrono::milliseconds(seconds * 500));
  s.stop = true;
  for (auto& t : threads) t.join();
  EXPECT_EQ(mid.status, 0) << "commit while busy: " << mid.out << mid.err;
  for (const auto& f : s.failures) ADD_FAILURE() << f;
  std::printf("writer steps %llu, reads %llu, listings %llu, vanished while listed %llu, ESTALE views %llu\n",
              static_cast<unsigned long long>(s.writes.load()), static_cast<unsigned long long>(s.reads.load()),
              static_cast<unsigned long long>(s.listings.load()), static_cast<unsigned long long>(s.vanished.load()),
              static_cast<unsigned long long>(s.stale.load()));
  EXPECT_GT(s.writes.load(), 20u);
  EXPECT_GT(s.reads.load(), 20u);

  // The mount shows the model before the commit too.
  std::map<std::string, std::string> model;
  std::set<std::string> ever;
  for (const auto& w : writers) {
    model.insert(w->files().begin(), w->files().end());
    ever.insert(w->ever().begin(), w->ever().end());
  }
  for (const auto& [rel, bytes] : model) {
    auto got = read_file(s.mp + "/" + rel);
    ASSERT_TRUE(got) << errno_text("final read", rel);
    EXPECT_EQ(*got, bytes) << rel;
  }

  auto u = m.umount();
  ASSERT_EQ(u.status, 0) << u.out << u.err;

  json spec;
  spec["untouched"] = json::array();
  for (const auto& n : kUntouched) spec["untouched"].push_back("./" + n);
  std::filesystem::create_directory(tmp / "expected");
  int k = 0;
  for (const auto& [rel, bytes] : model) {
    std::string f = tmp / ("expected/" + std::to_string(k++));
    std::ofstream(f, std::ios::binary) << bytes;
    spec["content"]["./" + rel] = {{"file", f}};
  }
  spec["absent"] = json::array();
  for (const auto& n : ever)
    if (!model.count(n)) spec["absent"].push_back("./" + n);
  spec["restore"] = true;
  std::string script = std::string(NEMOFS_TEST_DATA_DIR) + "/../mount/check_commit.py";
  auto c = run({"/usr/bin/python3", script, orig, nemo, spec.dump()}, 300);
  EXPECT_EQ(c.status, 0) << c.out << c.err;

  // Exactly the expected regular files: the originals left, and the writers' files.
  auto l = run({"/usr/bin/python3", "-c",
                "import sys, tarfile, json\n"
                "print(json.dumps(sorted(m.name for m in tarfile.open(sys.argv[1], 'r:') if m.isfile())))",
                nemo});
  ASSERT_EQ(l.status, 0) << l.err;
  std::set<std::string> want;
  for (const auto& [rel, b] : model) want.insert("./" + rel);
  auto o = run({"/usr/bin/python3", "-c",
                "import sys, tarfile, json\n"
                "print(json.dumps(sorted(m.name for m in tarfile.open(sys.argv[1], 'r:') if m.isfile())))",
                orig});
  ASSERT_EQ(o.status, 0) << o.err;
  for (const auto& n : json::parse(o.out)) {
    std::string name = n.get<std::string>();
    bool owned = false;
    for (const auto& x : kOwnedOriginal) owned = owned || name == "./" + x;
    if (!owned) want.insert(name);
  }
  std::set<std::string> got;
  for (const auto& n : json::parse(l.out)) got.insert(n.get<std::string>());
  EXPECT_EQ(got, want);
}
