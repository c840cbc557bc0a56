// Fitting the Linux ecosystem: the mount helper (mount.nemofs / mount.fuse.nemofs as mount(8) runs
// them), --help/--version, the man pages' agreement with the code, and bash completion.
// The installed package, mount(8) and fstab are exercised by tests/packaging/package_test.sh.
#include <gtest/gtest.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <regex>
#include <set>
#include <sstream>

#include "tests/common/manifest_check.h"
#include "tests/mount/mount_util.h"

using namespace nemofs::testing;

namespace {

std::string source_dir() { return std::string(NEMOFS_TEST_DATA_DIR) + "/../.."; }
std::string helper_bin(const std::string& name = "mount.nemofs") {
  return std::string(NEMOFS_BINARY_DIR) + "/mount_helper/" + name;
}

std::string slurp(const std::string& path) {
  std::ifstream f(path);
  EXPECT_TRUE(f.good()) << path;
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::vector<std::string> lines(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string l; std::getline(ss, l);) out.push_back(l);
  return out;
}

std::string quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// A stand-in for nemofs that records who ran it and with which arguments, then exits with $FAKE_RC.
struct FakeNemofs {
  TempDir dir;
  std::string bin = dir / "nemofs";
  std::string log = dir / "log";
  FakeNemofs() {
    ::chmod(dir.path().c_str(), 0755);
    std::ofstream(bin) << "#!/bin/sh\n"
                          "{ echo \"uid=$(id -u) gid=$(id -g) home=$HOME user=$USER\"; for a in \"$@\"; do echo \"$a\"; done; } > "
                       << log << "\nexit ${FAKE_RC:-0}\n";
    ::chmod(bin.c_str(), 0755);
    ::chmod(dir.path().c_str(), 0777);  // the setuid= test's user writes the log
  }
  std::vector<std::string> recorded() const { return lines(slurp(log)); }
};

RunResult run_helper(const std::string& nemofs, const std::string& args, const std::string& name = "mount.nemofs") {
  return run_shell("NEMOFS_BIN=" + quote(nemofs) + " " + quote(helper_bin(name)) + " " + args);
}

}  // namespace

// --- nemofs --help / --version --------------------------------------------------------------------

TEST(Cli, VersionIsTheCMakeProjectVersion) {
  std::smatch m;
  std::string cache = slurp(std::string(NEMOFS_BINARY_DIR) + "/CMakeCache.txt");
  ASSERT_TRUE(std::regex_search(cache, m, std::regex("CMAKE_PROJECT_VERSION:STATIC=([0-9.]+)")));
  auto r = run({nemofs_bin(), "--version"});
  EXPECT_EQ(r.status, 0);
  EXPECT_EQ(r.out, "nemofs " + m[1].str() + "\n");
}

TEST(Cli, HelpNamesEveryCommandAndTheManPage) {
  auto r = run({nemofs_bin(), "--help"});
  EXPECT_EQ(r.status, 0);
  for (const char* w : {"mount", "umount", "inspect", "status", "--json", "nemofs(1)"})
    EXPECT_NE(r.out.find(w), std::string::npos) << w << " missing from --help:\n" << r.out;
  auto bad = run({nemofs_bin(), "frobnicate"});
  EXPECT_EQ(bad.status, 1);
  EXPECT_NE(bad.err.find("--help"), std::string::npos) << bad.err;
}

// --- man pages agree with the code ---------------------------------------------------------------

TEST(ManPages, DocumentEveryExitCode) {
  std::string cli = slurp(source_dir() + "/fs/exit_codes.h");
  std::string man = slurp(source_dir() + "/docs/man/nemofs.1.md");
  std::regex code(R"(kExit\w+\s*=\s*(\d+))");
  int n = 0;
  for (auto it = std::sregex_iterator(cli.begin(), cli.end(), code); it != std::sregex_iterator(); ++it, ++n) {
    std::string entry = "\n**" + (*it)[1].str() + "**\n:   ";
    EXPECT_NE(man.find(entry), std::string::npos) << "exit code " << (*it)[1] << " not in nemofs.1.md";
  }
  EXPECT_GE(n, 7);
}

TEST(ManPages, DocumentEveryCommandAndTheInspectSchemaVersion) {
  std::string man = slurp(source_dir() + "/docs/man/nemofs.1.md");
  for (const char* c : {"**mount**", "**umount**", "**inspect**", "**status**", "**--version**", "**--help**"})
    EXPECT_NE(man.find(c), std::string::npos) << c;
  std::smatch h, m;
  std::string inspect_h = slurp(source_dir() + "/fs/cli/inspect.h");
  ASSERT_TRUE(std::regex_search(inspect_h, h, std::regex(R"(\"nemofs_inspect\": (\d+))")));
  ASSERT_TRUE(std::regex_search(man, m, std::regex(R"(\"nemofs_inspect\": (\d+))")));
  EXPECT_EQ(h[1], m[1]) << "inspect --json schema version differs between fs/inspect.h and the man page";
  EXPECT_NE(man.find("Schema version " + h[1].str()), std::string::npos);
  std::string helper = slurp(source_dir() + "/docs/man/mount.nemofs.8.md");
  for (const char* o : {"noauto", "nofail", "\\_netdev", "**user**", "**users**", "**defaults**", "setuid=", "x-",
                        "comment=", "fuse.nemofs", "-sfnv"})
    EXPECT_NE(helper.find(o), std::string::npos) << o;
}

TEST(ManPages, BuiltAsGzippedRoff) {
  std::string dir = std::string(NEMOFS_BINARY_DIR) + "/packaging/man/";
  if (::access((dir + "nemofs.1.gz").c_str(), R_OK) != 0)
    GTEST_SKIP() << "man pages not built (go-md2man not installed when cmake ran)";
  for (auto [page, th] : {std::pair{"nemofs.1.gz", ".TH NEMOFS 1 "}, {"mount.nemofs.8.gz", ".TH MOUNT.NEMOFS 8 "},
                          {"mount.fuse.nemofs.8.gz", ".TH MOUNT.NEMOFS 8 "}}) {
    auto r = run_shell("gzip -dc " + quote(dir + page));
    EXPECT_EQ(r.status, 0) << page;
    EXPECT_NE(r.out.find(th), std::string::npos) << page;
    EXPECT_EQ(r.out.find("@PROJECT_VERSION@"), std::string::npos) << page;
  }
}

// --- mount helper: arguments as mount(8) passes them ---------------------------------------------

TEST(MountHelper, DropsMount8OptionsAndExecsNemofsMount) {
  FakeNemofs fake;
  for (const char* name : {"mount.nemofs", "mount.fuse.nemofs"}) {
    auto r = run_helper(fake.bin,
                        "/data/m.nemo /mnt/x -snv -o 'rw,defaults,auto,noauto,user,users,nofail,_netdev,"
                        "x-systemd.automount,comment=a\\,b,ro,allow_other,output=/tmp/o\\,k.nemo'",
                        name);
    EXPECT_EQ(r.status, 0) << r.err;
    auto got = fake.recorded();
    ASSERT_EQ(got.size(), 6u) << ::testing::PrintToString(got);
    EXPECT_EQ(got[1], "mount");
    EXPECT_EQ(got[2], "-o");
    EXPECT_EQ(got[3], "rw,ro,allow_other,output=/tmp/o\\,k.nemo");
    EXPECT_EQ(got[4], "/data/m.nemo");
    EXPECT_EQ(got[5], "/mnt/x");
    EXPECT_NE(r.err.find("nemofs' 'mount'"), std::string::npos) << "-v prints the command: " << r.err;
  }
}

TEST(MountHelper, PassesNemofsExitStatusAndOldFuseSpelling) {
  FakeNemofs fake;
  auto r = run_shell("FAKE_RC=3 NEMOFS_BIN=" + quote(fake.bin) + " " + quote(helper_bin()) +
                     " nemofs#/data/m.nemo /mnt/x -t fuse.nemofs");
  EXPECT_EQ(r.status, 3);
  auto got = fake.recorded();
  ASSERT_EQ(got.size(), 4u) << ::testing::PrintToString(got);
  EXPECT_EQ(got[2], "/data/m.nemo");
}

TEST(MountHelper, FakeFlagRunsNothing) {
  FakeNemofs fake;
  auto r = run_helper(fake.bin, "/data/m.nemo /mnt/x -f -o ro");
  EXPECT_EQ(r.status, 0);
  EXPECT_NE(::access(fake.log.c_str(), F_OK), 0) << "nemofs ran despite -f";
  EXPECT_NE(r.err.find("would run"), std::string::npos) << r.err;
}

TEST(MountHelper, RefusesBadArguments) {
  FakeNemofs fake;
  for (const char* args : {"/data/m.nemo", "", "a b c", "a b -t ext4", "a b -N /proc/1/ns/mnt", "a b -x", "a b -o"}) {
    auto r = run_helper(fake.bin, args);
    EXPECT_EQ(r.status, 1) << args;
    EXPECT_FALSE(r.err.empty()) << args;
  }
  EXPECT_NE(::access(fake.log.c_str(), F_OK), 0);
}

TEST(MountHelper, SetuidDropsToThatUser) {
  if (::geteuid() != 0) GTEST_SKIP() << "setuid= needs root";
  struct passwd* pw = ::getpwnam("nobody");
  if (!pw) GTEST_SKIP() << "no user 'nobody' here";
  FakeNemofs fake;
  auto r = run_helper(fake.bin, "/data/m.nemo /mnt/x -o ro,setuid=nobody");
  EXPECT_EQ(r.status, 0) << r.err;
  auto got = fake.recorded();
  ASSERT_FALSE(got.empty());
  EXPECT_EQ(got[0], "uid=" + std::to_string(pw->pw_uid) + " gid=" + std::to_string(pw->pw_gid) +
                        " home=" + pw->pw_dir + " user=nobody");
  ASSERT_EQ(got.size(), 6u);
  EXPECT_EQ(got[3], "ro") << "setuid= is the helper's, not nemofs's";
  auto nouser = run_helper(fake.bin, "/data/m.nemo /mnt/x -o setuid=no-such-user-xyz");
  EXPECT_EQ(nouser.status, 2);
  EXPECT_NE(nouser.err.find("no-such-user-xyz"), std::string::npos) << nouser.err;
}

// --- mount helper: real mounts of a fixture -------------------------------------------------------

TEST(MountHelper, MountsAFixtureUnderBothNames) {
  NEMOFS_REQUIRE_FUSE();
  TempDir tmp;
  for (const char* name : {"mount.nemofs", "mount.fuse.nemofs"}) {
    std::string mp = tmp / name;
    ::mkdir(mp.c_str(), 0755);
    auto r = run_helper(nemofs_bin(), quote(data_path("real/nemo/asr_ctc.nemo")) + " " + quote(mp) +
                                          " -o rw,noauto,nofail,_netdev,x-systemd.automount,comment=test,ro",
                        name);
    ASSERT_EQ(r.status, 0) << r.err;
    auto bad = check_files(dir_view(mp), fixture("nemo/asr_ctc.nemo"));
    EXPECT_TRUE(bad.empty()) << ::testing::PrintToString(bad);
    auto st = run({nemofs_bin(), "status"});
    EXPECT_NE(st.out.find(mp + "  ro  "), std::string::npos) << st.out;
    auto u = run({nemofs_bin(), "umount", mp});
    EXPECT_EQ(u.status, 0) << u.err;
    if (u.status != 0) run({"fusermount3", "-u", "-z", mp});
  }
}

TEST(MountHelper, SetuidMountRunsAsThatUser) {
  NEMOFS_REQUIRE_FUSE();
  if (::geteuid() != 0) GTEST_SKIP() << "setuid= needs root";
  struct passwd* pw = ::getpwnam("nobody");
  if (!pw) GTEST_SKIP() << "no user 'nobody' here";
  auto can = run_shell("setpriv --reuid=" + std::to_string(pw->pw_uid) + " --regid=" + std::to_string(pw->pw_gid) +
                       " --clear-groups test -r /dev/fuse -a -w /dev/fuse");
  if (can.status != 0) GTEST_SKIP() << "/dev/fuse is not usable by nobody here (mode 0600: a container?)";
  TempDir tmp;
  ::chmod(tmp.path().c_str(), 0755);
  std::string src = tmp / "m.nemo", mp = tmp / "mnt";
  ASSERT_EQ(run({"cp", data_path("real/nemo/asr_ctc.nemo"), src}).status, 0);
  ::chmod(src.c_str(), 0644);
  ::mkdir(mp.c_str(), 0755);
  ASSERT_EQ(::chown(mp.c_str(), pw->pw_uid, pw->pw_gid), 0);
  auto r = run_helper(nemofs_bin(), quote(src) + " " + quote(mp) + " -o ro,setuid=nobody");
  ASSERT_EQ(r.status, 0) << r.err;
  auto info = run_shell("grep ' " + mp + " ' /proc/self/mountinfo");
  EXPECT_NE(info.out.find("fuse.nemofs"), std::string::npos) << info.out;
  EXPECT_NE(info.out.find("user_id=" + std::to_string(pw->pw_uid)), std::string::npos) << info.out;
  EXPECT_EQ(run({"umount", mp}).status, 0);
  if (run({"mountpoint", "-q", mp}).status == 0) run({"umount", "-l", mp});
}

// --- bash completion ------------------------------------------------------------------------------

namespace {
// COMPREPLY, one per line, for the command line `words` with the cursor in the last word.
std::vector<std::string> complete(const std::vector<std::string>& words, const std::string& cwd = "/") {
  std::string arr;
  for (const auto& w : words) arr += quote(w) + " ";
  auto r = run_shell("cd " + quote(cwd) + " && source " + quote(source_dir() + "/completion/nemofs.bash") +
                     " && COMP_WORDS=(" + arr + ") && COMP_CWORD=" + std::to_string(words.size() - 1) +
                     " && _nemofs && printf '%s\\n' \"${COMPREPLY[@]}\"");
  EXPECT_EQ(r.status, 0) << r.err;
  auto out = lines(r.out);
  if (out.size() == 1 && out[0].empty()) out.clear();
  return out;
}
std::set<std::string> as_set(const std::vector<std::string>& v) { return {v.begin(), v.end()}; }
}  // namespace

TEST(Completion, Subcommands) {
  EXPECT_EQ(complete({"nemofs", "mo"}), std::vector<std::string>{"mount"});
  EXPECT_EQ(as_set(complete({"nemofs", "u"})), (std::set<std::string>{"umount", "unmount"}));
  auto all = as_set(complete({"nemofs", ""}));
  for (const char* c : {"mount", "umount", "inspect", "status", "--help", "--version"}) EXPECT_TRUE(all.count(c)) << c;
}

TEST(Completion, MountOptions) {
  auto opts = as_set(complete({"nemofs", "mount", "-o", ""}));
  for (const char* o : {"ro", "rw", "allow_other", "output=", "debug", "safetensors", "commit_junk", "cache_size=",
                        "retries=", "timeout=", "connections="})
    EXPECT_TRUE(opts.count(o)) << o;
  EXPECT_EQ(complete({"nemofs", "mount", "-o", "ro,cache_s"}), std::vector<std::string>{"ro,cache_size="});
  EXPECT_EQ(complete({"nemofs", "mount", "-o", "ro,allow_o"}), std::vector<std::string>{"ro,allow_other"});
  EXPECT_EQ(as_set(complete({"nemofs", "mount", "-"})), (std::set<std::string>{"-o", "-f", "-d", "--help"}));
  EXPECT_EQ(complete({"nemofs", "inspect", "--j"}), std::vector<std::string>{"--json"});
  EXPECT_EQ(complete({"nemofs", "status", ""}), std::vector<std::string>{"--json"});
}

TEST(Completion, FileArguments) {
  TempDir tmp;
  ASSERT_EQ(run_shell("cd " + quote(tmp.path()) + " && touch model.nemo model.safetensors && mkdir mnt mnt2").status, 0);
  // SOURCE: files and folders; MOUNTPOINT (after a SOURCE and -o OPTS): folders only.
  EXPECT_EQ(as_set(complete({"nemofs", "mount", "mo"}, tmp.path())),
            (std::set<std::string>{"model.nemo", "model.safetensors"}));
  EXPECT_EQ(as_set(complete({"nemofs", "mount", "-o", "ro", "model.nemo", "m"}, tmp.path())),
            (std::set<std::string>{"mnt", "mnt2"}));
  EXPECT_EQ(complete({"nemofs", "inspect", "model.s"}, tmp.path()), std::vector<std::string>{"model.safetensors"});
  EXPECT_EQ(complete({"nemofs", "inspect", tmp / "model.n"}), std::vector<std::string>{tmp / "model.nemo"});
  // -o output=PATH: bash splits the word at '='.
  EXPECT_EQ(complete({"nemofs", "mount", "-o", "ro,output", "=", "model.s"}, tmp.path()),
            std::vector<std::string>{"model.safetensors"});
  // umount offers folders when no nemofs mount matches.
  EXPECT_EQ(as_set(complete({"nemofs", "umount", tmp / "mn"})), (std::set<std::string>{tmp / "mnt", tmp / "mnt2"}));
}

TEST(Completion, SourcesOfferUrlSchemes) {
  TempDir tmp;
  ASSERT_EQ(run_shell("cd " + quote(tmp.path()) + " && touch hello.nemo && mkdir mnt").status, 0);
  // A word that begins a scheme gets the schemes beside the files it begins; an empty word or a
  // path gets files only; the MOUNTPOINT and export's DEST never get schemes.
  EXPECT_EQ(as_set(complete({"nemofs", "mount", "h"}, tmp.path())),
            (std::set<std::string>{"hf://", "http://", "https://", "hello.nemo"}));
  EXPECT_EQ(as_set(complete({"nemofs", "mount", "htt"}, tmp.path())), (std::set<std::string>{"http://", "https://"}));
  EXPECT_EQ(complete({"nemofs", "mount", "-o", "ro", "s3"}, tmp.path()), std::vector<std::string>{"s3://"});
  EXPECT_EQ(complete({"nemofs", "inspect", "--json", "hf"}, tmp.path()), std::vector<std::string>{"hf://"});
  EXPECT_EQ(complete({"nemofs", "export", "s"}, tmp.path()), std::vector<std::string>{"s3://"});
  auto all = as_set(complete({"nemofs", "mount", ""}, tmp.path()));
  EXPECT_EQ(all, (std::set<std::string>{"hello.nemo", "mnt"}));
  EXPECT_EQ(complete({"nemofs", "mount", "./h"}, tmp.path()), std::vector<std::string>{"./hello.nemo"});
  EXPECT_TRUE(complete({"nemofs", "mount", "hf://org/x.nemo", "h"}, tmp.path()).empty());
  EXPECT_EQ(complete({"nemofs", "export", "s3://b/x.nemo", "h"}, tmp.path()), std::vector<std::string>{"hello.nemo"});
}

TEST(Completion, UmountOffersActiveMounts) {
  NEMOFS_REQUIRE_FUSE();
  TempDir tmp;
  Mount m(data_path("real/nemo/asr_ctc.nemo"), tmp / "mnt", {"-o", "ro"});
  ASSERT_TRUE(m.ok()) << m.result().err;
  EXPECT_EQ(complete({"nemofs", "umount", tmp.path()}), std::vector<std::string>{m.path()});
  EXPECT_EQ(m.umount().status, 0);
}
