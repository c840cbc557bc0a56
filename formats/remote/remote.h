// Remote sources (SEMANTICS "Remote sources"): checkpoints read by byte ranges over HTTP(S), from
// S3-compatible object stores and from the Hugging Face Hub, through a local block cache.
//
//   http://HOST/PATH, https://HOST/PATH   one file
//   s3://BUCKET/KEY                        one object (signed with SigV4: AWS_* variables, AWS_PROFILE)
//   s3://BUCKET/PREFIX/                    a folder (ListObjectsV2): a DCP or Hugging Face folder,
//                                          else a folder of checkpoints
//   hf://ORG/REPO[@REV]/PATH               one file of a Hub repository (HF_TOKEN, HF_ENDPOINT)
//   hf://ORG/REPO[@REV]                    the whole repository (tree API): a Hugging Face folder,
//                                          else a folder of checkpoints
//
// Every object is pinned when it is opened (its ETag; on the Hub the X-Linked-Etag / X-Repo-Commit
// of the resolve redirect, never the CDN's) and every range read checks it (If-Match, and the
// response's ETag and total size): a replaced object answers EIO from then on, never bytes of two
// versions. Bytes come through the block cache (block_cache.h): 2 MiB blocks on disk keyed by the
// object's name and identity, shared by every mount of the machine's user, with a size cap.
//
// This library is FUSE-free; the CLI dispatches URLs here instead of to open_checkpoint(path).
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "formats/detect/checkpoint.h"

namespace nemofs::remote {

struct Options {
  // The block cache: $XDG_CACHE_HOME/nemofs/remote, else ~/.cache/nemofs/remote.
  std::string cache_dir;
  uint64_t cache_size = 4ull << 30;  // -o cache_size= (bytes; K/M/G suffixes)
  int retries = 5;                   // -o retries=
  long timeout_s = 20;               // -o timeout=: no byte for this long is a timeout
  unsigned connections = 8;          // -o connections=: parallel requests (per process)
};

// Set once before the first remote open (a later call changes nothing that is already open).
void configure(const Options& o);
const Options& options();

bool is_remote_url(const std::string& s);
// The URL as messages and status show it (no query string, no credentials).
std::string display_url(const std::string& url);

// Opens URL and builds its tree as open_checkpoint does for a path. Throws SysError (cannot be
// read: 404 -> ENOENT, 401/403 -> EACCES, DNS -> EHOSTUNREACH, refused -> ECONNREFUSED, TLS ->
// EPROTO; one line naming the URL and the reason) or FormatError (not a checkpoint).
// A folder (S3 prefix, Hub repository) that is not itself one DCP or Hugging Face checkpoint is a
// folder of checkpoints (Format::Folder): its objects, and a `<name>.tensors/` view beside each
// checkpoint, every view built now; `safetensors_views` (-o safetensors) gives each view its
// `model.safetensors` as a mount of that checkpoint alone would (the caller adds them itself for
// every other format).
Checkpoint open_remote_checkpoint(const std::string& url, bool safetensors_views = false);

// Counters of this process, for `nemofs status`: {"url", "requests", "bytes_fetched",
// "cache_hits", "cache_misses", "errors", "last_error"}.
nlohmann::json stats(const std::string& url);

// Told once per object that changed under the mount (reads of it answer EIO from then on).
using ChangeReporter = void (*)(const std::string& what, const std::string& message);
void set_change_reporter(ChangeReporter r);

// Starts read-ahead of sequential streams (background fetch workers). Call it in the process that
// serves, after any fork: without it every read fetches only the blocks it touches.
void enable_prefetch();

// Parses a size with an optional K/M/G/T suffix (powers of 1024). Throws std::invalid_argument.
uint64_t parse_size(const std::string& s);

}  // namespace nemofs::remote
