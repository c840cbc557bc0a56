// `nemofs export SOURCE DEST [--select PATH]`: one folder of the tree a mount shows, written as a
// single .safetensors file (formats/safetensors/safetensors_writer.h lays it out).
//
// Streaming in constant memory: the file is walked in windows of kWindow bytes, each split into
// pieces (ByteSource::pieces). Spans of a real file go through copy_file_range (io::copy_range: the
// kernel copies, or shares extents on a reflink filesystem), holes of sparse members are left as
// holes, and everything else (headers, inflated gzip bytes, DCP tensors assembled from chunks) goes
// kBuffer bytes at a time: copy_file_range when that span lies in one file, else one buffer.
// To stdout (DEST "-"), file spans go through sendfile(2) instead.
//
// DEST is written as a temp file in its folder, fdatasync'ed (unless --no-sync) and renamed over
// DEST: a reader never sees a partial file, and on any failure (ENOSPC, an I/O error, Ctrl-C) the
// temp file is removed and DEST is as it was. The sync costs the time the disk takes to write the
// file (the export then takes about as long as cp + sync); --no-sync returns as cp does.
#include <fcntl.h>
#include <signal.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <climits>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "formats/core/errors.h"
#include "formats/core/io.h"
#include "formats/detect/checkpoint.h"
#include "formats/safetensors/safetensors_writer.h"
#include "formats/remote/remote.h"
#include "fs/cli/cli.h"

namespace nemofs {
namespace {

constexpr uint64_t kWindow = 64ull << 20;
constexpr size_t kBuffer = 4u << 20;

volatile std::sig_atomic_t g_interrupted = 0;
extern "C" void on_interrupt(int) { g_interrupted = 1; }

const char* kUsageLine = "usage: nemofs export SOURCE DEST [--select PATH] [--no-sync]   (DEST - writes to stdout)\n";

std::string human(uint64_t b) {
  char buf[32];
  if (b >= (1ull << 30)) std::snprintf(buf, sizeof buf, "%.2f GiB", static_cast<double>(b) / (1ull << 30));
  else std::snprintf(buf, sizeof buf, "%.1f MiB", static_cast<double>(b) / (1ull << 20));
  return buf;
}

// "N of M" on stderr when it is a terminal and the export has run for more than a second.
class Progress {
 public:
  explicit Progress(uint64_t total) : total_(total), tty_(::isatty(STDERR_FILENO) == 1), start_(clock::now()) {}
  ~Progress() { clear(); }
  void clear() {
    if (shown_) std::fputs("\r\033[K", stderr);
    shown_ = false;
  }
  void update(uint64_t done) {
    if (!tty_) return;
    auto now = clock::now();
    if (now - start_ < std::chrono::seconds(1) || now - last_ < std::chrono::milliseconds(200)) return;
    last_ = now;
    shown_ = true;
    int pct = total_ ? static_cast<int>(100.0 * static_cast<double>(done) / static_cast<double>(total_)) : 100;
    std::fprintf(stderr, "\rnemofs export: %s of %s (%d%%)\033[K", human(done).c_str(), human(total_).c_str(), pct);
    std::fflush(stderr);
  }

 private:
  using clock = std::chrono::steady_clock;
  uint64_t total_;
  bool tty_;
  bool shown_ = false;
  clock::time_point start_, last_{};
};

void check_interrupt() {
  if (g_interrupted) throw SysError(EINTR, "interrupted");
}

// The bytes just copied from a file span are that file's as it was indexed: the span's guard
// (one fstat) tells a source truncated or rewritten during the copy, which the copy itself may not
// see (a same-size rewrite, or a cut inside the last page).
void check_copied(const FileRange& fr) {
  if (!fr.guard) return;
  try {
    fr.guard->check();
  } catch (const SysError&) {
    throw SysError(EIO, fr.guard->path() + " changed during the export");
  }
}

// Writes all of `img` to `out`. `regular`: out is a fresh regular file written at offsets (holes
// stay holes, file spans are copy_file_range'd); otherwise a stream (pipe, terminal, socket).
void stream(const ByteSource& img, int out, bool regular, Progress& progress) {
  std::unique_ptr<char[]> buf(new char[kBuffer]);
  const uint64_t total = img.size();
  std::vector<Piece> pieces;
  uint64_t pos = 0;
  auto write_mem = [&](const char* p, size_t n, uint64_t at) {
    if (regular) io::pwrite_spliced(out, p, n, at, "write");
    else io::write_full(out, p, n, "write");
  };
  while (pos < total) {
    uint64_t win = std::min<uint64_t>(kWindow, total - pos);
    pieces.clear();
    img.pieces(pos, win, pieces);
    uint64_t at = pos;
    for (const auto& p : pieces) {
      check_interrupt();
      if (p.file) {
        if (regular) {
          if (io::copy_range(p.file->fd, p.file->offset, out, at, p.len, "copy") != p.len)
            throw SysError(EIO, img.describe() + ": a source file shrank during the export");
          check_copied(*p.file);
        } else {
          uint64_t done = 0;
          bool kernel = true;
          while (done < p.len) {
            check_interrupt();
            if (kernel) {
              off_t in_off = static_cast<off_t>(p.file->offset + done);
              size_t want = static_cast<size_t>(std::min<uint64_t>(p.len - done, 1ull << 30));
              ssize_t n = ::sendfile(out, p.file->fd, &in_off, want);
              if (n > 0) {
                done += static_cast<uint64_t>(n);
                continue;
              }
              if (n == 0) throw SysError(EIO, img.describe() + ": a source file shrank during the export");
              if (errno == EINTR) continue;
              if (errno != EINVAL && errno != ENOSYS) throw_sys(errno, "write");
              kernel = false;  // e.g. an O_APPEND stdout: copy through the buffer
            }
            size_t want = static_cast<size_t>(std::min<uint64_t>(p.len - done, kBuffer));
            if (io::pread_full(p.file->fd, buf.get(), want, p.file->offset + done, "read") != want)
              throw SysError(EIO, img.describe() + ": a source file shrank during the export");
            io::write_full(out, buf.get(), want, "write");
            done += want;
          }
          check_copied(*p.file);
        }
      } else if (p.zero && regular) {
        // A hole: the final ftruncate gives the file its size; nothing to write.
      } else if (p.data) {
        write_mem(p.data, static_cast<size_t>(p.len), at);  // in memory already (a remote read-ahead)
      } else {
        for (uint64_t done = 0; done < p.len;) {
          check_interrupt();
          size_t want = static_cast<size_t>(std::min<uint64_t>(p.len - done, kBuffer));
          // A source that assembles its bytes (a DCP tensor from its shards' chunks) may still
          // hold this buffer's span in one real file: let the kernel copy it.
          if (regular && !p.zero) {
            if (auto fr = img.file_range(at + done, want)) {
              if (io::copy_range(fr->fd, fr->offset, out, at + done, want, "copy") != want)
                throw SysError(EIO, img.describe() + ": a source file shrank during the export");
              check_copied(*fr);
              done += want;
              continue;
            }
          }
          if (p.zero) std::memset(buf.get(), 0, want);
          else if (img.read_at(at + done, buf.get(), want) != want)
            throw SysError(EIO, img.describe() + ": short read at byte " + std::to_string(at + done));
          write_mem(buf.get(), want, at + done);
          done += want;
        }
      }
      at += p.len;
      progress.update(at);
    }
    pos += win;
  }
  if (regular) io::ftruncate(out, total, "truncate");
}

int open_source(const std::string& url_or_path, Checkpoint& cp) {
  const bool url = remote::is_remote_url(url_or_path);
  // A URL is shown without its query string or credentials.
  const std::string source = url ? remote::display_url(url_or_path) : url_or_path;
  try {
    cp = url ? remote::open_remote_checkpoint(url_or_path) : open_checkpoint(url_or_path);
    return kExitOk;
  } catch (const FormatError& e) {
    std::fprintf(stderr, "nemofs: %s: %s\n", source.c_str(), e.what());
    return kExitSourceInvalid;
  } catch (const SysError& e) {
    std::fprintf(stderr, "nemofs: %s\n", e.what());
    return kExitSourceUnreadable;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "nemofs: %s: %s\n", source.c_str(), e.what());
    return kExitSourceInvalid;
  }
}

}  // namespace

int cmd_export(const std::vector<std::string>& args) {
  std::vector<std::string> pos;
  std::optional<std::string> select;
  bool sync = true;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--select") {
      if (i + 1 >= args.size()) {
        std::fprintf(stderr, "nemofs export: --select needs a PATH\n");
        return kExitUsage;
      }
      select = args[++i];
    } else if (a.rfind("--select=", 0) == 0) {
      select = a.substr(9);
    } else if (a == "--no-sync") {
      sync = false;
    } else if (a == "-h" || a == "--help") {
      std::fputs(kUsageLine, stdout);
      return kExitOk;
    } else if (a == "--") {
      for (++i; i < args.size(); ++i) pos.push_back(args[i]);
    } else if (a.size() > 1 && a[0] == '-') {
      std::fprintf(stderr, "nemofs export: unknown option '%s'\n", a.c_str());
      return kExitUsage;
    } else {
      pos.push_back(a);
    }
  }
  if (pos.size() != 2) {
    std::fputs(kUsageLine, stderr);
    return kExitUsage;
  }
  const std::string& source_arg = pos[0];
  const std::string source = remote::is_remote_url(source_arg) ? remote::display_url(source_arg) : source_arg;
  const std::string& dest = pos[1];
  const bool to_stdout = dest == "-";
  struct stat dst {};
  bool dest_exists = !to_stdout && ::stat(dest.c_str(), &dst) == 0;
  if (dest_exists && S_ISDIR(dst.st_mode)) {
    std::fprintf(stderr, "nemofs export: %s: is a folder (name the .safetensors file to write)\n", dest.c_str());
    return kExitUsage;
  }
  if (dest_exists) {
    struct stat sst {};
    if (::stat(source.c_str(), &sst) == 0 && sst.st_dev == dst.st_dev && sst.st_ino == dst.st_ino) {
      std::fprintf(stderr, "nemofs export: %s: DEST is the SOURCE itself\n", dest.c_str());
      return kExitUsage;
    }
  }

  Checkpoint cp;
  if (int rc = open_source(source_arg, cp)) return rc;
  for (const auto& w : cp.warnings) std::fprintf(stderr, "nemofs: %s: warning: %s\n", source.c_str(), w.c_str());

  std::shared_ptr<SafetensorsImage> img;
  try {
    NodeId dir;
    if (select) {
      try {
        dir = select_export_dir(cp.tree, *select);
      } catch (const FormatError& e) {
        std::fprintf(stderr, "nemofs export: %s: %s\n", source.c_str(), e.detail().c_str());
        return kExitUsage;
      }
    } else {
      dir = default_export_dir(cp.tree, cp.format == Format::Tar || cp.format == Format::GzipTar);
    }
    img = make_safetensors(tree_tensors(cp.tree, dir), default_safetensors_metadata());
    if (img->tensors().empty())
      std::fprintf(stderr, "nemofs export: %s: warning: no tensors under the selected folder\n", source.c_str());
  } catch (const FormatError& e) {
    std::fprintf(stderr, "nemofs export: %s: %s\n", source.c_str(), e.detail().c_str());
    return kExitSourceInvalid;
  }

  struct sigaction sa {};
  sa.sa_handler = on_interrupt;
  sigemptyset(&sa.sa_mask);
  struct sigaction old_int {}, old_term {}, old_hup {};
  ::sigaction(SIGINT, &sa, &old_int);
  ::sigaction(SIGTERM, &sa, &old_term);
  ::sigaction(SIGHUP, &sa, &old_hup);
  // SIGPIPE keeps its default: `nemofs export X - | head` ends quietly, as cat would.

  Progress progress(img->size());
  std::string tmp;
  int rc = kExitOk;
  try {
    if (to_stdout) {
      stream(*img, STDOUT_FILENO, false, progress);
    } else {
      std::string dir = io::dir_of(dest);
      UniqueFd fd = io::create_temp(dir + "/." + io::base_of(dest) + ".nemofs-export-", tmp);
      stream(*img, fd.get(), true, progress);
      mode_t mask = ::umask(0);
      ::umask(mask);
      mode_t mode = dest_exists && S_ISREG(dst.st_mode) ? (dst.st_mode & 07777) : (0666 & ~mask);
      if (::fchmod(fd.get(), mode) != 0) throw_sys(errno, tmp + ": chmod");
      // --no-sync: what cp does. The rename still hides a partial file from readers and on
      // failures; only a crash (power loss) can leave DEST short, as it can a cp.
      if (sync) io::fdatasync(fd.get(), tmp + ": fdatasync");
      io::rename(tmp, dest);
      tmp.clear();
      if (sync) io::fsync_dir(dir);
    }
  } catch (const std::exception& e) {
    if (!tmp.empty()) {
      try {
        io::unlink(tmp);
      } catch (...) {
      }
    }
    progress.clear();
    bool intr = g_interrupted;
    if (to_stdout)
      std::fprintf(stderr, "nemofs export: %s: %s\n", intr ? "interrupted" : "writing to stdout failed", e.what());
    else
      std::fprintf(stderr, "nemofs export: %s: %s; %s\n", dest.c_str(), intr ? "interrupted" : e.what(),
                   dest_exists ? "the existing file is unchanged" : "nothing was written");
    rc = kExitCommitFailed;
  }
  ::sigaction(SIGINT, &old_int, nullptr);
  ::sigaction(SIGTERM, &old_term, nullptr);
  ::sigaction(SIGHUP, &old_hup, nullptr);
  return rc;
}

}  // namespace nemofs
