#include "fs/overlay.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>
#include <stdexcept>
#include <system_error>

namespace nemofs {
namespace {

std::system_error sys_error(const std::string& what, int err) {
  return std::system_error(err, std::generic_category(), what);
}

void write_all(int fd, const std::string& body, const std::string& what) {
  size_t done = 0;
  while (done < body.size()) {
    ssize_t n = ::write(fd, body.data() + done, body.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw sys_error(what, errno);
    }
    done += static_cast<size_t>(n);
  }
}

uint64_t fnv(uint64_t h, const unsigned char* p, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 1099511628211ull;
  }
  return h;
}

}  // namespace

std::string dir_of(const std::string& path) {
  auto s = path.rfind('/');
  if (s == std::string::npos) return ".";
  if (s == 0) return "/";
  return path.substr(0, s);
}

std::string base_of(const std::string& path) {
  auto s = path.rfind('/');
  return s == std::string::npos ? path : path.substr(s + 1);
}

void fsync_dir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) throw sys_error(dir, errno);
  int rc = ::fsync(fd);
  int e = errno;
  ::close(fd);
  if (rc != 0) throw sys_error(dir + ": fsync", e);
}

nlohmann::json ArchiveIdentity::to_json() const {
  return {{"dev", dev}, {"ino", ino}, {"size", size}, {"mtime_ns", mtime_ns}, {"sample_hash", sample_hash}};
}

ArchiveIdentity ArchiveIdentity::from_json(const nlohmann::json& j) {
  ArchiveIdentity a;
  a.dev = j.at("dev").get<uint64_t>();
  a.ino = j.at("ino").get<uint64_t>();
  a.size = j.at("size").get<uint64_t>();
  a.mtime_ns = j.at("mtime_ns").get<int64_t>();
  a.sample_hash = j.at("sample_hash").get<uint64_t>();
  return a;
}

ArchiveIdentity ArchiveIdentity::of_fd(int fd) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) throw sys_error("fstat", errno);
  ArchiveIdentity a;
  a.dev = st.st_dev;
  a.ino = st.st_ino;
  a.size = static_cast<uint64_t>(st.st_size);
  a.mtime_ns = static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
  constexpr size_t kSample = 64 * 1024;
  std::vector<unsigned char> buf(kSample);
  uint64_t h = 1469598103934665603ull;
  for (uint64_t at : {uint64_t{0}, a.size > kSample ? a.size - kSample : uint64_t{0}}) {
    ssize_t n = ::pread(fd, buf.data(), kSample, static_cast<off_t>(at));
    if (n < 0) throw sys_error("read", errno);
    h = fnv(h, buf.data(), static_cast<size_t>(n));
  }
  a.sample_hash = h;
  return a;
}

std::string ArchiveIdentity::describe() const {
  return "size " + std::to_string(size) + ", inode " + std::to_string(ino) + ", mtime " +
         std::to_string(mtime_ns / 1000000000);
}

nlohmann::json Journal::to_json() const {
  nlohmann::json nodes_j = nlohmann::json::array();
  for (const auto& n : nodes) {
    nlohmann::json e{{"path", n.path}, {"dir", n.dir}, {"mode", n.mode}, {"mtime_ns", n.mtime_ns}};
    if (n.origin) e["origin"] = *n.origin;
    if (n.data >= 0) e["data"] = n.data;
    nodes_j.push_back(std::move(e));
  }
  nlohmann::json j{{"version", 1},
                   {"base", base.to_json()},
                   {"nodes", nodes_j},
                   {"deleted", deleted},
                   {"next_data", next_data}};
  if (committing) j["committing"] = committing->to_json();
  return j;
}

Journal Journal::from_json(const nlohmann::json& j) {
  try {
    if (j.at("version").get<int>() != 1) throw std::runtime_error("unknown journal version");
    Journal out;
    out.base = ArchiveIdentity::from_json(j.at("base"));
    if (j.contains("committing")) out.committing = ArchiveIdentity::from_json(j.at("committing"));
    for (const auto& e : j.at("nodes")) {
      JournalNode n;
      n.path = e.at("path").get<std::string>();
      n.dir = e.at("dir").get<bool>();
      n.mode = e.at("mode").get<uint32_t>() & 07777;
      n.mtime_ns = e.at("mtime_ns").get<int64_t>();
      if (e.contains("origin")) n.origin = e.at("origin").get<std::string>();
      if (e.contains("data")) n.data = e.at("data").get<int64_t>();
      out.nodes.push_back(std::move(n));
    }
    out.deleted = j.at("deleted").get<std::vector<std::string>>();
    out.next_data = j.at("next_data").get<int64_t>();
    return out;
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(std::string("malformed journal: ") + e.what());
  }
}

Overlay::Overlay(const std::string& archive_path)
    : dir_(dir_of(archive_path) + "/." + base_of(archive_path) + ".nemofs") {}

bool Overlay::exists() const {
  struct stat st {};
  return ::stat(dir_.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::optional<Journal> Overlay::load() const {
  std::string path = dir_ + "/journal.json";
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return std::nullopt;
    throw sys_error(path, errno);
  }
  std::string body;
  char buf[65536];
  while (true) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      ::close(fd);
      throw sys_error(path, e);
    }
    if (n == 0) break;
    body.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  auto j = nlohmann::json::parse(body, nullptr, false);
  if (j.is_discarded()) throw std::runtime_error(path + ": not valid JSON");
  try {
    return Journal::from_json(j);
  } catch (const std::exception& e) {
    throw std::runtime_error(path + ": " + e.what());
  }
}

void Overlay::ensure_dirs() {
  bool made = false;
  if (::mkdir(dir_.c_str(), 0700) == 0) made = true;
  else if (errno != EEXIST) throw sys_error("cannot create the overlay folder " + dir_, errno);
  std::string data = dir_ + "/data";
  if (::mkdir(data.c_str(), 0700) == 0) made = true;
  else if (errno != EEXIST) throw sys_error("cannot create " + data, errno);
  if (made) {
    fsync_dir(dir_);
    fsync_dir(dir_of(dir_));
  }
}

void Overlay::save(const Journal& j) {
  ensure_dirs();
  std::string path = dir_ + "/journal.json", tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) throw sys_error(tmp, errno);
  try {
    write_all(fd, j.to_json().dump(1) + "\n", tmp);
    if (::fsync(fd) != 0) throw sys_error(tmp + ": fsync", errno);
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  ::close(fd);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int e = errno;
    ::unlink(tmp.c_str());
    throw sys_error(path, e);
  }
  fsync_dir(dir_);
}

std::string Overlay::data_path(int64_t id) const { return dir_ + "/data/" + std::to_string(id); }

int Overlay::create_data(int64_t id) {
  ensure_dirs();
  std::string p = data_path(id);
  int fd = ::open(p.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0 && errno == EEXIST) {  // a crash leftover with this number: it is not referenced
    ::unlink(p.c_str());
    fd = ::open(p.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  }
  if (fd < 0) throw sys_error(p, errno);
  return fd;
}

int Overlay::open_data(int64_t id) const { return ::open(data_path(id).c_str(), O_RDWR | O_CLOEXEC); }

void Overlay::remove_data(int64_t id) { ::unlink(data_path(id).c_str()); }

void Overlay::remove_unreferenced(const std::vector<int64_t>& keep) {
  std::set<std::string> k;
  for (auto id : keep) k.insert(std::to_string(id));
  std::string data = dir_ + "/data";
  DIR* d = ::opendir(data.c_str());
  if (!d) return;
  std::vector<std::string> doomed;
  while (dirent* e = ::readdir(d)) {
    std::string n = e->d_name;
    if (n == "." || n == "..") continue;
    if (!k.count(n)) doomed.push_back(n);
  }
  ::closedir(d);
  for (const auto& n : doomed) ::unlink((data + "/" + n).c_str());
}

void Overlay::remove_all() {
  if (!exists()) return;
  // Journal first: from here on a crash leaves only unreferenced data, which is harmless.
  ::unlink((dir_ + "/journal.json").c_str());
  ::unlink((dir_ + "/journal.json.tmp").c_str());
  fsync_dir(dir_);
  remove_unreferenced({});
  ::rmdir((dir_ + "/data").c_str());
  ::rmdir(dir_.c_str());
  try {
    fsync_dir(dir_of(dir_));
  } catch (...) {
  }
}

}  // namespace nemofs
