// The restricted pickle machine: hand-built pickles for every opcode family, JSON rendering, and
// one test per defect class, each refused with its own message.
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "formats/core/errors.h"
#include "formats/pickle/pickle.h"

using namespace nemofs;
using namespace nemofs::pickle;
using J = nlohmann::ordered_json;

namespace {

// Builds pickle bytes opcode by opcode.
struct PB {
  std::string s;
  PB& op(uint8_t c) { s += static_cast<char>(c); return *this; }
  PB& u8(uint8_t v) { return op(v); }
  PB& le(uint64_t v, int n) {
    for (int i = 0; i < n; ++i) s += static_cast<char>((v >> (8 * i)) & 0xFF);
    return *this;
  }
  PB& raw(std::string_view r) { s.append(r); return *this; }
  PB& proto(int v) { return op(0x80).u8(static_cast<uint8_t>(v)); }
  PB& binunicode(std::string_view t) { return op('X').le(t.size(), 4).raw(t); }
  PB& short_binunicode(std::string_view t) { return op(0x8c).u8(static_cast<uint8_t>(t.size())).raw(t); }
  PB& binint1(uint8_t v) { return op('K').u8(v); }
  PB& global(std::string_view m, std::string_view n) { return op('c').raw(m).raw("\n").raw(n).raw("\n"); }
  PB& stop() { return op('.'); }
};

J load(const std::string& bytes) {
  auto doc = unpickle(bytes);
  return to_json(*doc.root);
}

std::string error_of(const std::string& bytes) {
  try {
    auto doc = unpickle(bytes);
    RenderBudget b;
    (void)to_json(*doc.root, b);
  } catch (const FormatError& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST(Pickle, IntegersAllEncodings) {
  PB p;
  p.proto(2).op(']');
  p.op('(');
  p.binint1(200);                                  // BININT1
  p.op('M').le(65535, 2);                          // BININT2
  p.op('J').le(static_cast<uint32_t>(-7), 4);      // BININT
  p.op(0x8a).u8(0);                                // LONG1 zero
  p.op(0x8a).u8(2).le(0xFF7F, 2);                  // LONG1 -129 (two's complement)
  p.op(0x8a).u8(9).le(0, 8).u8(1);                 // LONG1 2^64
  p.op(0x8a).u8(10).raw("\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19");  // torch legacy magic
  p.op(0x8a).u8(9).le(0, 8).u8(0xFF);              // LONG1 -2^64
  p.op(0x8b).le(2, 4).le(0x0100, 2);               // LONG4 256
  p.op(0x8a).u8(8).le(0x8000000000000000ull, 8);   // LONG1 INT64_MIN
  p.raw("I42\n").raw("I-3\n").raw("I01\n").raw("I00\n");
  p.raw("L12345678901234567890123L\n").raw("L-5\n");
  p.raw("I99999999999999999999\n");                // protocol 0 INT beyond int64
  p.op('e').stop();
  J want = J::parse(R"([200, 65535, -7, 0, -129, 18446744073709551616, 119547037146038801333356,
                        -18446744073709551616, 256, -9223372036854775808, 42, -3, true, false,
                        12345678901234567890123, -5, 99999999999999999999])");
  // Integers beyond uint64 render as decimal strings.
  want[5] = "18446744073709551616";
  want[6] = "119547037146038801333356";
  want[7] = "-18446744073709551616";
  want[14] = "12345678901234567890123";
  want[16] = "99999999999999999999";
  EXPECT_EQ(load(p.s), want);

  auto doc = unpickle(p.s);
  EXPECT_EQ(doc.root->items[6]->kind, Kind::BigInt);
  EXPECT_EQ(doc.root->items[6]->str, "119547037146038801333356");
  EXPECT_EQ(doc.root->items[9]->kind, Kind::Int);
  EXPECT_EQ(doc.root->items[9]->i, INT64_MIN);
}

TEST(Pickle, FloatsAndNonFinite) {
  PB p;
  p.proto(2).op('(');
  p.op('G').raw(std::string("\x3f\xf8\0\0\0\0\0\0", 8));  // 1.5 big-endian
  p.raw("F0.25\n").raw("Fnan\n").raw("Finf\n").raw("F-inf\n");
  p.op('l').stop();
  EXPECT_EQ(load(p.s), J::parse(R"([1.5, 0.25, "NaN", "Infinity", "-Infinity"])"));
}

TEST(Pickle, StringAndBytesFamilies) {
  PB p;
  p.proto(5).op('(');
  p.binunicode("h\xc3\xa9llo");
  p.short_binunicode("short");
  p.op(0x8d).le(3, 8).raw("big");
  p.raw("Vcaf\xe9\\u20ac\n");                                  // raw-unicode-escape: é (Latin-1) and €
  p.raw("S'a\\nb\\x41\\101\\\\'\n");                           // protocol-0 quoted string
  p.op('U').u8(2).raw("py");                                   // SHORT_BINSTRING
  p.op('T').le(3, 4).raw("two");                               // BINSTRING
  p.op('U').u8(2).raw("\xff\xfe");                             // not UTF-8 -> bytes
  p.op('C').u8(3).raw("abc");                                  // SHORT_BINBYTES
  p.op('B').le(1, 4).raw("\x01");                              // BINBYTES
  p.op(0x8e).le(0, 8);                                         // BINBYTES8 empty
  p.op(0x96).le(2, 8).raw("hi");                               // BYTEARRAY8
  p.op('l').stop();
  EXPECT_EQ(load(p.s), J::parse(R"(["h\u00e9llo", "short", "big", "caf\u00e9\u20ac", "a\nbAA\\", "py", "two",
    {"__bytes__": "//4="}, {"__bytes__": "YWJj"}, {"__bytes__": "AQ=="}, {"__bytes__": ""},
    {"__bytes__": "aGk="}])"));
}

TEST(Pickle, ContainersAndStackOps) {
  PB p;
  p.proto(4).op(0x95).le(0, 8);  // FRAME (a hint; content follows)
  p.op('}');
  p.op('(');
  p.short_binunicode("list").op(']').binint1(1).op('a').op('(').binint1(2).binint1(3).op('e');
  p.short_binunicode("LIST").op('(').binint1(4).op('l');
  p.short_binunicode("tuples").op('(').op(')').binint1(1).op(0x85).binint1(1).binint1(2).op(0x86)
      .binint1(1).binint1(2).binint1(3).op(0x87).op('(').binint1(9).op('t').op('t');
  p.short_binunicode("DICT").op('(').binint1(1).short_binunicode("one").op('d');
  p.short_binunicode("set").op(0x8f).op('(').binint1(5).binint1(6).op(0x90);
  p.short_binunicode("frozen").op('(').binint1(7).op(0x91);
  p.short_binunicode("dup").binint1(8).op('2').op(0x86);       // DUP -> (8, 8)
  p.op('u');
  p.short_binunicode("popped").binint1(1).op('0');              // POP drops the 1
  p.op('(').binint1(1).binint1(2).op('1');                      // POP_MARK drops the mark and both
  p.op(0x88).op('s');                                           // SETITEM popped=True
  p.stop();
  EXPECT_EQ(load(p.s), J::parse(R"({"list": [1, 2, 3], "LIST": [4], "tuples": [[], [1], [1, 2], [1, 2, 3], [9]],
    "DICT": {"1": "one"}, "set": {"__set__": [5, 6]}, "frozen": {"__frozenset__": [7]}, "dup": [8, 8],
    "popped": true})"));
}

TEST(Pickle, MemoSharingAllForms) {
  PB p;
  p.proto(4).op('(');
  p.op(']').op('p').raw("0\n");                 // PUT 0
  p.op(']').op('q').u8(1);                      // BINPUT 1
  p.op(']').op('r').le(2, 4);                   // LONG_BINPUT 2
  p.op(']').op(0x94);                           // MEMOIZE -> 3
  p.op('g').raw("0\n").binint1(10).op('a').op('0');           // GET 0, append 10, pop
  p.op('h').u8(1).binint1(11).op('a').op('0');                // BINGET 1
  p.op('j').le(2, 4).binint1(12).op('a').op('0');             // LONG_BINGET 2
  p.op('h').u8(3).binint1(13).op('a').op('0');                // the MEMOIZE slot
  p.op('t').stop();
  EXPECT_EQ(load(p.s), J::parse("[[10], [11], [12], [13]]"));
}

TEST(Pickle, GlobalsAllowlistAndRemapping) {
  PB p;
  p.proto(2).op('(');
  p.global("collections", "OrderedDict").op(')').op('R').op('(').binunicode("a").binint1(1).op('u');
  p.global("__builtin__", "set").op(']').binint1(3).op('a').op(0x85).op('R');        // set([3])
  p.global("_codecs", "encode").binunicode("\xc3\xbf\x01").binunicode("latin1").op(0x86).op('R');  // b'\xff\x01'
  p.global("__builtin__", "bytes").op(')').op('R');                                    // b''
  p.global("torch", "Size").binint1(2).binint1(3).op(0x86).op(0x85).op('R');           // torch.Size([2, 3])
  p.global("torch.serialization", "_get_layout").binunicode("torch.strided").op(0x85).op('R');
  p.global("__builtin__", "getattr").global("mod", "Color").binunicode("RED").op(0x86).op('R');
  p.global("torch", "bfloat16");
  p.global("__builtin__", "long");
  p.short_binunicode("collections").short_binunicode("defaultdict").op(0x93)
      .global("__builtin__", "dict").op(0x85).op('R').binint1(1).binint1(2).op('s');  // STACK_GLOBAL
  p.op('t').stop();
  auto doc = unpickle(p.s);
  EXPECT_EQ(to_json(*doc.root), J::parse(R"([{"a": 1}, {"__set__": [3]}, {"__bytes__": "/wE="}, {"__bytes__": ""},
    [2, 3], {"__global__": "torch.strided"}, {"__global__": "mod.Color.RED"}, {"__global__": "torch.bfloat16"},
    {"__global__": "builtins.int"}, {"1": 2}])"));
  const auto& it = doc.root->items;
  EXPECT_EQ(it[0]->kind, Kind::Dict);
  EXPECT_EQ(it[7]->tag, Tag::TorchDtype);
  EXPECT_EQ(it[7]->dtype(), "bfloat16");
  EXPECT_EQ(it[5]->tag, Tag::TorchLayout);
}

TEST(Pickle, StorageAndRebuildTagsStayInert) {
  PB p;
  p.proto(2);
  p.global("torch._utils", "_rebuild_tensor_v2");
  p.op('(').op('(').binunicode("storage").global("torch.cuda", "HalfStorage").binunicode("0").binunicode("cuda:0")
      .binint1(4).op('t').op('Q');
  p.binint1(0).binint1(4).op(0x85).binint1(1).op(0x85).op(0x89).global("collections", "OrderedDict").op(')').op('R')
      .op('t').op('R').stop();
  auto doc = unpickle(p.s);
  const Value* t = doc.root;
  ASSERT_EQ(t->kind, Kind::Object);
  EXPECT_EQ(t->tag, Tag::RebuildTensorV2);
  EXPECT_EQ(t->qualified_name(), "torch._utils._rebuild_tensor_v2");
  ASSERT_EQ(t->items.size(), 6u);
  ASSERT_EQ(t->items[0]->kind, Kind::PersistentId);
  const Value* pid = t->items[0]->cls;
  ASSERT_EQ(pid->items.size(), 5u);
  EXPECT_EQ(pid->items[1]->tag, Tag::TypedStorage);
  EXPECT_EQ(pid->items[1]->dtype(), "float16");
  EXPECT_EQ(to_json(*t)["args"][0], J::parse(R"({"__persistent_id__": ["storage", {"__global__": "torch.cuda.HalfStorage"}, "0", "cuda:0", 4]})"));
}

TEST(Pickle, ObjectsNewobjBuildInstObj) {
  PB p;
  p.proto(4).op('(');
  // NEWOBJ + memo + BUILD after BINGET: both references see the state.
  p.global("argparse", "Namespace").op(')').op(0x81).op('q').u8(0);
  p.op('h').u8(0).op('}').short_binunicode("lr").op('G').raw(std::string("\x3f\xb9\x99\x99\x99\x99\x99\x9a", 8))
      .op('s').op('b').op('0');
  p.op('h').u8(0);
  // NEWOBJ_EX with kwargs.
  p.global("pathlib", "PosixPath").binunicode("/tmp").op(0x85).op('}').binunicode("strict").op(0x88).op('s').op(0x92);
  // INST (protocol 0) and OBJ (protocol 1).
  p.op('(').binint1(1).op('i').raw("mod\nOld\n");
  p.op('(').global("mod", "Obj").binint1(2).op('o');
  // copyreg._reconstructor (protocol 0/1 plain objects) + BUILD.
  p.global("copy_reg", "_reconstructor").global("mod", "Plain").global("__builtin__", "object").op('N').op(0x87)
      .op('R').op('}').binunicode("x").binint1(5).op('s').op('b');
  // A dict subclass filled by SETITEMS and a list subclass by APPENDS.
  p.global("mod", "AttrDict").op(')').op(0x81).op('(').binunicode("k").binint1(1).op('u');
  p.global("mod", "MyList").op(')').op(0x81).op('(').binint1(1).op('e');
  p.op('t').stop();
  EXPECT_EQ(load(p.s), J::parse(R"([
    {"__class__": "argparse.Namespace", "args": [], "state": {"lr": 0.1}},
    {"__class__": "argparse.Namespace", "args": [], "state": {"lr": 0.1}},
    {"__class__": "pathlib.PosixPath", "args": ["/tmp"], "kwargs": {"strict": true}},
    {"__class__": "mod.Old", "args": [1]},
    {"__class__": "mod.Obj", "args": [2]},
    {"__class__": "mod.Plain", "args": [], "state": {"x": 5}},
    {"__class__": "mod.AttrDict", "args": [], "dictitems": {"k": 1}},
    {"__class__": "mod.MyList", "args": [], "listitems": [1]}])"));
}

TEST(Pickle, PersistentIds) {
  PB p;
  p.proto(2).op('(').op('P').raw("abc\n").binunicode("x").op(0x85).op('Q').op('t').stop();
  EXPECT_EQ(load(p.s), J::parse(R"([{"__persistent_id__": "abc"}, {"__persistent_id__": ["x"]}])"));
}

TEST(Pickle, CyclesRenderWithAMarker) {
  // l = []; l.append(l); o = Obj(); o.__dict__ = {"self": o}
  PB p;
  p.proto(2).op('(').op(']').op('q').u8(0).op('h').u8(0).op('a');
  p.global("m", "Node").op(')').op(0x81).op('q').u8(1).op('}').binunicode("parent").op('h').u8(1).op('s').op('b');
  p.op('t').stop();
  EXPECT_EQ(load(p.s), J::parse(R"([[{"__cycle__": "list"}],
    {"__class__": "m.Node", "args": [], "state": {"parent": {"__cycle__": "m.Node"}}}])"));
}

TEST(Pickle, NonStringKeys) {
  PB p;
  p.proto(2).op('}').op('(').binint1(0).binint1(1).op(0x88).binint1(2).op('N').binint1(3)
      .binint1(1).binint1(2).op(0x86).binint1(4).op('G').raw(std::string("\x3f\xf8\0\0\0\0\0\0", 8)).binint1(5).op('u').stop();
  EXPECT_EQ(load(p.s), J::parse(R"({"0": 1, "true": 2, "null": 3, "[1,2]": 4, "1.5": 5})"));
}

TEST(Pickle, ReadsFromAnOffsetAndReportsTheEnd) {
  std::string two = PB().proto(2).binint1(7).stop().s + PB().proto(2).binint1(8).stop().s;
  MemorySource src(two);
  auto a = unpickle(src, 0);
  EXPECT_EQ(a.root->i, 7);
  EXPECT_EQ(a.end, 5u);
  auto b = unpickle(src, a.end);
  EXPECT_EQ(b.root->i, 8);
  EXPECT_EQ(b.end, two.size());
}

// ---------------------------------------------------------------------------------------- defects

TEST(PickleDefects, TruncatedStream) {
  EXPECT_NE(error_of(PB().proto(2).binint1(1).s).find("truncated: the stream ends before STOP"), std::string::npos);
  EXPECT_NE(error_of(PB().proto(2).op('J').raw("\x01\x02").s).find("truncated: BININT needs 4 bytes"), std::string::npos);
  EXPECT_NE(error_of(PB().proto(2).raw("cmodule\nna").s).find("GLOBAL argument has no end of line"), std::string::npos);
}

TEST(PickleDefects, BadMemoIndex) {
  EXPECT_NE(error_of(PB().proto(2).op('h').u8(3).stop().s).find("memo index 3 was never stored (BINGET)"), std::string::npos);
  EXPECT_NE(error_of(PB().proto(2).op('N').op('r').le(0xFFFFFFF0u, 4).stop().s).find("memo index 4294967280 is out of range"),
            std::string::npos);
  EXPECT_NE(error_of(PB().proto(2).op('N').raw("pabc\n").stop().s).find("is not a memo index"), std::string::npos);
}

TEST(PickleDefects, StackUnderflow) {
  EXPECT_NE(error_of(PB().proto(2).binint1(1).op('R').stop().s).find("stack underflow: REDUCE needs 2 values, the stack has 1"),
            std::string::npos);
  EXPECT_NE(error_of(PB().proto(2).op('.').s).find("stack underflow: STOP"), std::string::npos);
  // Values below a MARK are out of reach.
  EXPECT_NE(error_of(PB().proto(2).binint1(1).op('(').op(0x85).stop().s).find("above the last MARK"), std::string::npos);
  EXPECT_NE(error_of(PB().proto(2).binint1(1).op('t').stop().s).find("MARK missing: TUPLE"), std::string::npos);
}

TEST(PickleDefects, AbsurdLengths) {
  EXPECT_NE(error_of(PB().proto(4).op(0x8d).le(1ull << 60, 8).s).find("BINUNICODE8 length 1152921504606846976 exceeds"),
            std::string::npos);
  EXPECT_NE(error_of(PB().proto(2).op('X').le(0xFFFFFFFFu, 4).raw("ab").s).find("BINUNICODE length 4294967295 exceeds"),
            std::string::npos);
  EXPECT_NE(error_of(PB().proto(4).op(0x95).le(1ull << 40, 8).s).find("FRAME length"), std::string::npos);
  EXPECT_NE(error_of(PB().proto(2).op(0x8b).le(0x7FFFFFFF, 4).s).find("LONG4 length"), std::string::npos);
  std::string big = PB().proto(2).op(0x8b).le(5000, 4).s + std::string(5000, '\1') + ".";
  EXPECT_NE(error_of(big).find("bytes is larger than the 1024-byte limit"), std::string::npos);
}

TEST(PickleDefects, DeepNesting) {
  PB p;
  p.proto(2);
  for (int i = 0; i < 1100; ++i) p.op(']');
  for (int i = 0; i < 1099; ++i) p.op('a');
  p.stop();
  EXPECT_NE(error_of(p.s).find("containers nested deeper than 1000 levels"), std::string::npos);
  PB ok;
  ok.proto(2);
  for (int i = 0; i < 500; ++i) ok.op(']');
  for (int i = 0; i < 499; ++i) ok.op('a');
  ok.stop();
  EXPECT_EQ(error_of(ok.s), "(no error)");
}

TEST(PickleDefects, UnknownAndRefusedOpcodes) {
  EXPECT_NE(error_of(PB().proto(2).op(0xff).s).find("unknown opcode 0xff"), std::string::npos);
  EXPECT_NE(error_of(PB().proto(2).op(0x82).u8(1).stop().s).find("EXT1: the copyreg extension registry is not supported"),
            std::string::npos);
  EXPECT_NE(error_of(PB().proto(5).op(0x97).stop().s).find("NEXT_BUFFER: out-of-band pickle buffers are not supported"),
            std::string::npos);
  EXPECT_NE(error_of(PB().proto(9).stop().s).find("unsupported pickle protocol 9"), std::string::npos);
}

TEST(PickleDefects, WrongTargets) {
  EXPECT_NE(error_of(PB().proto(2).binint1(1).binint1(2).op('a').stop().s).find("APPEND target is a int, not a list"),
            std::string::npos);
  EXPECT_NE(error_of(PB().proto(2).op('}').op('(').binint1(1).op('u').stop().s).find("odd number of items"), std::string::npos);
  EXPECT_NE(error_of(PB().proto(2).global("m", "f").binint1(1).op('R').stop().s).find("REDUCE arguments are a int"),
            std::string::npos);
}

TEST(PickleDefects, SharedReferenceBombRendersAsAPlaceholder) {
  // x = []; then 64 times: x = [x, x]  -> 2^65 - 1 nodes when expanded.
  PB p;
  p.proto(2).op(']');
  for (int i = 0; i < 64; ++i) p.op('q').u8(0).op('h').u8(0).op(0x86);
  p.stop();
  auto doc = unpickle(p.s);
  RenderBudget b;
  b.nodes_left = 100000;
  auto j = to_json(*doc.root, b);
  ASSERT_TRUE(j.contains("__too_large__")) << j.dump();
  EXPECT_EQ(j["__too_large__"]["class"], "tuple");
  EXPECT_EQ(j["__too_large__"]["nodes"], UINT64_MAX);  // saturated
  EXPECT_EQ(b.placeholders, 1u);
  EXPECT_EQ(b.last_placeholder, "tuple, 18446744073709551615 nodes");
}

TEST(PickleDefects, PlaceholderCountsTheNodesTheRenderingWouldHave) {
  // ["lol"], then 5 times a list of 10 references to the level below: 2 * 10^5 + 11111 nodes.
  PB p;
  p.proto(2).op(']').op('q').u8(0).binunicode("lol").op('a');
  for (int i = 1; i <= 5; ++i) {
    p.op('0').op(']').op('q').u8(static_cast<uint8_t>(i)).op('(');  // the level below stays in the memo
    for (int k = 0; k < 10; ++k) p.op('h').u8(static_cast<uint8_t>(i - 1));
    p.op('e');
  }
  p.stop();
  auto doc = unpickle(p.s);
  RenderBudget b;
  b.value_nodes = 1000;
  auto j = to_json(*doc.root, b);
  ASSERT_TRUE(j.contains("__too_large__")) << j.dump().substr(0, 200);
  EXPECT_EQ(j["__too_large__"]["class"], "list");
  EXPECT_EQ(j["__too_large__"]["nodes"], 211111u);
  // With room, the same value renders in full (the count is what render() produces).
  RenderBudget big;
  big.value_nodes = 211111;
  auto full = to_json(*doc.root, big);
  EXPECT_EQ(full.size(), 10u);
  EXPECT_EQ(full[9][9][9][9][9][0], "lol");
  EXPECT_EQ(big.placeholders, 0u);
  EXPECT_EQ(big.nodes_left, RenderBudget{}.nodes_left - 211111);
  // Text counts too: 10^5 "lol"s are 300,000 bytes.
  RenderBudget text;
  text.value_text = 299999;
  EXPECT_TRUE(to_json(*doc.root, text).contains("__too_large__"));
}

TEST(PickleDefects, MutatedInputsNeverCrash) {
  PB p;
  p.proto(2).global("collections", "OrderedDict").op('q').u8(0).op(')').op('R').op('(').binunicode("a")
      .global("m", "C").op(')').op(0x81).op('}').binunicode("k").op(']').binint1(1).op('a').op('s').op('b')
      .binunicode("b").op('h').u8(0).op('u').stop();
  ASSERT_EQ(error_of(p.s), "(no error)");
  std::mt19937 rng(1234);
  int ok = 0, refused = 0;
  for (int iter = 0; iter < 20000; ++iter) {
    std::string m = p.s;
    int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits; ++e) {
      size_t at = rng() % m.size();
      switch (rng() % 3) {
        case 0: m[at] = static_cast<char>(rng()); break;
        case 1: m.erase(at, 1 + rng() % 3); break;
        default: m.insert(at, 1, static_cast<char>(rng()));
      }
      if (m.empty()) m = "\x80";
    }
    (error_of(m) == "(no error)" ? ok : refused)++;
  }
  EXPECT_GT(refused, 0);
  EXPECT_EQ(ok + refused, 20000);
}

// ---------------------------------------------------------------------------------------------
// Compactor: instances replaced by records while unpickling; the memo stays exact.

namespace {

struct ChunkCompactor : Compactor {
  std::vector<std::pair<int64_t, int64_t>> recs;  // offsets[0], sizes[0]
  bool wants(const Value& cls) override { return cls.name() == "Chunk"; }
  int64_t compact(const Value& obj) override {
    const Value* st = obj.state;
    if (!st || !st->is(Kind::Dict)) return -1;
    const Value* o = st->get("offsets");
    const Value* s = st->get("sizes");
    if (!o || !s || !o->is(Kind::Tuple) || !s->is(Kind::Tuple) || o->items.size() != 1 || s->items.size() != 1)
      return -1;
    recs.emplace_back(o->items[0]->i, s->items[0]->i);
    return static_cast<int64_t>(recs.size() - 1);
  }
};

Document unpickle_compacting(const std::string& bytes, ChunkCompactor& c) {
  Limits l;
  l.compactor = &c;
  return unpickle(bytes, l);
}

}  // namespace

TEST(PickleCompactor, SharedInstanceAndStringsMadeInItsWindowStayExact) {
  // python3: c = Chunk(offsets=(5000,), sizes=(7000,)); pickle.dumps({'list': [c, c, c],
  // 'name': 'offsets'}, 2): the instance is fetched twice from the memo, and the string 'offsets'
  // (first made inside the instance's state) once more after it.
  const std::string a(
      "\x80\x02\x7d\x71\x00\x28\x58\x04\x00\x00\x00\x6c\x69\x73\x74\x71\x01\x5d\x71\x02\x28\x63\x6d\x0a\x43\x68\x75"
      "\x6e\x6b\x0a\x71\x03\x29\x81\x71\x04\x7d\x71\x05\x28\x58\x07\x00\x00\x00\x6f\x66\x66\x73\x65\x74\x73\x71\x06"
      "\x4d\x88\x13\x85\x71\x07\x58\x05\x00\x00\x00\x73\x69\x7a\x65\x73\x71\x08\x4d\x58\x1b\x85\x71\x09\x75\x62\x68"
      "\x04\x68\x04\x65\x58\x04\x00\x00\x00\x6e\x61\x6d\x65\x71\x0a\x68\x06\x75\x2e",
      100);
  ChunkCompactor c;
  auto doc = unpickle_compacting(a, c);
  ASSERT_EQ(c.recs.size(), 1u);
  EXPECT_EQ(c.recs[0], std::make_pair(int64_t{5000}, int64_t{7000}));
  const Value* list = doc.root->get("list");
  ASSERT_TRUE(list && list->is(Kind::List));
  ASSERT_EQ(list->items.size(), 3u);
  for (const Value* x : list->items) {
    EXPECT_EQ(x, list->items[0]);
    EXPECT_EQ(x->tag, Tag::Compacted);
    EXPECT_EQ(x->i, 0);
    EXPECT_EQ(x->qualified_name(), "m.Chunk");
  }
  const Value* name = doc.root->get("name");
  ASSERT_TRUE(name && name->is(Kind::Str));
  EXPECT_EQ(std::string(name->str), "offsets");
  // Without a compactor: the same document as plain values.
  EXPECT_EQ(load(a)["name"], "offsets");
}

TEST(PickleCompactor, ReferringAgainToAFreedPartIsAConflict) {
  // t = (5000,); c = Chunk(offsets=t, sizes=(7000,)); pickle.dumps([c, t], 2)
  const std::string b(
      "\x80\x02\x5d\x71\x00\x28\x63\x6d\x0a\x43\x68\x75\x6e\x6b\x0a\x71\x01\x29\x81\x71\x02\x7d\x71\x03\x28\x58\x07"
      "\x00\x00\x00\x6f\x66\x66\x73\x65\x74\x73\x71\x04\x4d\x88\x13\x85\x71\x05\x58\x05\x00\x00\x00\x73\x69\x7a\x65"
      "\x73\x71\x06\x4d\x58\x1b\x85\x71\x07\x75\x62\x68\x05\x65\x2e",
      69);
  ChunkCompactor c;
  EXPECT_THROW(unpickle_compacting(b, c), CompactionConflict);
  EXPECT_EQ(load(b)[1], J::array({5000}));
}

TEST(PickleCompactor, AnOlderContainerChangedInTheWindowKeepsTheValues) {
  // L = []; c = Chunk(); L.append(5000) between c's NEWOBJ and its BUILD; then L.append(c):
  // freeing the window would free the 5000 that L now holds.
  PB p;
  p.proto(2).op(']').op('q').u8(0).global("m", "Chunk").op(')').op(0x81);
  p.op('h').u8(0).op('M').le(5000, 2).op('a').op('0');
  p.op('}').binunicode("offsets").op('M').le(5000, 2).op(0x85).op('s');
  p.binunicode("sizes").op('M').le(7000, 2).op(0x85).op('s').op('b');
  p.op('a').stop();
  ChunkCompactor c;
  auto doc = unpickle_compacting(p.s, c);
  EXPECT_TRUE(c.recs.empty());
  ASSERT_EQ(doc.root->items.size(), 2u);
  EXPECT_TRUE(doc.root->items[0]->is(Kind::Int));
  EXPECT_EQ(doc.root->items[0]->i, 5000);
  EXPECT_NE(doc.root->items[1]->tag, Tag::Compacted);
  EXPECT_EQ(to_json(*doc.root)[1]["state"]["sizes"], J::array({7000}));
}

TEST(PickleCompactor, AGlobalFirstMadeInTheWindowKeepsTheValues) {
  // c = Chunk(offsets=(5000,), sizes=(7000,), kind=G); pickle.dumps([c, G], 2): the global m.G
  // is first resolved (and cached for the whole stream) inside c's window.
  const std::string d(
      "\x80\x02\x5d\x71\x00\x28\x63\x6d\x0a\x43\x68\x75\x6e\x6b\x0a\x71\x01\x29\x81\x71\x02\x7d\x71\x03\x28\x58\x07"
      "\x00\x00\x00\x6f\x66\x66\x73\x65\x74\x73\x71\x04\x4d\x88\x13\x85\x71\x05\x58\x05\x00\x00\x00\x73\x69\x7a\x65"
      "\x73\x71\x06\x4d\x58\x1b\x85\x71\x07\x58\x04\x00\x00\x00\x6b\x69\x6e\x64\x71\x08\x63\x6d\x0a\x47\x0a\x71\x09"
      "\x75\x62\x68\x09\x65\x2e",
      87);
  ChunkCompactor c;
  auto doc = unpickle_compacting(d, c);
  EXPECT_TRUE(c.recs.empty());
  ASSERT_EQ(doc.root->items.size(), 2u);
  EXPECT_TRUE(doc.root->items[1]->is_global("m", "G"));
  EXPECT_EQ(to_json(*doc.root), load(d));
}
