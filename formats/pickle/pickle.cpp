// The value model of pickle.h: Values and the Arena that owns them.
#include "formats/pickle/pickle.h"

#include <sys/mman.h>

#include <cstdlib>

#include "formats/pickle/internal.h"

namespace nemofs::pickle {

const char* detail::kind_name(Kind k) {
  switch (k) {
    case Kind::None: return "None";
    case Kind::Bool: return "bool";
    case Kind::Int: return "int";
    case Kind::BigInt: return "int";
    case Kind::Float: return "float";
    case Kind::Str: return "str";
    case Kind::Bytes: return "bytes";
    case Kind::List: return "list";
    case Kind::Tuple: return "tuple";
    case Kind::Dict: return "dict";
    case Kind::Set: return "set";
    case Kind::FrozenSet: return "frozenset";
    case Kind::Global: return "global";
    case Kind::Object: return "object";
    case Kind::PersistentId: return "persistent id";
  }
  return "?";
}

const Seq<Value*> Value::kNoItems;

std::string Value::qualified_name() const {
  if (kind == Kind::Global) return str.empty() ? name().str() : str + "." + name();
  if (kind == Kind::Object && cls && cls->kind == Kind::Global) return cls->qualified_name();
  return {};
}

const Value* Value::get(std::string_view key) const {
  if (kind != Kind::Dict) return nullptr;
  for (const auto& [k, v] : entries)
    if (k->kind == Kind::Str && k->str == key) return v;
  return nullptr;
}

Arena::~Arena() {
  for (const std::vector<Block>* list : {&blocks_, &vblocks_})
    for (const Block& b : *list) {
      if (b.size >= kMapped) ::munmap(b.base, b.size);
      else std::free(b.base);
    }
}

// Blocks this large come from mmap so that freeing a Document gives their pages back to the OS
// (malloc would keep them in its heap).
Arena::Block Arena::grab(size_t bytes) {
  void* p;
  constexpr size_t kHuge = 2 << 20;
  if (bytes >= kHuge && bytes % kHuge == 0) {
    // 2 MiB aligned and marked for transparent huge pages: far fewer page faults to fill it.
    const size_t len = bytes + kHuge;
    void* raw = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) throw std::bad_alloc();
    const auto r = reinterpret_cast<uintptr_t>(raw);
    const uintptr_t a = (r + kHuge - 1) & ~(kHuge - 1);
    if (a > r) ::munmap(raw, a - r);
    if (r + len > a + bytes) ::munmap(reinterpret_cast<void*>(a + bytes), r + len - (a + bytes));
    p = reinterpret_cast<void*>(a);
    ::madvise(p, bytes, MADV_HUGEPAGE);
  } else if (bytes >= kMapped) {
    p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
  } else {
    p = std::malloc(bytes);
    if (!p) throw std::bad_alloc();
  }
  return Block{static_cast<char*>(p), bytes};
}

void* Arena::alloc_slow(size_t n, size_t align) {
  const size_t next = next_ ? next_ : kFirstBlock;
  // An array or string larger than a quarter block gets a block of its own, so the current
  // block's free space is kept.
  if (n > next / 4) {
    Block b = grab(std::max<size_t>(n, 16));
    blocks_.insert(blocks_.empty() ? blocks_.end() : blocks_.end() - 1, b);
    if (blocks_.size() == 1) used_ = b.size;  // nothing else fits in it
    return b.base;
  }
  blocks_.push_back(grab(next));
  next_ = std::min(next * 2, kMaxBlock);
  used_ = n;  // the block's start is aligned for anything
  return blocks_.back().base;
}

void Arena::new_value_block() {
  size_t bytes = vblocks_.empty() ? kFirstBlock : std::min(vblocks_.back().size * 2, kMaxBlock);
  vblocks_.push_back(grab(bytes));
  vused_ = 0;
  vcap_ = bytes / sizeof(Value);
}

}  // namespace nemofs::pickle
