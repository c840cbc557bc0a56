// The producer matrix: the bundled tree (tests/data/tar_tree/make_tree.sh: long and non-ASCII
// names, an empty file, folders, a file with holes, a hard link, a symlink) archived by every tar
// writer people use, each archive read by three readers that must agree on every member's name,
// type, size and bytes: nemofs (open_checkpoint, as a mount), CPython's tarfile (what NeMo uses;
// tests/data/tar_tree/tarfile_oracle.py) and libarchive (archive_read_*). Producers: GNU tar
// --format=gnu|oldgnu|posix|ustar|v7 with and without -S and each --sparse-version, bsdtar
// --format pax|ustar|gnutar|v7 and its default, CPython tarfile GNU/PAX/USTAR, and gzip of a few.
#include <gtest/gtest.h>

#include <archive.h>
#include <archive_entry.h>
#include <openssl/evp.h>
#include <stdlib.h>

#include <clocale>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "formats/core/errors.h"
#include "formats/detect/checkpoint.h"
#include "formats/tar/tar.h"

using namespace nemofs;

namespace {

const std::string kTreeDir = std::string(NEMOFS_TEST_DATA_DIR) + "/tar_tree";

struct Member {
  std::string type;  // file dir symlink hardlink other
  uint64_t size = 0;
  std::string sha256;
  bool operator==(const Member&) const = default;
};
using Listing = std::map<std::string, Member>;

std::string norm(std::string n) {
  while (n.rfind("./", 0) == 0) n = n.substr(2);
  while (!n.empty() && n.back() == '/') n.pop_back();
  return n;
}

class Sha {
 public:
  Sha() : ctx_(EVP_MD_CTX_new()) { EVP_DigestInit_ex(ctx_, EVP_sha256(), nullptr); }
  ~Sha() { EVP_MD_CTX_free(ctx_); }
  void update(const void* p, size_t n) { EVP_DigestUpdate(ctx_, p, n); }
  std::string hex() {
    unsigned char md[32];
    unsigned len = 0;
    EVP_DigestFinal_ex(ctx_, md, &len);
    static const char* d = "0123456789abcdef";
    std::string s;
    for (unsigned i = 0; i < len; ++i) {
      s += d[md[i] >> 4];
      s += d[md[i] & 15];
    }
    return s;
  }

 private:
  EVP_MD_CTX* ctx_;
};

int sh(const std::string& cmd) {
  int rc = std::system(("(" + cmd + ") >/dev/null 2>&1").c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : 255;
}

Listing read_libarchive(const std::string& path) {
  Listing out;
  std::unique_ptr<archive, int (*)(archive*)> a(archive_read_new(), archive_read_free);
  archive_read_support_filter_all(a.get());
  archive_read_support_format_all(a.get());
  if (archive_read_open_filename(a.get(), path.c_str(), 1 << 16) != ARCHIVE_OK) {
    ADD_FAILURE() << path << ": libarchive: " << archive_error_string(a.get());
    return out;
  }
  archive_entry* e = nullptr;
  int rc;
  while ((rc = archive_read_next_header(a.get(), &e)) == ARCHIVE_OK || rc == ARCHIVE_WARN) {
    const char* p = archive_entry_pathname_utf8(e);
    if (!p) p = archive_entry_pathname(e);
    std::string name = norm(p ? p : "");
    Member m;
    if (archive_entry_hardlink(e)) m.type = "hardlink";
    else if (archive_entry_filetype(e) == AE_IFREG) m.type = "file";
    else if (archive_entry_filetype(e) == AE_IFDIR) m.type = "dir";
    else if (archive_entry_filetype(e) == AE_IFLNK) m.type = "symlink";
    else m.type = "other";
    if (m.type == "file") {
      Sha sha;
      char buf[1 << 16];
      la_ssize_t n;
      while ((n = archive_read_data(a.get(), buf, sizeof buf)) > 0) {
        sha.update(buf, static_cast<size_t>(n));
        m.size += static_cast<uint64_t>(n);
      }
      if (n < 0) ADD_FAILURE() << path << ": libarchive data of " << name << ": " << archive_error_string(a.get());
      m.sha256 = sha.hex();
    }
    out[name] = m;
  }
  if (rc != ARCHIVE_EOF) ADD_FAILURE() << path << ": libarchive: " << archive_error_string(a.get());
  return out;
}

std::map<std::string, Listing> read_tarfile(const std::vector<std::string>& paths) {
  std::string cmd = "python3 " + kTreeDir + "/tarfile_oracle.py";
  for (const auto& p : paths) cmd += " '" + p + "'";
  std::map<std::string, Listing> out;
  FILE* f = ::popen(cmd.c_str(), "r");
  if (!f) return out;
  std::string text;
  char buf[65536];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) text.append(buf, n);
  EXPECT_EQ(::pclose(f), 0) << "tarfile_oracle.py failed";
  size_t pos = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    auto j = nlohmann::json::parse(text.substr(pos, nl - pos));
    Listing l;
    for (auto& [name, rec] : j["members"].items()) {
      Member m;
      m.type = rec["type"];
      if (m.type == "file") {
        m.size = rec["size"];
        m.sha256 = rec["sha256"];
      }
      l[name] = m;
    }
    if (j.contains("error")) ADD_FAILURE() << j["archive"] << ": tarfile: " << j["error"];
    out[j["archive"]] = l;
    pos = nl == std::string::npos ? text.size() : nl + 1;
  }
  return out;
}

// nemofs: files and folders as a mount shows them; links are not shown (one warning each).
Listing read_nemofs(const std::string& path, size_t* link_warnings) {
  Listing out;
  auto cp = open_checkpoint(path);
  cp.tree.walk([&](NodeId id, const Node& n) {
    if (id == Tree::kRoot) return;
    Member m;
    if (n.type == NodeType::Dir) {
      m.type = "dir";
    } else {
      m.type = "file";
      Sha sha;
      std::vector<char> buf(1 << 20);
      for (uint64_t off = 0; off < n.data->size();) {
        size_t got = n.data->read_at(off, buf.data(), buf.size());
        if (got == 0) break;
        sha.update(buf.data(), got);
        off += got;
      }
      m.size = n.data->size();
      m.sha256 = sha.hex();
    }
    out[cp.tree.path_of(id)] = m;
  });
  *link_warnings = 0;
  for (const auto& w : cp.warnings)
    if (w.find("link member not shown") != std::string::npos) ++*link_warnings;
  return out;
}

struct Producer {
  std::string name;
  std::string cmd;       // run in the scratch folder; the tree is ./tree, the archive ./<name>
  bool sparse = false;   // sparse.bin must come out as a sparse member
  bool partial = false;  // the format cannot hold every name (v7): tar exits 2, and says so
};

std::vector<Producer> producers() {
  std::vector<Producer> p;
  for (std::string f : {"gnu", "oldgnu", "posix", "ustar", "v7"}) {
    bool partial = f == "v7";
    p.push_back({"gnutar-" + f + ".tar", "tar --format=" + f + " -cf gnutar-" + f + ".tar -C tree .", false, partial});
    bool can_sparse = f == "gnu" || f == "oldgnu" || f == "posix";
    // (GNU tar refuses -S for ustar and v7: "GNU features wanted on incompatible archive format".)
    if (can_sparse)
      p.push_back({"gnutar-" + f + "-S.tar", "tar --format=" + f + " -S -cf gnutar-" + f + "-S.tar -C tree .", true, false});
    if (f == "posix" || f == "gnu")
      for (std::string v : {"0.0", "0.1", "1.0"}) {
        std::string n = "gnutar-" + f + "-S" + v + ".tar";
        p.push_back({n, "tar --format=" + f + " -S --sparse-version=" + v + " -cf " + n + " -C tree .", true, false});
      }
  }
  // bsdtar as the seed's repack workflow runs it: cd model_contents && tar cf ../model.nemo *
  for (std::string f : {"pax", "ustar", "gnutar", "v7"}) {
    bool sparse = f == "pax";  // libarchive's gnutar writer stores holes as data
    p.push_back({"bsdtar-" + f + ".tar", "cd tree && bsdtar --format " + f + " -cf ../bsdtar-" + f + ".tar *", sparse, f == "v7"});
  }
  p.push_back({"bsdtar-default.tar", "cd tree && bsdtar -cf ../bsdtar-default.tar *", true, false});
  for (std::string f : {"GNU", "PAX", "USTAR"})
    p.push_back({"tarfile-" + f + ".tar",
                 "python3 -c \"import tarfile,sys; t=tarfile.open(sys.argv[1],\\\"w\\\",format=tarfile." + f +
                     "_FORMAT); t.add(\\\"tree\\\", arcname=\\\".\\\"); t.close()\" tarfile-" + f + ".tar",
                 false, false});
  for (std::string src : {"gnutar-posix-S1.0.tar", "gnutar-gnu-S.tar", "bsdtar-default.tar", "tarfile-PAX.tar"})
    p.push_back({src + ".gz", "gzip -c " + src + " > " + src + ".gz", false, false});
  return p;
}

}  // namespace

TEST(TarMatrix, EveryProducerAgreesWithTarfileAndLibarchive) {
  std::setlocale(LC_ALL, "C.UTF-8");
  char tmpl[] = "/tmp/nemofs_tar_matrix_XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  struct Cleanup {
    std::string d;
    ~Cleanup() { std::filesystem::remove_all(d); }
  } cleanup{dir};
  ASSERT_EQ(sh(kTreeDir + "/make_tree.sh " + dir + "/tree"), 0);

  auto ps = producers();
  std::vector<std::string> paths;
  for (const auto& p : ps) {
    int rc = sh("cd " + dir + " && " + p.cmd);
    // GNU tar exits 2 when a name does not fit the format; bsdtar 1. The archive is still complete.
    if (p.partial) EXPECT_LE(rc, 2) << p.cmd;
    else EXPECT_EQ(rc, 0) << p.cmd;
    paths.push_back(dir + "/" + p.name);
  }
  auto oracle = read_tarfile(paths);
  for (size_t i = 0; i < ps.size(); ++i) {
    const Producer& p = ps[i];
    const std::string& path = paths[i];
    SCOPED_TRACE(p.name);
    Listing py = oracle[path];
    py.erase(".");
    py.erase("");
    Listing la = read_libarchive(path);
    la.erase(".");
    la.erase("");
    size_t links = 0;
    Listing nf;
    try {
      nf = read_nemofs(path, &links);
    } catch (const std::exception& e) {
      ADD_FAILURE() << "nemofs refused " << p.name << ": " << e.what();
      continue;
    }
    for (const auto& [name, m] : py)
      EXPECT_TRUE(la.count(name) && la[name] == m) << name << ": tarfile and libarchive disagree";
    for (const auto& [name, m] : la) EXPECT_TRUE(py.count(name)) << name << ": seen by libarchive only";
    ASSERT_TRUE(py.count("sparse.bin")) << "tarfile did not see sparse.bin";
    EXPECT_EQ(py["sparse.bin"].size, 3u * 1024 * 1024 + 5);
    size_t want_links = 0;
    for (const auto& [name, m] : py) {
      SCOPED_TRACE(name);
      if (m.type == "file" || m.type == "dir") {
        ASSERT_TRUE(nf.count(name)) << "not shown by nemofs";
        EXPECT_TRUE(nf[name] == m) << "nemofs: " << nf[name].type << " " << nf[name].size << " " << nf[name].sha256
                                   << ", tarfile: " << m.type << " " << m.size << " " << m.sha256;
      } else if (m.type == "symlink" || m.type == "hardlink") {
        ++want_links;
        EXPECT_FALSE(nf.count(name)) << "a link is shown";
      }
    }
    for (const auto& [name, m] : nf) {
      // Folders only implied by member paths are shown too; every file must be a tar file.
      if (m.type == "file") {
        EXPECT_TRUE(py.count(name) && py[name].type == "file") << name << ": shown by nemofs only";
      }
    }
    EXPECT_EQ(links, want_links);
    if (p.sparse) {
      auto idx = index_tar(FileSource(path));
      bool found = false;
      for (const auto& e : idx.entries)
        if (norm(e.name) == "sparse.bin") {
          found = true;
          EXPECT_TRUE(e.sparse) << "sparse.bin is not a sparse member";
          EXPECT_EQ(e.size, 3u * 1024 * 1024 + 5);
          EXPECT_LT(e.stored_size, 64u * 1024);
        }
      EXPECT_TRUE(found);
    }
  }
}
