// Test-only writers for the bytes torch.save produces: pickle opcodes, torch-style zips (64-byte
// aligned stored entries, zeroed local sizes + data descriptors, zip64 end records) and legacy
// streams. Header-only so unit tests, fuzz seeds and benchmarks can share it.
#pragma once

#include <zlib.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace nemofs::testing {

// Builds pickle bytes opcode by opcode.
struct PickleBuilder {
  std::string s;
  PickleBuilder& op(uint8_t c) { s += static_cast<char>(c); return *this; }
  PickleBuilder& u8(uint8_t v) { return op(v); }
  PickleBuilder& le(uint64_t v, int n) {
    for (int i = 0; i < n; ++i) s += static_cast<char>((v >> (8 * i)) & 0xFF);
    return *this;
  }
  PickleBuilder& raw(std::string_view r) { s.append(r); return *this; }
  PickleBuilder& proto(int v) { return op(0x80).u8(static_cast<uint8_t>(v)); }
  PickleBuilder& str(std::string_view t) { return op('X').le(t.size(), 4).raw(t); }
  PickleBuilder& integer(int64_t v) {
    if (v >= 0 && v < 256) return op('K').u8(static_cast<uint8_t>(v));
    if (v >= 0 && v < 65536) return op('M').le(static_cast<uint64_t>(v), 2);
    if (v >= INT32_MIN && v <= INT32_MAX) return op('J').le(static_cast<uint32_t>(v), 4);
    return op(0x8a).u8(8).le(static_cast<uint64_t>(v), 8);
  }
  PickleBuilder& global(std::string_view m, std::string_view n) { return op('c').raw(m).raw("\n").raw(n).raw("\n"); }
  PickleBuilder& ints(const std::vector<int64_t>& v) {
    op('(');
    for (int64_t x : v) integer(x);
    return op('t');
  }
  PickleBuilder& stop() { return op('.'); }

  // _rebuild_tensor_v2(storage pid, offset, size, stride, False, OrderedDict()[, metadata]) as torch
  // writes it; `storage_class` like "FloatStorage"; `extra_pid` appends a legacy 6th pid element.
  PickleBuilder& tensor_v2(std::string_view storage_class, std::string_view key, int64_t numel, int64_t offset,
                           const std::vector<int64_t>& shape, const std::vector<int64_t>& stride,
                           bool legacy_pid = false, std::string_view metadata_key = {}) {
    global("torch._utils", "_rebuild_tensor_v2");
    op('(');
    op('(').str("storage").global("torch", storage_class).str(key).str("cpu").integer(numel);
    if (legacy_pid) op('N');
    op('t').op('Q');
    integer(offset).ints(shape).ints(stride).op(0x89).global("collections", "OrderedDict").op(')').op('R');
    if (!metadata_key.empty()) op('}').str(metadata_key).op(0x88).op('s');
    return op('t').op('R');
  }
  PickleBuilder& tensor_v3(std::string_view dtype, std::string_view key, int64_t nbytes, int64_t offset,
                           const std::vector<int64_t>& shape, const std::vector<int64_t>& stride) {
    global("torch._utils", "_rebuild_tensor_v3");
    op('(');
    op('(').str("storage").global("torch.storage", "UntypedStorage").str(key).str("cpu").integer(nbytes).op('t').op('Q');
    integer(offset).ints(shape).ints(stride).op(0x89).global("collections", "OrderedDict").op(')').op('R');
    global("torch", dtype);
    return op('t').op('R');
  }
};

struct ZipWriterOptions {
  bool force_zip64_extras = false;  // every central entry carries zip64 sizes and offset
  bool deflate = false;             // deflate every non-empty entry
  std::string stub;                 // bytes before the zip (offsets stay relative to the zip)
};

inline void put_le(std::string& s, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) s += static_cast<char>((v >> (8 * i)) & 0xFF);
}

inline std::string raw_deflate(const std::string& in) {
  z_stream zs{};
  deflateInit2(&zs, 6, Z_DEFLATED, -MAX_WBITS, 8, Z_DEFAULT_STRATEGY);
  std::string out(deflateBound(&zs, in.size()) + 16, '\0');
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  zs.avail_in = static_cast<uInt>(in.size());
  zs.next_out = reinterpret_cast<Bytef*>(out.data());
  zs.avail_out = static_cast<uInt>(out.size());
  deflate(&zs, Z_FINISH);
  out.resize(zs.total_out);
  deflateEnd(&zs);
  return out;
}

// A zip laid out the way PyTorchStreamWriter writes it.
inline std::string torch_zip(const std::vector<std::pair<std::string, std::string>>& entries,
                             const ZipWriterOptions& o = {}) {
  struct Cd {
    std::string name;
    uint64_t lho, csize, usize;
    uint32_t crc;
    uint16_t method;
  };
  std::string z;
  std::vector<Cd> cd;
  for (const auto& [name, data] : entries) {
    bool defl = o.deflate && !data.empty();
    std::string body = defl ? raw_deflate(data) : data;
    uint32_t crc = static_cast<uint32_t>(crc32(0, reinterpret_cast<const Bytef*>(data.data()), static_cast<uInt>(data.size())));
    uint64_t lho = z.size();
    size_t start = lho + 30 + name.size() + 4;
    size_t pad = (64 - start % 64) % 64;
    z += "PK\x03\x04";
    put_le(z, 20, 2);
    put_le(z, data.empty() ? 0x0800 : 0x0808, 2);
    put_le(z, defl ? 8 : 0, 2);
    put_le(z, 0, 4);  // time, date
    put_le(z, 0, 4);  // crc (in the descriptor)
    put_le(z, 0, 4);
    put_le(z, 0, 4);
    put_le(z, name.size(), 2);
    put_le(z, 4 + pad, 2);
    z += name;
    z += "FB";
    put_le(z, pad, 2);
    z += std::string(pad, 'Z');
    z += body;
    if (!data.empty()) {
      z += "PK\x07\x08";
      put_le(z, crc, 4);
      put_le(z, body.size(), 4);
      put_le(z, data.size(), 4);
    }
    cd.push_back({name, lho, body.size(), data.size(), crc, static_cast<uint16_t>(defl ? 8 : 0)});
  }
  uint64_t cd_at = z.size();
  for (const auto& c : cd) {
    std::string extra;
    if (o.force_zip64_extras) {
      put_le(extra, 1, 2);
      put_le(extra, 24, 2);
      put_le(extra, c.usize, 8);
      put_le(extra, c.csize, 8);
      put_le(extra, c.lho, 8);
    }
    uint32_t big = 0xFFFFFFFF;
    z += "PK\x01\x02";
    put_le(z, 0, 2);
    put_le(z, 0, 2);
    put_le(z, c.usize ? 0x0808 : 0x0800, 2);
    put_le(z, c.method, 2);
    put_le(z, 0, 4);
    put_le(z, c.crc, 4);
    put_le(z, o.force_zip64_extras ? big : c.csize, 4);
    put_le(z, o.force_zip64_extras ? big : c.usize, 4);
    put_le(z, c.name.size(), 2);
    put_le(z, extra.size(), 2);
    put_le(z, 0, 2);  // comment
    put_le(z, 0, 2);  // disk
    put_le(z, 0, 2);
    put_le(z, 0, 4);
    put_le(z, o.force_zip64_extras ? big : c.lho, 4);
    z += c.name;
    z += extra;
  }
  uint64_t cd_size = z.size() - cd_at;
  uint64_t z64 = z.size();
  z += "PK\x06\x06";
  put_le(z, 44, 8);
  put_le(z, 0, 2);
  put_le(z, 0, 2);
  put_le(z, 0, 4);
  put_le(z, 0, 4);
  put_le(z, cd.size(), 8);
  put_le(z, cd.size(), 8);
  put_le(z, cd_size, 8);
  put_le(z, cd_at, 8);
  z += "PK\x06\x07";
  put_le(z, 0, 4);
  put_le(z, z64, 8);
  put_le(z, 1, 4);
  z += "PK\x05\x06";
  put_le(z, 0, 2);
  put_le(z, 0, 2);
  put_le(z, 0xFFFF, 2);
  put_le(z, 0xFFFF, 2);
  put_le(z, 0xFFFFFFFF, 4);
  put_le(z, 0xFFFFFFFF, 4);
  put_le(z, 0, 2);
  return o.stub + z;
}

// A torch.save zip: data.pkl, byteorder, data/<key> records, version.
inline std::string torch_save_zip(const std::string& pkl, const std::vector<std::pair<std::string, std::string>>& storages,
                                  const std::string& root = "archive", const std::string& byteorder = "little",
                                  const ZipWriterOptions& o = {}) {
  std::vector<std::pair<std::string, std::string>> e;
  e.emplace_back(root + "/data.pkl", pkl);
  if (!byteorder.empty()) e.emplace_back(root + "/byteorder", byteorder);
  for (const auto& [k, bytes] : storages) e.emplace_back(root + "/data/" + k, bytes);
  e.emplace_back(root + "/version", "3\n");
  return torch_zip(e, o);
}

}  // namespace nemofs::testing
