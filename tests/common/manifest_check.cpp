#include "tests/common/manifest_check.h"

#include <openssl/evp.h>

#include <cctype>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace nemofs::testing {

std::string data_path(const std::string& rel) { return std::string(NEMOFS_TEST_DATA_DIR) + "/" + rel; }

std::string sha256_hex(const std::string& bytes) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(bytes.data(), bytes.size(), md, &len, EVP_sha256(), nullptr);
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned i = 0; i < len; ++i) {
    out += hex[md[i] >> 4];
    out += hex[md[i] & 15];
  }
  return out;
}

std::string read_whole_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot open " + path);
  std::ostringstream ss;
  ss << f.rdbuf();
  if (f.bad()) throw std::runtime_error("cannot read " + path);
  return ss.str();
}

const nlohmann::json& manifest() {
  static const nlohmann::json m = nlohmann::json::parse(read_whole_file(data_path("real/manifest.json")));
  return m;
}

const nlohmann::json& fixture(const std::string& file) {
  for (const auto& f : manifest().at("fixtures"))
    if (f.at("file") == file) return f;
  throw std::runtime_error("no fixture " + file + " in manifest.json");
}

std::vector<std::string> all_fixture_files() {
  std::vector<std::string> out;
  for (const auto& f : manifest().at("fixtures")) out.push_back(f.at("file").get<std::string>());
  return out;
}

std::string fixture_test_name(const std::string& file) {
  std::string s = file;
  for (char& c : s)
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  return s;
}

View tree_view(const Tree& tree) {
  return View{[&tree](const std::string& path) -> std::optional<std::string> {
    auto id = tree.resolve(path);
    if (!id || tree.node(*id).type != NodeType::File) return std::nullopt;
    const auto& src = *tree.node(*id).data;
    std::string out(src.size(), '\0');
    size_t got = src.read_at(0, out.data(), out.size());
    out.resize(got);
    return out;
  }};
}

View dir_view(const std::string& root) {
  return View{[root](const std::string& path) -> std::optional<std::string> {
    std::ifstream f(root + "/" + path, std::ios::binary);
    if (!f) return std::nullopt;
    std::ostringstream ss;
    ss << f.rdbuf();
    if (f.bad()) return std::nullopt;
    return ss.str();
  }};
}

std::vector<std::string> check_files(const View& view, const nlohmann::json& fx) {
  std::vector<std::string> bad;
  if (!fx.contains("files")) return bad;
  for (const auto& [path, sha] : fx.at("files").items()) {
    auto bytes = view.read_file(path);
    if (!bytes) bad.push_back("member missing: " + path);
    else if (sha256_hex(*bytes) != sha.get<std::string>()) bad.push_back("member bytes differ: " + path);
  }
  return bad;
}

std::vector<std::string> check_tensors_and_values(const View& view, const nlohmann::json& fx, const std::string& prefix) {
  std::vector<std::string> bad;
  if (fx.contains("tensors") && fx.at("tensors").is_object()) {
    for (const auto& [rel, want] : fx.at("tensors").items()) {
      std::string path = prefix + rel;
      auto bytes = view.read_file(path);
      if (!bytes) {
        bad.push_back("tensor missing: " + path);
        continue;
      }
      if (bytes->size() != want.at("nbytes").get<uint64_t>())
        bad.push_back("tensor size " + std::to_string(bytes->size()) + " != " + want.at("nbytes").dump() + ": " + path);
      else if (sha256_hex(*bytes) != want.at("sha256").get<std::string>())
        bad.push_back("tensor bytes differ: " + path);
      auto side = view.read_file(path + ".json");
      if (!side) {
        bad.push_back("sidecar missing: " + path + ".json");
        continue;
      }
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(*side);
      } catch (const std::exception& e) {
        bad.push_back("sidecar not JSON: " + path + ".json: " + e.what());
        continue;
      }
      for (const char* k : {"dtype", "shape", "nbytes"})
        if (!j.contains(k) || j.at(k) != want.at(k))
          bad.push_back(std::string("sidecar ") + k + " " + (j.contains(k) ? j.at(k).dump() : "absent") +
                        " != " + want.at(k).dump() + ": " + path + ".json");
    }
  }
  if (fx.contains("values") && fx.at("values").is_object()) {
    for (const auto& [rel, want] : fx.at("values").items()) {
      std::string path = prefix + rel;
      auto bytes = view.read_file(path);
      if (!bytes) {
        bad.push_back("value missing: " + path);
        continue;
      }
      if (want.is_null()) continue;
      try {
        auto got = nlohmann::json::parse(*bytes);
        if (got != want) bad.push_back("value differs: " + path + ": got " + got.dump() + " want " + want.dump());
      } catch (const std::exception& e) {
        bad.push_back("value not JSON: " + path + ": " + e.what());
      }
    }
  }
  return bad;
}

std::vector<std::string> check_against_manifest(const View& view, const nlohmann::json& fx, const std::string& prefix) {
  auto bad = check_tensors_and_values(view, fx, prefix);
  if (prefix.empty()) {
    auto more = check_files(view, fx);
    bad.insert(bad.end(), more.begin(), more.end());
  }
  return bad;
}

}  // namespace nemofs::testing
