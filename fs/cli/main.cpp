#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "fs/cli/cli.h"

#ifndef NEMOFS_VERSION
#define NEMOFS_VERSION "0.0.0"
#endif

namespace {

const char* kUsage =
    "usage: nemofs COMMAND [ARGS]\n"
    "\n"
    "Show a machine-learning checkpoint as an ordinary folder.\n"
    "\n"
    "commands:\n"
    "  mount [-o OPTIONS] [-f] [-d] SOURCE MOUNTPOINT\n"
    "        mount a .nemo, .safetensors, torch.save/.ckpt file, or a distributed / Hugging Face\n"
    "        checkpoint folder; returns once the mount answers (-f: stay in the foreground)\n"
    "        options: ro, allow_other, allow_root, debug, and other FUSE options; for a .nemo:\n"
    "        output=PATH (commit there, leave SOURCE as it is), commit_junk (commit editor\n"
    "        swap/backup files and .DS_Store too)\n"
    "        SOURCE may be a URL, mounted read-only through a local block cache:\n"
    "        http(s)://HOST/PATH, s3://BUCKET/KEY, s3://BUCKET/PREFIX/, hf://ORG/REPO[@REV][/PATH];\n"
    "        options: cache_size=SIZE, retries=N, timeout=SECONDS, connections=N\n"
    "  commit MOUNTPOINT\n"
    "        commit the edits of a writable .nemo mount now; it stays mounted\n"
    "  umount MOUNTPOINT\n"
    "        unmount and wait until the daemon has exited (a writable .nemo is committed first)\n"
    "  inspect SOURCE [--json]\n"
    "        print the tree the mount would show (paths, sizes, dtypes, shapes), without FUSE\n"
    "  export SOURCE DEST [--select PATH]\n"
    "        write the tensors of SOURCE (a .nemo: its weights; PATH: one folder of the tree a mount\n"
    "        shows) as one .safetensors file, streamed; DEST - writes to stdout\n"
    "  status [--json]\n"
    "        list active nemofs mounts\n"
    "\n"
    "exit status: 0 ok, 1 usage, 2 source unreadable, 3 source invalid, 4 mount failed,\n"
    "             5 commit or export write failed, 6 not a nemofs mount\n"
    "see nemofs(1) for details.\n";

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty()) {
    std::fputs(kUsage, stderr);
    return nemofs::kExitUsage;
  }
  std::string cmd = args[0];
  args.erase(args.begin());
  if (cmd == "-h" || cmd == "--help" || cmd == "help") {
    std::fputs(kUsage, stdout);
    return nemofs::kExitOk;
  }
  if (cmd == "-V" || cmd == "--version") {
    std::printf("nemofs %s\n", NEMOFS_VERSION);
    return nemofs::kExitOk;
  }
  if (cmd == "mount") return nemofs::cmd_mount(args);
  if (cmd == "umount" || cmd == "unmount") return nemofs::cmd_umount(args);
  if (cmd == "inspect") return nemofs::cmd_inspect(args);
  if (cmd == "status") return nemofs::cmd_status(args);
  if (cmd == "commit") return nemofs::cmd_commit(args);
  if (cmd == "export") return nemofs::cmd_export(args);
  std::fprintf(stderr, "nemofs: unknown command '%s' (try 'nemofs --help')\n", cmd.c_str());
  return nemofs::kExitUsage;
}
