#include "fs/edit/yaml_check.h"

#include <cctype>
#include <cstdio>
#include <sstream>

#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

namespace nemofs {

bool is_junk_name(const std::string& n) {
  if (n.empty()) return false;
  if (n == "4913" || n == ".DS_Store") return true;
  if (n.back() == '~') return true;
  if (n.size() > 2 && n[0] == '.' && n[1] == '_') return true;
  // vim swap files: ".<name>.swp", ".swo", ... ".swa" (and ".sw?" generally)
  if (n[0] == '.' && n.size() >= 5) {
    std::string tail = n.substr(n.size() - 4);
    if (tail[0] == '.' && tail[1] == 's' && tail[2] == 'w' && std::isalpha(static_cast<unsigned char>(tail[3])))
      return true;
  }
  return false;
}

namespace {

// Records where each document starts; the events themselves are not needed.
class DocumentStarts final : public YAML::EventHandler {
 public:
  void OnDocumentStart(const YAML::Mark& mark) override { last = mark; }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t, const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {}
  void OnMapEnd() override {}
  YAML::Mark last = YAML::Mark::null_mark();
};

}  // namespace

std::optional<std::string> check_yaml(const std::string& label, const std::string& bytes) {
  auto at = [&](const YAML::Mark& m) {
    return m.is_null() ? label : label + ":" + std::to_string(m.line + 1) + ":" + std::to_string(m.column + 1);
  };
  try {
    // yaml-cpp 0.7's LoadAll loops forever, appending null documents, on a token no rule consumes
    // (a 1-byte "," is enough; fixed upstream after 0.8, yaml-cpp PR #1319). Walk the documents
    // first and refuse a document that starts where the previous one did: the parser is stuck.
    std::istringstream in(bytes);
    YAML::Parser parser(in);
    DocumentStarts docs;
    std::optional<int> prev;
    while (parser.HandleNextDocument(docs)) {
      if (prev && *prev == docs.last.pos) return at(docs.last) + ": unexpected character (not valid YAML here)";
      prev = docs.last.pos;
    }
    (void)YAML::LoadAll(bytes);
    return std::nullopt;
  } catch (const YAML::Exception& e) {
    // yaml-cpp quotes the offending input character (e.g. "unknown escape character: " + a raw
    // newline or ESC): escape control bytes so the refusal stays one printable line.
    std::string msg = e.msg.empty() ? std::string(e.what()) : e.msg, out;
    for (unsigned char c : msg) {
      if (c < 0x20 || c == 0x7f) {
        char hex[8];
        std::snprintf(hex, sizeof hex, "\\x%02x", c);
        out += hex;
      } else {
        out += static_cast<char>(c);
      }
    }
    return at(e.mark) + ": " + out;
  }
}

bool is_yaml_path(const std::string& p) {
  return (p.size() > 5 && p.compare(p.size() - 5, 5, ".yaml") == 0) || (p.size() > 4 && p.compare(p.size() - 4, 4, ".yml") == 0);
}

bool is_junk_path(const std::string& path) {
  size_t i = 0;
  while (i <= path.size()) {
    size_t k = path.find('/', i);
    if (k == std::string::npos) k = path.size();
    if (is_junk_name(path.substr(i, k - i))) return true;
    i = k + 1;
  }
  return false;
}

}  // namespace nemofs
