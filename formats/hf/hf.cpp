#include "formats/hf/hf.h"

#include <map>
#include <set>

#include "formats/core/errors.h"
#include "formats/core/strict_json.h"
#include "formats/safetensors/safetensors.h"

namespace nemofs {
namespace {

constexpr const char* kFmt = "hf";

bool is_safetensors_name(const std::string& f) {
  return f.find('/') == std::string::npos && f.size() > 12 && f.compare(f.size() - 12, 12, ".safetensors") == 0;
}

std::string squote(const std::string& s) { return "'" + s + "'"; }

// A weight_map value names a file relative to the folder; nothing may climb out of it.
void check_shard_name(const std::string& name) {
  if (name.empty() || name[0] == '/') throw FormatError(kFmt, kHfIndexName + std::string(": shard name ") + squote(name) + " is not a relative file name");
  size_t i = 0;
  while (i <= name.size()) {
    size_t j = name.find('/', i);
    if (j == std::string::npos) j = name.size();
    std::string comp = name.substr(i, j - i);
    if (comp == ".." || comp == "." || comp.empty())
      throw FormatError(kFmt, kHfIndexName + std::string(": shard name ") + squote(name) + " is not a plain relative path");
    i = j + 1;
  }
}

struct Shard {
  std::string name;
  SourcePtr src;
  SafetensorsHeader header;
};

}  // namespace

void build_hf(Tree& tree, NodeId dir, const FileSet& files, std::vector<std::string>* warnings) {
  std::vector<std::string> listing = files.list();
  std::set<std::string> present_st;
  bool has_index = false;
  for (const auto& f : listing) {
    if (f == kHfIndexName) has_index = true;
    if (is_safetensors_name(f)) present_st.insert(f);
  }

  std::vector<std::string> shard_names;
  std::map<std::string, std::string> weight_map;
  std::optional<nlohmann::json> metadata;
  if (has_index) {
    SourcePtr idx = files.open(kHfIndexName);
    if (!idx) throw FormatError(kFmt, std::string(kHfIndexName) + ": cannot be opened");
    if (idx->size() > 100'000'000) throw FormatError(kFmt, 0, std::string(kHfIndexName) + " is larger than 100 MB");
    std::string text = read_exact(*idx, 0, static_cast<size_t>(idx->size()), kFmt);
    nlohmann::json doc;
    try {
      doc = parse_strict_json(text, kFmt, 0);
    } catch (const FormatError& e) {
      throw FormatError(kFmt, e.offset(), std::string(kHfIndexName) + ": " + e.detail());
    }
    if (!doc.is_object()) throw FormatError(kFmt, 0, std::string(kHfIndexName) + " is not a JSON object");
    auto wm = doc.find("weight_map");
    if (wm == doc.end()) throw FormatError(kFmt, 0, std::string(kHfIndexName) + " has no \"weight_map\"");
    if (!wm->is_object()) throw FormatError(kFmt, 0, std::string(kHfIndexName) + ": \"weight_map\" is not a JSON object");
    std::set<std::string> named;
    for (auto it = wm->begin(); it != wm->end(); ++it) {
      if (!it.value().is_string())
        throw FormatError(kFmt, 0, std::string(kHfIndexName) + ": weight_map entry " + squote(it.key()) + " is not a file name string");
      std::string shard = it.value().get<std::string>();
      check_shard_name(shard);
      weight_map[it.key()] = shard;
      if (named.insert(shard).second) shard_names.push_back(shard);
    }
    if (auto md = doc.find("metadata"); md != doc.end() && !md->is_null()) {
      if (!md->is_object()) throw FormatError(kFmt, 0, std::string(kHfIndexName) + ": \"metadata\" is not a JSON object");
      metadata = *md;
    }
    for (const auto& f : present_st)
      if (!named.count(f) && warnings)
        warnings->push_back(f + ": not named in " + kHfIndexName + ", not shown");
  } else {
    shard_names.assign(present_st.begin(), present_st.end());
  }
  std::sort(shard_names.begin(), shard_names.end());
  if (shard_names.empty()) throw FormatError(kFmt, files.describe() + ": no safetensors shards");

  std::vector<Shard> shards;
  std::map<std::string, std::string> owner;  // tensor -> shard
  for (const auto& name : shard_names) {
    Shard s;
    s.name = name;
    s.src = files.open(name);
    if (!s.src) throw FormatError(kFmt, std::string(kHfIndexName) + ": shard " + squote(name) + " does not exist");
    try {
      s.header = parse_safetensors(*s.src);
    } catch (const FormatError& e) {
      throw FormatError(e.format(), e.offset(), "shard " + squote(name) + ": " + e.detail());
    }
    for (const auto& t : s.header.tensors) {
      auto [it, fresh] = owner.emplace(t.name, name);
      if (!fresh)
        throw FormatError(kFmt, "tensor " + squote(t.name) + " is in two shards: " + squote(it->second) + " and " + squote(name));
    }
    shards.push_back(std::move(s));
  }
  for (const auto& [tensor, shard] : weight_map) {
    auto it = owner.find(tensor);
    if (it == owner.end() || it->second != shard)
      throw FormatError(kFmt, std::string(kHfIndexName) + ": weight_map puts tensor " + squote(tensor) + " in " + squote(shard) +
                                  (it == owner.end() ? ", but no shard holds it" : ", but it is in " + squote(it->second)));
  }

  if (!has_index) {
    bool same = true;
    for (const auto& s : shards) same = same && s.header.metadata && *s.header.metadata == *shards.front().header.metadata;
    if (same) metadata = shards.front().header.metadata;
  }

  std::set<std::string> names;
  auto claim = [&](const std::string& file, const std::string& why) {
    if (!names.insert(file).second) throw FormatError(kFmt, "two files would be named " + squote(file) + " (" + why + ")");
  };
  if (metadata) claim("__metadata__.json", "the metadata");
  for (const auto& s : shards)
    for (const auto& t : s.header.tensors) {
      std::string f = escape_key(t.name);
      claim(f, "tensor " + squote(t.name));
      claim(f + ".json", "sidecar of tensor " + squote(t.name));
    }
  for (const auto& s : shards)
    for (const auto& t : s.header.tensors) {
      TensorMeta m = safetensors_meta(t);
      m.extra["shard"] = s.name;
      add_tensor(tree, dir, t.name, make_sub(s.src, s.header.data_start + t.begin, t.nbytes, s.name + ":" + t.name), m);
    }
  if (metadata) add_json(tree, dir, "__metadata__", *metadata);
}

}  // namespace nemofs
