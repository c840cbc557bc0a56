#include "fs/edit/overlay.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <functional>
#include <set>

#include "formats/core/errors.h"

namespace nemofs {

nlohmann::json identity_to_json(const FileIdentity& a) {
  return {{"dev", a.dev}, {"ino", a.ino}, {"size", a.size}, {"mtime_ns", a.mtime_ns}, {"sample_hash", a.sample_hash}};
}

FileIdentity identity_from_json(const nlohmann::json& j) {
  FileIdentity a;
  a.dev = j.at("dev").get<uint64_t>();
  a.ino = j.at("ino").get<uint64_t>();
  a.size = j.at("size").get<uint64_t>();
  a.mtime_ns = j.at("mtime_ns").get<int64_t>();
  a.sample_hash = j.at("sample_hash").get<uint64_t>();
  return a;
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
                   {"base", identity_to_json(base)},
                   {"nodes", nodes_j},
                   {"deleted", deleted},
                   {"next_data", next_data}};
  if (committing) j["committing"] = identity_to_json(*committing);
  return j;
}

Journal Journal::from_json(const nlohmann::json& j) {
  try {
    if (j.at("version").get<int>() != 1) throw SysError(EINVAL, "unknown journal version");
    Journal out;
    out.base = identity_from_json(j.at("base"));
    if (j.contains("committing")) out.committing = identity_from_json(j.at("committing"));
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
    throw SysError(EINVAL, std::string("malformed journal: ") + e.what());
  }
}

Overlay::Overlay(const std::string& archive_path)
    : dir_(io::dir_of(archive_path) + "/." + io::base_of(archive_path) + ".nemofs") {}

bool Overlay::exists() const {
  struct stat st {};
  return ::stat(dir_.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::optional<Journal> Overlay::load() const {
  std::string path = dir_ + "/journal.json";
  auto body = io::read_file(path);
  if (!body) return std::nullopt;
  auto j = nlohmann::json::parse(*body, nullptr, false);
  if (j.is_discarded()) throw SysError(EINVAL, path + ": not valid JSON");
  try {
    return Journal::from_json(j);
  } catch (const SysError& e) {
    throw SysError(e.err(), path + ": " + e.what());
  }
}

void Overlay::ensure_dirs() {
  bool made = io::mkdir(dir_, 0700);
  made |= io::mkdir(dir_ + "/data", 0700);
  if (made) {
    io::fsync_dir(dir_);
    io::fsync_dir(io::dir_of(dir_));
  }
}

void Overlay::save(const Journal& j) {
  ensure_dirs();
  io::replace_file(dir_ + "/journal.json", j.to_json().dump(1) + "\n");
}

std::string Overlay::data_path(int64_t id) const { return dir_ + "/data/" + std::to_string(id); }

UniqueFd Overlay::create_data(int64_t id) {
  ensure_dirs();
  std::string p = data_path(id);
  // A crash leftover with this number is not referenced by the journal: it goes.
  io::unlink(p);
  return io::open(p, O_RDWR | O_CREAT | O_EXCL, 0600);
}

std::optional<UniqueFd> Overlay::open_data(int64_t id) const { return io::open_if_exists(data_path(id), O_RDWR); }

void Overlay::remove_data(int64_t id) { io::unlink(data_path(id)); }

namespace {
// Names in `dir` for which `doomed` says yes.
std::vector<std::string> names_in(const std::string& dir, const std::function<bool(const std::string&)>& doomed) {
  std::vector<std::string> out;
  DIR* d = ::opendir(dir.c_str());
  if (!d) return out;
  while (dirent* e = ::readdir(d)) {
    std::string n = e->d_name;
    if (n != "." && n != ".." && doomed(n)) out.push_back(n);
  }
  ::closedir(d);
  return out;
}
}  // namespace

void Overlay::remove_unreferenced(const std::vector<int64_t>& keep) {
  std::set<std::string> k;
  for (auto id : keep) k.insert(std::to_string(id));
  std::string data = dir_ + "/data";
  for (const auto& n : names_in(data, [&](const std::string& n) { return !k.count(n); })) io::unlink(data + "/" + n);
}

void Overlay::remove_all() {
  if (!exists()) return;
  // Journal first: from here on a crash leaves only unreferenced data, which is harmless.
  io::unlink(dir_ + "/journal.json", true);
  io::fsync_dir(dir_);
  // A journal replacement a crash interrupted leaves its temporary file.
  for (const auto& n : names_in(dir_, [](const std::string& n) { return n.rfind("journal.json.tmp", 0) == 0; }))
    io::unlink(dir_ + "/" + n);
  remove_unreferenced({});
  ::rmdir((dir_ + "/data").c_str());
  ::rmdir(dir_.c_str());
  try {
    io::fsync_dir(io::dir_of(dir_));
  } catch (const SysError&) {
    // The overlay is already gone from the journal's point of view; a lost rmdir is harmless.
  }
}

}  // namespace nemofs
