#include "formats/detect/folder.h"

#include <dirent.h>
#include <fcntl.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <exception>
#include <memory>
#include <system_error>
#include <thread>

#include "formats/core/errors.h"
#include "formats/core/io.h"
#include "formats/nemo/nemo.h"
#include "formats/safetensors/safetensors_writer.h"
#include "formats/tar/tar.h"

namespace nemofs {
namespace {

// Whether a gzip stream starts with a tar header: `.gz` logs and data files beside checkpoints are
// common, and each would otherwise get a view that fails on first access. Inflating the first
// block costs one 64 KiB read at most.
bool gzip_holds_tar(int fd) {
  unsigned char in[64 * 1024];
  size_t n = io::pread_full(fd, in, sizeof in, 0, "sniff");
  unsigned char out[512] = {};
  z_stream zs{};
  if (inflateInit2(&zs, 16 + MAX_WBITS) != Z_OK) return false;
  zs.next_in = in;
  zs.avail_in = static_cast<uInt>(n);
  zs.next_out = out;
  zs.avail_out = sizeof out;
  int rc = Z_OK;
  while (zs.avail_out > 0 && rc == Z_OK) rc = inflate(&zs, Z_NO_FLUSH);
  bool full = zs.avail_out == 0;
  inflateEnd(&zs);
  if (!full) return false;
  return std::memcmp(out + 257, "ustar", 5) == 0 || tar_checksum_ok(out);
}

// The first bytes of a file standing for the whole: sniff() bounds a safetensors header by the
// source's size, so that is the real file's.
class HeadSource final : public ByteSource {
 public:
  HeadSource(const unsigned char* head, size_t n, uint64_t size) : head_(head), n_(n), size_(size) {}
  uint64_t size() const override { return size_; }
  size_t read_at(uint64_t off, void* buf, size_t len) const override {
    if (off >= n_) return 0;
    size_t k = std::min<size_t>(len, n_ - static_cast<size_t>(off));
    std::memcpy(buf, head_ + off, k);
    return k;
  }

 private:
  const unsigned char* head_;
  size_t n_;
  uint64_t size_;
};

}  // namespace

Format sniff_folder_entry(const std::string& path, const struct stat& st) {
  try {
    if (S_ISDIR(st.st_mode)) return sniff_dir_path(path);
    if (!S_ISREG(st.st_mode) || st.st_size == 0) return Format::Unknown;
    // O_NONBLOCK: a file swapped for a fifo after the stat must not hang the listing.
    UniqueFd fd = io::open(path, O_RDONLY | O_NONBLOCK);
    unsigned char head[512] = {};
    size_t n = io::pread_full(fd.get(), head, sizeof head, 0, "sniff");
    Format f = sniff(HeadSource(head, n, static_cast<uint64_t>(st.st_size)));
    if (f == Format::GzipTar && !gzip_holds_tar(fd.get())) return Format::Unknown;
    return f;
  } catch (const std::exception&) {
    return Format::Unknown;  // unreadable: shown as a file without a view
  }
}

std::vector<FolderEntry> list_folder(const std::string& dir, const SniffFn& sniff, std::vector<std::string>* warnings) {
  std::unique_ptr<DIR, int (*)(DIR*)> d(::opendir(dir.c_str()), ::closedir);
  if (!d) throw SysError(errno, dir + ": cannot list: " + std::strerror(errno));
  std::vector<FolderEntry> out;
  errno = 0;
  while (const dirent* e = ::readdir(d.get())) {
    std::string name = e->d_name;
    if (name == "." || name == "..") continue;
    FolderEntry fe;
    fe.name = name;
    if (::fstatat(::dirfd(d.get()), e->d_name, &fe.st, AT_SYMLINK_NOFOLLOW) != 0) continue;  // gone meanwhile
    std::string path = dir + "/" + name;
    if (S_ISREG(fe.st.st_mode)) {
      fe.kind = FolderEntry::Kind::File;
      fe.format = sniff(path, fe.st);
    } else if (S_ISDIR(fe.st.st_mode)) {
      fe.kind = FolderEntry::Kind::Dir;
      fe.format = sniff(path, fe.st);
    } else if (S_ISLNK(fe.st.st_mode)) {
      fe.kind = FolderEntry::Kind::Symlink;
      // A link to a checkpoint file gets a view; links to folders do not (a link to an ancestor
      // would make the tree endless).
      struct stat target {};
      if (::stat(path.c_str(), &target) == 0 && S_ISREG(target.st_mode)) fe.format = sniff(path, target);
    } else {
      continue;  // sockets, fifos, devices: not shown
    }
    out.push_back(std::move(fe));
    errno = 0;
  }
  if (errno != 0) throw SysError(errno, dir + ": cannot list: " + std::strerror(errno));
  std::sort(out.begin(), out.end(), [](const FolderEntry& a, const FolderEntry& b) { return a.name < b.name; });
  std::vector<FolderEntry> views;
  for (const auto& fe : out) {
    if (fe.format == Format::Unknown) continue;
    std::string vname = fe.name + kViewSuffix;
    bool taken = std::binary_search(out.begin(), out.end(), vname,
                                    [](const auto& a, const auto& b) {
                                      if constexpr (std::is_same_v<std::decay_t<decltype(a)>, std::string>)
                                        return a < b.name;
                                      else
                                        return a.name < b;
                                    });
    if (taken) {
      if (warnings)
        warnings->push_back(dir + "/" + fe.name + ": no .tensors view: an entry named '" + vname + "' already exists");
      continue;
    }
    FolderEntry v;
    v.name = std::move(vname);
    v.kind = FolderEntry::Kind::View;
    v.format = fe.format;
    v.of = fe.name;
    if (fe.kind == FolderEntry::Kind::Symlink) ::stat((dir + "/" + fe.name).c_str(), &v.st);
    else v.st = fe.st;
    views.push_back(std::move(v));
  }
  if (!views.empty()) {
    out.insert(out.end(), std::make_move_iterator(views.begin()), std::make_move_iterator(views.end()));
    std::sort(out.begin(), out.end(), [](const FolderEntry& a, const FolderEntry& b) { return a.name < b.name; });
  }
  return out;
}

bool is_plain_folder(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) return false;
  try {
    return sniff_dir_path(path) == Format::Unknown;
  } catch (const SysError&) {
    return false;  // unreadable: open_checkpoint reports it
  }
}

bool checkpoint_object_name(std::string_view name) {
  for (std::string_view ext : {".nemo", ".ckpt", ".pt", ".pth", ".bin", ".safetensors"})
    if (name.size() > ext.size() && name.compare(name.size() - ext.size(), ext.size(), ext) == 0) return true;
  return false;
}

Checkpoint open_folder_files(const std::shared_ptr<const FileSet>& set, bool safetensors_views, unsigned threads) {
  struct Keep {
    std::shared_ptr<const FileSet> set;
    std::vector<std::shared_ptr<void>> views;
  };
  auto keep = std::make_shared<Keep>();
  keep->set = set;
  Checkpoint cp;
  cp.format = Format::Folder;
  Tree& t = cp.tree;
  for (const auto& rel : set->list()) {
    // Object keys are any bytes: a key that is no relative path (`..`, `.`, empty components) or
    // that a folder already has (`a` beside `a/b`) is left out with a warning.
    bool bad = false;
    for (size_t i = 0; i <= rel.size();) {
      size_t j = std::min(rel.find('/', i), rel.size());
      std::string_view comp(rel.data() + i, j - i);
      if (comp.empty() || comp == "." || comp == "..") bad = true;
      i = j + 1;
    }
    if (bad) {
      cp.warnings.push_back(rel + ": not shown (not a relative path)");
      continue;
    }
    try {
      size_t slash = rel.rfind('/');
      NodeId parent = slash == std::string::npos ? Tree::kRoot : t.mkdirs(std::string_view(rel).substr(0, slash));
      std::string leaf = slash == std::string::npos ? rel : rel.substr(slash + 1);
      if (t.lookup(parent, leaf)) throw FormatError("folder", "a folder of that name exists");
      t.add_file(parent, leaf, set->open(rel));
    } catch (const FormatError&) {
      cp.warnings.push_back(rel + ": not shown (a file and a folder of the same name)");
    }
  }
  // Views, in tree order; collected first (grafting adds nodes).
  std::vector<NodeId> candidates;
  t.walk([&](NodeId id, const Node& n) {
    if (id == Tree::kRoot) return;
    if (n.type == NodeType::File ? checkpoint_object_name(n.name) && n.data->size() > 0 : names_checkpoint_folder(t, id))
      candidates.push_back(id);
  });
  // Built in parallel (each view's requests are independent: a run's folder of N checkpoints
  // costs about N / connections round trips of index requests, not N), grafted in tree order.
  struct Job {
    NodeId id;
    std::string path;
    SourcePtr data;  // a file candidate; null for a folder
    bool skip = false;
    Checkpoint v;
    std::string error;          // a view left out, why
    std::exception_ptr fatal;   // the server failed us, or memory ran out: the mount fails
  };
  std::vector<Job> jobs;
  for (NodeId id : candidates) {
    const Node& n = t.node(id);
    Job j;
    j.id = id;
    j.path = t.path_of(id);
    if (n.type == NodeType::File) j.data = n.data;
    jobs.push_back(std::move(j));
  }
  auto build = [&](Job& j) {
    try {
      if (j.data) {
        if (sniff(*j.data) == Format::Unknown) {  // named like one, but is not
          j.skip = true;
          return;
        }
        j.v = open_checkpoint_source(j.data);
      } else {
        j.v = open_checkpoint_files(TreeFileSet(t, j.id));  // the tree is not changed until every job is done
      }
      if (safetensors_views)
        add_safetensors_views(j.v.tree, j.v.format == Format::Tar || j.v.format == Format::GzipTar, j.v.warnings);
    } catch (const std::bad_alloc&) {
      j.fatal = std::current_exception();
    } catch (const SysError&) {
      j.fatal = std::current_exception();  // a request failed (not the file): as for a single object
    } catch (const std::exception& e) {
      j.error = e.what();
    }
  };
  std::atomic<size_t> next{0};
  auto work = [&] {
    for (size_t i; (i = next.fetch_add(1)) < jobs.size();) build(jobs[i]);
  };
  std::vector<std::thread> workers;
  const size_t nthreads = std::min<size_t>(jobs.size(), std::max(1u, threads));
  try {
    for (size_t i = 1; i < nthreads; ++i) workers.emplace_back(work);
  } catch (const std::system_error&) {
    // Fewer threads: the ones running and this one share the work.
  }
  work();
  for (auto& w : workers) w.join();
  for (auto& j : jobs) {
    if (j.fatal) std::rethrow_exception(j.fatal);
    if (j.skip) continue;
    if (!j.error.empty()) {
      cp.warnings.push_back(j.path + ": no .tensors view: " + j.error);
      continue;
    }
    if (!graft_view(t, j.id, j.v.tree, cp.warnings, "an entry")) continue;
    for (const auto& w : j.v.warnings) cp.warnings.push_back(j.path + ": " + w);
    if (j.v.keepalive) keep->views.push_back(std::move(j.v.keepalive));
    j.v = Checkpoint{};  // the tree is copied in: its own copy goes now
  }
  cp.keepalive = keep;
  return cp;
}

}  // namespace nemofs
