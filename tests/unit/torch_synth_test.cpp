// torch.save zips and legacy streams built byte by byte: zip variants, layouts the fixtures do not
// cover, code-execution attempts that must stay inert, defects, and a 5,000-tensor mount.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "formats/core/errors.h"
#include "formats/detect/checkpoint.h"
#include "formats/torch/torch.h"
#include "formats/zip/zip.h"
#include "tests/common/manifest_check.h"
#include "tests/common/torch_writer.h"

using namespace nemofs;
using namespace nemofs::testing;
using nlohmann::json;

namespace {

std::string floats(std::initializer_list<float> v) {
  std::string s;
  for (float f : v) s.append(reinterpret_cast<const char*>(&f), 4);
  return s;
}

struct Built {
  Tree tree;
  std::vector<std::string> warnings;
};

Built build_zip(const std::string& zip) {
  auto src = std::make_shared<MemorySource>(zip, "synthetic.pt");
  auto f = torch::load_torch_zip(src);
  Built b;
  torch::build_torch_tree(b.tree, Tree::kRoot, *f);
  b.warnings = f->warnings;
  return b;
}

std::string read(const Tree& t, const std::string& path) {
  auto v = tree_view(t).read_file(path);
  EXPECT_TRUE(v.has_value()) << path;
  return v.value_or("");
}

std::string error_of_zip(const std::string& zip) {
  try {
    build_zip(zip);
  } catch (const FormatError& e) {
    return e.what();
  }
  return "(no error)";
}

// {"w": 2x3 float tensor over storage 0}
std::string simple_pkl() {
  PickleBuilder p;
  p.proto(2).op('}').str("w").tensor_v2("FloatStorage", "0", 6, 0, {2, 3}, {3, 1}).op('s').stop();
  return p.s;
}

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/nemofs_torch_XXXXXX";
    path_ = mkdtemp(tmpl);
  }
  ~TempDir() { std::system(("rm -rf '" + path_ + "'").c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace

TEST(TorchZip, Zip64ExtrasStubAndAnyRootName) {
  ZipWriterOptions o;
  o.force_zip64_extras = true;
  o.stub = std::string(100, 'x');
  std::string data = floats({1, 2, 3, 4, 5, 6});
  auto b = build_zip(torch_save_zip(simple_pkl(), {{"0", data}}, "my.model.v2", "little", o));
  EXPECT_EQ(read(b.tree, "w"), data);
  EXPECT_EQ(json::parse(read(b.tree, "w.json"))["shape"], json::parse("[2, 3]"));
}

TEST(TorchZip, DeflatedEntriesAreInflated) {
  ZipWriterOptions o;
  o.deflate = true;
  std::string data = floats({1, 2, 3, 4, 5, 6});
  auto b = build_zip(torch_save_zip(simple_pkl(), {{"0", data}}, "archive", "little", o));
  EXPECT_EQ(read(b.tree, "w"), data);
}

TEST(TorchZip, BigEndianStoragesAreSwappedToLittle) {
  std::string be;
  for (uint32_t v : {0x01020304u, 0x05060708u, 0u, 0u, 0u, 0u}) {
    for (int k = 3; k >= 0; --k) be += static_cast<char>((v >> (8 * k)) & 0xFF);
  }
  auto b = build_zip(torch_save_zip(simple_pkl(), {{"0", be}}, "archive", "big"));
  std::string got = read(b.tree, "w");
  uint32_t first;
  std::memcpy(&first, got.data(), 4);
  EXPECT_EQ(first, 0x01020304u);
  EXPECT_EQ(json::parse(read(b.tree, "w.json"))["stored_byteorder"], "big");
}

TEST(TorchZip, RebuildVariantsAndFlags) {
  std::string s0 = floats({1, 2, 3, 4});
  PickleBuilder p;
  p.proto(2).op('}').op('(');
  // Parameter wrapping, with state.
  p.str("param").global("torch._utils", "_rebuild_parameter_with_state").op('(');
  p.tensor_v2("FloatStorage", "0", 4, 0, {4}, {1}).op(0x88).global("collections", "OrderedDict").op(')').op('R').op('}');
  p.op('t').op('R');
  // _rebuild_from_type_v2(func, type, args, state)
  p.str("subclass").global("torch._tensor", "_rebuild_from_type_v2").op('(');
  p.global("torch._utils", "_rebuild_tensor_v2").global("mylib", "MyTensor").op('(');
  p.op('(').str("storage").global("torch", "FloatStorage").str("0").str("cpu").integer(4).op('t').op('Q');
  p.integer(1).ints({2}).ints({2}).op(0x89).global("collections", "OrderedDict").op(')').op('R').op('t');
  p.op('}').op('t').op('R');
  // neg bit, uint16 through _rebuild_tensor_v3, a 0-dim and an empty tensor.
  p.str("negated").tensor_v2("FloatStorage", "0", 4, 0, {2, 2}, {2, 1}, false, "neg");
  p.str("u16").tensor_v3("uint16", "1", 8, 0, {4}, {1});
  p.str("scalar").tensor_v2("FloatStorage", "0", 4, 3, {}, {});
  p.str("empty").tensor_v2("FloatStorage", "2", 0, 0, {0, 4}, {4, 1});
  p.op('u').stop();
  std::string u16 = std::string("\x01\x00\x02\x00\x03\x00\x04\x00", 8);
  auto b = build_zip(torch_save_zip(p.s, {{"0", s0}, {"1", u16}, {"2", ""}}));
  EXPECT_EQ(read(b.tree, "param"), s0);
  EXPECT_EQ(read(b.tree, "subclass"), floats({2, 4}));
  EXPECT_EQ(read(b.tree, "negated"), s0);
  EXPECT_EQ(json::parse(read(b.tree, "negated.json"))["neg"], true);
  EXPECT_EQ(read(b.tree, "u16"), u16);
  EXPECT_EQ(json::parse(read(b.tree, "u16.json"))["dtype"], "U16");
  EXPECT_EQ(read(b.tree, "scalar"), floats({4}));
  EXPECT_EQ(json::parse(read(b.tree, "scalar.json"))["shape"], json::array());
  EXPECT_EQ(read(b.tree, "empty"), "");
  EXPECT_TRUE(b.warnings.empty()) << ::testing::PrintToString(b.warnings);
}

TEST(TorchZip, RootTensorRootScalarAndTensorInsideObjects) {
  auto b = build_zip(torch_save_zip(
      PickleBuilder().proto(2).tensor_v2("FloatStorage", "0", 2, 0, {2}, {1}).stop().s, {{"0", floats({7, 8})}}));
  EXPECT_EQ(read(b.tree, "tensor"), floats({7, 8}));
  auto c = build_zip(torch_save_zip(PickleBuilder().proto(2).integer(5).stop().s, {}));
  EXPECT_EQ(json::parse(read(c.tree, "value.json")), 5);
  // An arbitrary object whose state holds a tensor is a folder (issue 14: no tensor only as a JSON
  // stub): __object__.json with its class and arguments, and its state's entries.
  PickleBuilder p;
  p.proto(2).op('}').str("obj").global("m", "Holder").op(')').op(0x81).op('}').str("t");
  p.tensor_v2("FloatStorage", "0", 2, 0, {2}, {1}).op('s').op('b').op('s').stop();
  auto d = build_zip(torch_save_zip(p.s, {{"0", floats({7, 8})}}));
  EXPECT_FALSE(d.tree.resolve("obj.json"));
  EXPECT_EQ(json::parse(read(d.tree, "obj/__object__.json")), json::parse(R"({"__class__": "m.Holder", "args": []})"));
  EXPECT_EQ(read(d.tree, "obj/t"), floats({7, 8}));
}

TEST(TorchZip, KeysCollisionsAndCycles) {
  PickleBuilder p;
  p.proto(2).op('}').op('q').u8(0).op('(');
  p.integer(1).tensor_v2("FloatStorage", "0", 2, 0, {2}, {1});
  p.str("1").integer(3);                               // "1.json" is the tensor's sidecar name
  p.op('(').integer(1).integer(2).op('t').integer(4);  // tuple key -> "[1,2].json"
  p.str("a/b").tensor_v2("FloatStorage", "0", 2, 0, {2}, {1});
  p.str("self").op('h').u8(0);                         // the dict contains itself: a cycle
  p.str("1.json").integer(9);                          // -> "1.json.json"
  p.op('u').stop();
  auto b = build_zip(torch_save_zip(p.s, {{"0", floats({1, 2})}}));
  EXPECT_EQ(read(b.tree, "1"), floats({1, 2}));
  EXPECT_TRUE(b.tree.resolve("a%2Fb"));
  EXPECT_EQ(json::parse(read(b.tree, "[1,2].json")), 4);
  // str "1" renders to "1.json", which is the tensor's sidecar: the first entry wins, a warning says so.
  EXPECT_EQ(json::parse(read(b.tree, "1.json"))["dtype"], "F32");
  ASSERT_FALSE(b.warnings.empty());
  EXPECT_NE(b.warnings[0].find("1.json"), std::string::npos);
  EXPECT_EQ(json::parse(read(b.tree, "1.json.json")), 9);
  EXPECT_TRUE(b.tree.resolve("self.json"));
  EXPECT_NE(read(b.tree, "self.json").find("__cycle__"), std::string::npos);
}

TEST(TorchZip, SharedReferenceBombIsRefused) {
  // d = {"t": tensor}; then 40 times: d = [d, d]  -> 2^40 folders when expanded.
  PickleBuilder p;
  p.proto(2).op('}').str("t").tensor_v2("FloatStorage", "0", 2, 0, {2}, {1}).op('s');
  for (int i = 0; i < 40; ++i) p.op('q').u8(0).op('h').u8(0).op(0x86);
  p.stop();
  std::string err = error_of_zip(torch_save_zip(p.s, {{"0", floats({1, 2})}}));
  EXPECT_NE(err.find("object tree too large"), std::string::npos) << err;
}

TEST(TorchZip, OversizedValueIsAPlaceholderAndTensorsStillMount) {
  // {"w": tensor, "laughs": x} with x = []; then 40 times: x = (x, x)  -> 2^41 - 1 nodes.
  PickleBuilder p;
  p.proto(2).op('}').op('(').str("w").tensor_v2("FloatStorage", "0", 2, 0, {2}, {1});
  p.str("laughs").op(']');
  for (int i = 0; i < 40; ++i) p.op('q').u8(200).op('h').u8(200).op(0x86);
  p.str("small").ints({1, 2, 3}).op('u').stop();
  auto b = build_zip(torch_save_zip(p.s, {{"0", floats({1, 2})}}));
  EXPECT_EQ(read(b.tree, "w"), floats({1, 2}));
  auto j = json::parse(read(b.tree, "laughs.json"));
  ASSERT_TRUE(j.contains("__too_large__")) << j.dump();
  EXPECT_EQ(j["__too_large__"]["class"], "tuple");
  EXPECT_EQ(j["__too_large__"]["nodes"], (uint64_t{1} << 41) - 1);
  EXPECT_EQ(json::parse(read(b.tree, "small.json")), json::parse("[1,2,3]"));
  ASSERT_EQ(b.warnings.size(), 1u);
  EXPECT_NE(b.warnings[0].find("laughs.json: value too large to render (tuple, 2199023255551 nodes)"), std::string::npos)
      << b.warnings[0];
}

TEST(TorchZip, UnsupportedTensorKindsStayJsonWithAWarning) {
  PickleBuilder p;
  p.proto(2).op('}').str("q").global("torch._utils", "_rebuild_qtensor").op('(').integer(1).op('t').op('R').op('s').stop();
  auto b = build_zip(torch_save_zip(p.s, {}));
  EXPECT_EQ(json::parse(read(b.tree, "q.json"))["__class__"], "torch._utils._rebuild_qtensor");
  ASSERT_EQ(b.warnings.size(), 1u);
}

TEST(TorchLegacy, ViewsThroughSixTuplePersistentIds) {
  // Storage "k1" of 6 floats; a tensor viewing elements [2, 6) of it through view key "v".
  PickleBuilder obj;
  obj.proto(2).op('}').op('(').str("whole").tensor_v2("FloatStorage", "k1", 6, 0, {6}, {1}, true);
  obj.str("view").global("torch._utils", "_rebuild_tensor_v2").op('(');
  obj.op('(').str("storage").global("torch", "FloatStorage").str("k1").str("cpu").integer(6);
  obj.op('(').str("v").integer(2).integer(4).op('t').op('t').op('Q');
  obj.integer(1).ints({2}).ints({1}).op(0x89).global("collections", "OrderedDict").op(')').op('R').op('t').op('R');
  obj.op('u').stop();
  std::string s;
  s += PickleBuilder().proto(2).op(0x8a).u8(10).raw("\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19").stop().s;
  s += PickleBuilder().proto(2).integer(1001).stop().s;
  s += PickleBuilder().proto(2).op('}').str("little_endian").op(0x88).op('s').stop().s;
  s += obj.s;
  s += PickleBuilder().proto(2).op(']').op('(').str("k1").op('e').stop().s;
  put_le(s, 6, 8);
  s += floats({0, 1, 2, 3, 4, 5});
  TempDir dir;
  std::string path = dir.path() + "/legacy.pt";
  std::ofstream(path, std::ios::binary) << s;
  auto cp = open_checkpoint(path);
  EXPECT_EQ(cp.format, Format::TorchLegacy);
  EXPECT_EQ(read(cp.tree, "whole"), floats({0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(read(cp.tree, "view"), floats({3, 4}));  // view starts at element 2, tensor offset 1
  EXPECT_EQ(json::parse(read(cp.tree, "view.json"))["source"], "torch-legacy");
  // A truncated storage section is refused.
  std::ofstream(path, std::ios::binary) << s.substr(0, s.size() - 3);
  try {
    open_checkpoint(path);
    FAIL() << "truncated legacy storages must be refused";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("runs past the end of the file"), std::string::npos) << e.what();
  }
}

TEST(TorchSecurity, CodeExecutionAttemptsMountAsInertData) {
  TempDir dir;
  std::string canary = dir.path() + "/CANARY";
  // What torch.save writes for objects whose __reduce__ returns (os.system, ("touch CANARY",)),
  // (posix.system, ...), (builtins.exec, ...), (builtins.eval, ...), next to a real tensor.
  PickleBuilder p;
  p.proto(2).global("collections", "OrderedDict").op('q').u8(0).op(')').op('R').op('q').u8(1).op('(');
  p.str("weight").tensor_v2("FloatStorage", "0", 2, 0, {2}, {1});
  p.str("os").global("os", "system").str("touch " + canary).op(0x85).op('R');
  p.str("posix").global("posix", "system").str("touch " + canary).op(0x85).op('R');
  p.str("exec").global("builtins", "exec").str("open('" + canary + "','w')").op(0x85).op('R');
  p.str("eval").global("__builtin__", "eval").str("__import__('os').system('touch " + canary + "')").op(0x85).op('R');
  p.str("subprocess").global("subprocess", "call").op('(').str("touch").str(canary).op('l').op(0x85).op('R');
  // Protocol-4 spelling (STACK_GLOBAL) and a BUILD whose state would be handed to __setstate__.
  p.str("stack").op(0x8c).u8(2).raw("os").op(0x8c).u8(6).raw("system").op(0x93).str("touch " + canary).op(0x85).op('R');
  p.op('}').str("cmd").str("touch " + canary).op('s').op('b');
  p.op('u').stop();
  std::string path = dir.path() + "/evil.pt";
  std::ofstream(path, std::ios::binary) << torch_save_zip(p.s, {{"0", floats({1, 2})}}, "evil");

  auto cp = open_checkpoint(path);
  EXPECT_EQ(read(cp.tree, "weight"), floats({1, 2}));
  EXPECT_EQ(json::parse(read(cp.tree, "os.json")),
            json::parse(R"({"__class__": "os.system", "args": ["touch )" + canary + R"("]})"));
  EXPECT_EQ(json::parse(read(cp.tree, "posix.json"))["__class__"], "posix.system");
  EXPECT_EQ(json::parse(read(cp.tree, "exec.json"))["__class__"], "builtins.exec");
  EXPECT_EQ(json::parse(read(cp.tree, "eval.json"))["__class__"], "builtins.eval");  // remapped from __builtin__
  EXPECT_EQ(json::parse(read(cp.tree, "subprocess.json"))["args"][0], json::parse(R"(["touch", ")" + canary + R"("])"));
  auto st = json::parse(read(cp.tree, "stack.json"));
  EXPECT_EQ(st["__class__"], "os.system");
  EXPECT_EQ(st["state"]["cmd"], "touch " + canary);
  // Read every file of the tree too: nothing anywhere runs the calls.
  cp.tree.walk([&](NodeId, const Node& n) {
    if (n.type == NodeType::File) {
      std::string buf(n.data->size(), '\0');
      n.data->read_at(0, buf.data(), buf.size());
    }
  });
  struct stat sb {};
  EXPECT_NE(::stat(canary.c_str(), &sb), 0) << "the canary exists: something from the pickle ran";
}

TEST(TorchDefects, EachRefusedWithItsOwnMessage) {
  std::string data = floats({1, 2, 3, 4, 5, 6});
  std::string ok = torch_save_zip(simple_pkl(), {{"0", data}});
  ASSERT_EQ(error_of_zip(ok), "(no error)");
  auto has = [](const std::string& err, const char* what) {
    EXPECT_NE(err.find(what), std::string::npos) << "wanted '" << what << "' in: " << err;
  };
  has(error_of_zip(torch_zip({{"archive/other.pkl", "x"}})), "no archive/data.pkl in the zip");
  has(error_of_zip(torch_zip({{"data.pkl", "x"}})), "has no root folder");
  has(error_of_zip(torch_save_zip(simple_pkl(), {})), "storage record archive/data/0 is missing");
  has(error_of_zip(torch_save_zip(simple_pkl(), {{"0", data.substr(0, 20)}})), "should hold 24 bytes but its record has 20");
  PickleBuilder oob;
  oob.proto(2).op('}').str("w").tensor_v2("FloatStorage", "0", 6, 1, {2, 3}, {3, 1}).op('s').stop();
  has(error_of_zip(torch_save_zip(oob.s, {{"0", data}})), "tensor reaches element 6 of storage 'data/0', which holds 6");
  PickleBuilder mism;
  mism.proto(2).op('}').str("w").tensor_v2("FloatStorage", "0", 6, 0, {2, 3}, {1}).op('s').stop();
  has(error_of_zip(torch_save_zip(mism.s, {{"0", data}})), "size and stride have different lengths");
  PickleBuilder neg;
  neg.proto(2).op('}').str("w").tensor_v2("FloatStorage", "0", 6, 0, {2, -3}, {3, 1}).op('s').stop();
  has(error_of_zip(torch_save_zip(neg.s, {{"0", data}})), "not a non-negative int");
  PickleBuilder badtype;
  badtype.proto(2).op('}').str("w").tensor_v2("NotAStorage", "0", 6, 0, {6}, {1}).op('s').stop();
  has(error_of_zip(torch_save_zip(badtype.s, {{"0", data}})), "is not a torch storage class");
  has(error_of_zip(torch_save_zip(simple_pkl().substr(0, 30), {{"0", data}})), "archive/data.pkl: truncated");
  has(error_of_zip(torch_save_zip(simple_pkl(), {{"0", data}}, "archive", "middle")), "byteorder record says 'middle'");
  has(error_of_zip(ok.substr(0, ok.size() - 10)), "no end of central directory record");
  std::string badlocal = ok;
  badlocal[0] = 'X';
  has(error_of_zip(badlocal), "bad local header signature");
  std::string badcd = ok;
  badcd[badcd.find("PK\x01\x02")] = 'Q';
  has(error_of_zip(badcd), "bad central directory entry signature");
}

TEST(TorchDefects, MutatedZipsNeverCrash) {
  std::string ok = torch_save_zip(simple_pkl(), {{"0", floats({1, 2, 3, 4, 5, 6})}});
  uint32_t seed = 99;
  auto rnd = [&] { return seed = seed * 1664525u + 1013904223u; };
  int refused = 0;
  for (int i = 0; i < 3000; ++i) {
    std::string m = ok;
    for (int e = 0; e < 3; ++e) m[rnd() % m.size()] = static_cast<char>(rnd() >> 24);
    try {
      auto b = build_zip(m);
      b.tree.walk([&](NodeId, const Node& n) {
        if (n.type == NodeType::File) {
          std::string buf(n.data->size(), '\0');
          n.data->read_at(0, buf.data(), buf.size());
        }
      });
    } catch (const FormatError&) {
      ++refused;
    } catch (const SysError&) {
      ++refused;  // corrupt deflate data is an I/O error of the one file
    }
  }
  EXPECT_GT(refused, 0);
}

TEST(TorchPerf, FiveThousandTensorsMount) {
  // A state dict of 5,000 small tensors (contiguous and transposed), as torch.save writes it.
  PickleBuilder p;
  p.proto(2).global("collections", "OrderedDict").op('q').u8(0).op(')').op('R').op('(');
  std::vector<std::pair<std::string, std::string>> storages;
  std::string bytes(16 * 4, '\1');
  for (int i = 0; i < 5000; ++i) {
    std::string key = std::to_string(i);
    p.str("layers." + std::to_string(i / 10) + ".w" + std::to_string(i % 10));
    if (i % 2) p.tensor_v2("FloatStorage", key, 16, 0, {4, 4}, {4, 1});
    else p.tensor_v2("FloatStorage", key, 16, 0, {4, 4}, {1, 4});
    storages.emplace_back(key, bytes);
  }
  p.op('u').stop();
  TempDir dir;
  std::string path = dir.path() + "/big.pt";
  std::ofstream(path, std::ios::binary) << torch_save_zip(p.s, storages, "big");
  auto t0 = std::chrono::steady_clock::now();
  auto cp = open_checkpoint(path);
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(cp.tree.size(), 1u + 2u * 5000u);
  std::printf("[ perf     ] open_checkpoint of a 5,000-tensor torch zip: %.3f s\n", secs);
  // Speed is measured by bench/torch_bench.sh side by side, never asserted here (shared machines).
}

TEST(TorchZip, DictSubclassesHoldingTensorsAreFolders) {
  PickleBuilder p;
  p.proto(2).op('}').op('(');
  p.str("hp").global("lightning.fabric.utilities.data", "AttributeDict").op(')').op(0x81).op('(');
  p.str("w").tensor_v2("FloatStorage", "0", 2, 0, {2}, {1}).str("n").integer(3).op('u');
  p.str("plain").global("lightning.fabric.utilities.data", "AttributeDict").op(')').op(0x81).op('(');
  p.str("n").integer(4).op('u');
  p.op('u').stop();
  auto b = build_zip(torch_save_zip(p.s, {{"0", floats({1, 2})}}));
  EXPECT_EQ(read(b.tree, "hp/w"), floats({1, 2}));
  EXPECT_EQ(json::parse(read(b.tree, "hp/n.json")), 3);
  EXPECT_EQ(json::parse(read(b.tree, "plain.json")),
            json::parse(R"({"__class__": "lightning.fabric.utilities.data.AttributeDict", "args": [], "dictitems": {"n": 4}})"));
}
