// Writes distributed-checkpoint bytes without torch, for tests, benchmarks and fuzz seeds:
// a `.metadata` pickle (protocol 4, the shape torch's pickle.dump gives: dataclasses as
// STACK_GLOBAL () NEWOBJ + BUILD(dict), TensorProperties state as a tuple, torch.Size as
// REDUCE(torch.Size, (tuple,)), enums as REDUCE(cls, (0,))) and minimal torch.save zips of one
// tensor (stored entries archive/data.pkl, archive/byteorder, archive/data/0, archive/version,
// data.pkl = _rebuild_tensor_v2(persistent storage id, 0, size, stride, False, OrderedDict())).
#pragma once

#include <cstdint>
#include <cstring>
#include <map>
#include <stdexcept>
#include <string>
#include <variant>
#include <vector>

namespace nemofs::testing::dcpw {

struct WChunk {
  std::vector<uint64_t> offsets, sizes;
  std::string file;
  uint64_t offset = 0, length = 0;
  std::vector<std::string> transforms;
};

struct WEntry {
  std::string fqn;
  bool tensor = true;
  std::string dtype = "float32";  // torch dtype attribute name
  std::vector<uint64_t> shape;
  std::vector<WChunk> chunks;
  // bytes entry storage
  std::string file;
  uint64_t offset = 0, length = 0;
  // planner_data path (empty: none recorded)
  std::vector<std::variant<std::string, int64_t>> path;
};

class PickleOut {
 public:
  std::string out;
  void op(uint8_t o) { out.push_back(static_cast<char>(o)); }
  void u32(uint32_t v) {
    for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  }
  void str(const std::string& s) {
    op(0x58);  // BINUNICODE
    u32(static_cast<uint32_t>(s.size()));
    out += s;
  }
  void integer(int64_t v) {
    if (v >= INT32_MIN && v <= INT32_MAX) {
      op('J');
      u32(static_cast<uint32_t>(static_cast<int32_t>(v)));
      return;
    }
    op(0x8a);  // LONG1, 8 bytes two's complement
    op(8);
    for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((static_cast<uint64_t>(v) >> (8 * i)) & 0xff));
  }
  // A global, memoized on first use and fetched with LONG_BINGET afterwards.
  void global(const std::string& module, const std::string& name) {
    auto key = module + "\n" + name;
    auto it = memo_.find(key);
    if (it != memo_.end()) {
      op('j');
      u32(it->second);
      return;
    }
    str(module);
    str(name);
    op(0x93);  // STACK_GLOBAL
    op(0x94);  // MEMOIZE
    memo_.emplace(key, next_++);
  }
  void size_tuple(const std::vector<uint64_t>& v) {
    global("torch", "Size");
    op('(');
    for (uint64_t x : v) integer(static_cast<int64_t>(x));
    op('t');
    op(0x85);  // TUPLE1
    op('R');
  }
  void newobj(const std::string& module, const std::string& cls) {
    global(module, cls);
    op(')');
    op(0x81);
  }

 private:
  std::map<std::string, uint32_t> memo_;
  uint32_t next_ = 0;
};

inline constexpr const char* kMeta = "torch.distributed.checkpoint.metadata";

inline std::string metadata_pickle(const std::vector<WEntry>& entries, bool with_planner_data = true) {
  PickleOut p;
  p.op(0x80);
  p.op(4);
  p.newobj(kMeta, "Metadata");
  p.op('}');
  p.op('(');
  p.str("state_dict_metadata");
  p.op('}');
  p.op('(');
  for (const auto& e : entries) {
    p.str(e.fqn);
    if (!e.tensor) {
      p.newobj(kMeta, "BytesStorageMetadata");
      continue;
    }
    p.newobj(kMeta, "TensorStorageMetadata");
    p.op('}');
    p.op('(');
    p.str("properties");
    p.newobj(kMeta, "TensorProperties");
    p.op('(');
    p.global("torch", e.dtype);
    p.global("torch.serialization", "_get_layout");
    p.str("torch.strided");
    p.op(0x85);
    p.op('R');
    p.op(0x89);  // NEWFALSE
    p.global(kMeta, "_MEM_FORMAT_ENCODING");
    p.integer(0);
    p.op(0x85);
    p.op('R');
    p.op(0x89);
    p.op('t');
    p.op('b');
    p.str("size");
    p.size_tuple(e.shape);
    p.str("chunks");
    p.op(']');
    p.op('(');
    for (const auto& c : e.chunks) {
      p.newobj(kMeta, "ChunkStorageMetadata");
      p.op('}');
      p.op('(');
      p.str("offsets");
      p.size_tuple(c.offsets);
      p.str("sizes");
      p.size_tuple(c.sizes);
      p.op('u');
      p.op('b');
    }
    p.op('e');  // APPENDS
    p.op('u');
    p.op('b');
  }
  p.op('u');
  if (with_planner_data) {
    p.str("planner_data");
    p.op('}');
    p.op('(');
    for (const auto& e : entries) {
      if (e.path.empty()) continue;
      p.str(e.fqn);
      p.op('(');
      for (const auto& x : e.path) {
        if (std::holds_alternative<std::string>(x)) p.str(std::get<std::string>(x));
        else p.integer(std::get<int64_t>(x));
      }
      p.op('t');
    }
    p.op('u');
  }
  p.str("storage_data");
  p.op('}');
  p.op('(');
  auto storage = [&](const std::string& file, uint64_t off, uint64_t len, const std::vector<std::string>& tr) {
    p.newobj("torch.distributed.checkpoint.filesystem", "_StorageInfo");
    p.op('}');
    p.op('(');
    p.str("relative_path");
    p.str(file);
    p.str("offset");
    p.integer(static_cast<int64_t>(off));
    p.str("length");
    p.integer(static_cast<int64_t>(len));
    if (!tr.empty()) {
      p.str("transform_descriptors");
      p.op(']');
      p.op('(');
      for (const auto& t : tr) p.str(t);
      p.op('e');
    }
    p.op('u');
    p.op('b');
  };
  for (const auto& e : entries) {
    if (!e.tensor) {
      p.newobj(kMeta, "MetadataIndex");
      p.op('}');
      p.op('(');
      p.str("fqn");
      p.str(e.fqn);
      p.op('u');
      p.op('b');
      storage(e.file, e.offset, e.length, {});
      continue;
    }
    for (size_t i = 0; i < e.chunks.size(); ++i) {
      const auto& c = e.chunks[i];
      if (c.file.empty()) continue;  // a chunk without a storage entry (a broken checkpoint)
      p.newobj(kMeta, "MetadataIndex");
      p.op('}');
      p.op('(');
      p.str("fqn");
      p.str(e.fqn);
      p.str("offset");
      p.size_tuple(c.offsets);
      p.str("index");
      p.integer(static_cast<int64_t>(i));
      p.op('u');
      p.op('b');
      storage(c.file, c.offset, c.length, c.transforms);
    }
  }
  p.op('u');
  p.str("version");
  p.str("1.0.0");
  p.op('u');
  p.op('b');
  p.op('.');
  return p.out;
}

inline const char* storage_class(const std::string& dtype) {
  static const std::map<std::string, const char*> m = {
      {"float32", "FloatStorage"}, {"float16", "HalfStorage"}, {"bfloat16", "BFloat16Storage"},
      {"float64", "DoubleStorage"}, {"int64", "LongStorage"},  {"int32", "IntStorage"},
      {"int16", "ShortStorage"},    {"int8", "CharStorage"},   {"uint8", "ByteStorage"},
      {"bool", "BoolStorage"}};
  auto it = m.find(dtype);
  if (it == m.end()) throw std::runtime_error("dcp_writer: no storage class for " + dtype);
  return it->second;
}

inline uint32_t dtype_size(const std::string& dtype) {
  if (dtype == "float64" || dtype == "int64") return 8;
  if (dtype == "float32" || dtype == "int32") return 4;
  if (dtype == "float16" || dtype == "bfloat16" || dtype == "int16") return 2;
  return 1;
}

// A stored zip of the given (name, bytes) records, offsets relative to its first byte.
inline std::string zip_of(const std::vector<std::pair<std::string, std::string>>& records) {
  std::string z, cd;
  auto u16 = [](std::string& s, uint16_t v) {
    s.push_back(static_cast<char>(v & 0xff));
    s.push_back(static_cast<char>(v >> 8));
  };
  auto u32 = [](std::string& s, uint32_t v) {
    for (int i = 0; i < 4; ++i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  };
  for (const auto& [name, data] : records) {
    uint32_t at = static_cast<uint32_t>(z.size());
    z += "PK\x03\x04";
    u16(z, 20); u16(z, 0); u16(z, 0); u16(z, 0); u16(z, 0);
    u32(z, 0); u32(z, static_cast<uint32_t>(data.size())); u32(z, static_cast<uint32_t>(data.size()));
    u16(z, static_cast<uint16_t>(name.size())); u16(z, 0);
    z += name;
    z += data;
    cd += "PK\x01\x02";
    u16(cd, 20); u16(cd, 20); u16(cd, 0); u16(cd, 0); u16(cd, 0); u16(cd, 0);
    u32(cd, 0); u32(cd, static_cast<uint32_t>(data.size())); u32(cd, static_cast<uint32_t>(data.size()));
    u16(cd, static_cast<uint16_t>(name.size())); u16(cd, 0); u16(cd, 0); u16(cd, 0); u16(cd, 0);
    u32(cd, 0); u32(cd, at);
    cd += name;
  }
  uint32_t cd_at = static_cast<uint32_t>(z.size());
  z += cd;
  z += "PK\x05\x06";
  u16(z, 0); u16(z, 0);
  u16(z, static_cast<uint16_t>(records.size())); u16(z, static_cast<uint16_t>(records.size()));
  u32(z, static_cast<uint32_t>(cd.size())); u32(z, cd_at);
  u16(z, 0);
  return z;
}

// torch.save(tensor) of a C-contiguous tensor (stride given explicitly when not empty: the bytes
// are then the storage, in stride order).
inline std::string torch_zip_tensor(const std::string& dtype, const std::vector<uint64_t>& shape, const std::string& bytes,
                                    std::vector<uint64_t> stride = {}) {
  if (stride.empty()) {
    stride.assign(shape.size(), 1);
    for (size_t d = shape.size(); d-- > 1;) stride[d - 1] = stride[d] * shape[d];
  }
  PickleOut p;
  p.op(0x80);
  p.op(2);
  p.op('c');
  p.out += "torch._utils\n_rebuild_tensor_v2\n";
  p.op('(');
  p.op('(');
  p.str("storage");
  p.op('c');
  p.out += std::string("torch\n") + storage_class(dtype) + "\n";
  p.str("0");
  p.str("cpu");
  p.integer(static_cast<int64_t>(bytes.size() / dtype_size(dtype)));
  p.op('t');
  p.op('Q');  // BINPERSID
  p.integer(0);
  p.op('(');
  for (uint64_t s : shape) p.integer(static_cast<int64_t>(s));
  p.op('t');
  p.op('(');
  for (uint64_t s : stride) p.integer(static_cast<int64_t>(s));
  p.op('t');
  p.op(0x89);
  p.op('c');
  p.out += "collections\nOrderedDict\n";
  p.op(')');
  p.op('R');
  p.op('t');
  p.op('R');
  p.op('.');
  return zip_of({{"archive/data.pkl", p.out}, {"archive/byteorder", "little"}, {"archive/data/0", bytes},
                 {"archive/version", "3\n"}});
}

// torch.save(obj) where obj is a str (a BYTE_IO item).
inline std::string torch_zip_str(const std::string& s) {
  PickleOut p;
  p.op(0x80);
  p.op(2);
  p.str(s);
  p.op('.');
  return zip_of({{"archive/data.pkl", p.out}, {"archive/byteorder", "little"}, {"archive/version", "3\n"}});
}

}  // namespace nemofs::testing::dcpw
