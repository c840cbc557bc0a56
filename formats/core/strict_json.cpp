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

// The strictness checks as a SAX pass that builds nothing. Not nlohmann's parser callback: its
// DOM builder scans the enclosing object after every nested one closes (quadratic: a safetensors
// header of 30,000 tensors took minutes).
class StrictSax final : public nlohmann::json_sax<nlohmann::json> {
 public:
  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }
  bool start_object(std::size_t) override {
    open(true);
    keys_.emplace_back();
    return true;
  }
  bool key(string_t& k) override {
    if (!keys_.empty() && !keys_.back().insert(k).second) throw Refusal{"duplicate key \"" + k + "\" in a JSON object"};
    return true;
  }
  bool end_object() override {
    if (!keys_.empty()) keys_.pop_back();
    depth_ = depth_ ? depth_ - 1 : 0;
    return true;
  }
  bool start_array(std::size_t) override {
    open(false);
    return true;
  }
  bool end_array() override {
    depth_ = depth_ ? depth_ - 1 : 0;
    return true;
  }
  // Malformed text: the DOM parse that follows reports it (with nlohmann's message).
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) override { return false; }

 private:
  void open(bool) {
    if (depth_ >= kMaxDepth) throw Refusal{"JSON nests deeper than " + std::to_string(kMaxDepth) + " levels"};
    ++depth_;
  }
  std::vector<std::set<std::string>> keys_;  // one set per open object
  int depth_ = 0;
};

}  // namespace

nlohmann::json parse_strict_json(std::string_view text, const char* format, uint64_t base_offset) {
  if (auto bad = find_invalid_utf8(text))
    throw FormatError(format, base_offset + *bad, "JSON is not valid UTF-8 (byte " + std::to_string(*bad) + " of the text)");
  try {
    StrictSax sax;
    nlohmann::json::sax_parse(text.begin(), text.end(), &sax, nlohmann::json::input_format_t::json, /*strict=*/true,
                              /*ignore_comments=*/false);
    return nlohmann::json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/true, /*ignore_comments=*/false);
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
