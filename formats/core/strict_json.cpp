#include "formats/core/strict_json.h"

#include <set>
#include <string>
#include <vector>

#include "formats/core/errors.h"

namespace nemofs {

namespace {

constexpr int kMaxDepth = 128;

struct Refusal {
  std::string detail;
};

}  // namespace

nlohmann::json parse_strict_json(std::string_view text, const char* format, uint64_t base_offset) {
  if (auto bad = find_invalid_utf8(text))
    throw FormatError(format, base_offset + *bad, "JSON is not valid UTF-8 (byte " + std::to_string(*bad) + " of the text)");
  std::vector<std::set<std::string>> keys;  // one set per open object; arrays push nothing
  std::vector<bool> is_object;              // open containers, innermost last
  auto cb = [&](int depth, nlohmann::json::parse_event_t ev, nlohmann::json& parsed) -> bool {
    using E = nlohmann::json::parse_event_t;
    switch (ev) {
      case E::object_start:
      case E::array_start:
        if (depth >= kMaxDepth) throw Refusal{"JSON nests deeper than " + std::to_string(kMaxDepth) + " levels"};
        is_object.push_back(ev == E::object_start);
        if (ev == E::object_start) keys.emplace_back();
        break;
      case E::object_end:
      case E::array_end:
        if (!is_object.empty()) {
          if (is_object.back()) keys.pop_back();
          is_object.pop_back();
        }
        break;
      case E::key:
        if (!keys.empty() && !keys.back().insert(parsed.get<std::string>()).second)
          throw Refusal{"duplicate key \"" + parsed.get<std::string>() + "\" in a JSON object"};
        break;
      case E::value:
        break;
    }
    return true;
  };
  try {
    return nlohmann::json::parse(text.begin(), text.end(), cb, /*allow_exceptions=*/true, /*ignore_comments=*/false);
  } catch (const Refusal& r) {
    throw FormatError(format, base_offset, r.detail);
  } catch (const nlohmann::json::parse_error& e) {
    uint64_t at = base_offset + (e.byte > 0 ? e.byte - 1 : 0);
    std::string what = e.what();
    // "[json.exception.parse_error.101] parse error at line 1, column 2: ..." -> keep the explanation.
    if (auto p = what.find(": "); p != std::string::npos) what = what.substr(p + 2);
    throw FormatError(format, at, "malformed JSON: " + what);
  } catch (const nlohmann::json::exception& e) {
    // Found by fuzzing: a number too large for a double ("1e512") is out_of_range 406, not a
    // parse_error. serde_json refuses it too.
    std::string what = e.what();
    if (auto p = what.find("] "); p != std::string::npos) what = what.substr(p + 2);
    throw FormatError(format, base_offset, "JSON value out of range (" + what + ")");
  }
}

}  // namespace nemofs
