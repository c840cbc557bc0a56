// The archive an edit session serves: one .nemo as indexed at mount time (or as a commit wrote it),
// with every member the namespace may show, by normalised path.
//
// A session has one current archive and, right after a commit while mounted, the previous ones
// (retired, kept open for a grace period: replies already handed an fd segment of them may still
// splice from it).
#pragma once

#include <ctime>
#include <memory>
#include <string>
#include <unordered_map>

#include "formats/core/byte_source.h"
#include "formats/core/io.h"
#include "formats/detect/checkpoint.h"
#include "formats/nemo/nemo.h"
#include "formats/tar/tar_writer.h"

namespace nemofs {

// One member of the archive, as the namespace starts from it.
struct BaseMember {
  int entry = -1;  // tar index position; -1: an implicit folder (no header of its own)
  bool dir = false;
  uint32_t mode = 0;
  int64_t mtime_ns = 0;
  SourcePtr data;  // files: the member's bytes (a range of the archive, or of its gzip stream)
};

struct Archive {
  std::string path;
  Checkpoint cp;
  std::shared_ptr<NemoArchive> nemo;
  int fd = -1;           // the archive file's fd (owned by the FileSource)
  SourcePtr stream;      // its tar stream: the file, or the GzipSource over it
  bool gzip = false;     // a gzip .nemo: commits write gzip again
  int64_t mtime_sec = 0;  // of the file: the mtime of nodes that have none of their own
  FileIdentity identity;  // with its sample hash
  TarStyle style;
  std::unordered_map<std::string, BaseMember> members;  // normalised path -> member ("" = root)

  // Takes the checkpoint of a .nemo (open_checkpoint) over. Throws SysError.
  static std::shared_ptr<const Archive> open(Checkpoint&& cp, const std::string& path);
};

using ArchivePtr = std::shared_ptr<const Archive>;

// A member's mtime in ns: the pax record keeps the fraction ("1795667985.5759032").
int64_t entry_mtime_ns(const TarEntry& e);

// Times in the namespace are ns since the epoch; the kernel's are timespecs (tv_nsec in [0, 1e9)).
timespec ns_to_timespec(int64_t ns);
inline int64_t timespec_to_ns(const timespec& ts) { return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec; }

}  // namespace nemofs
