#include "formats/core/strict_json.h"

#include <algorithm>
#include <iterator>
#include <optional>
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

// The strictness checks as a SAX pass that builds nothing (or hands each event on to `inner`
// once it passed them). Not nlohmann's parser callback: its DOM builder scans the enclosing object
// after every nested one closes (quadratic: a safetensors header of 30,000 tensors took minutes).
class StrictSax final : public nlohmann::json_sax<nlohmann::json> {
 public:
  explicit StrictSax(nlohmann::json_sax<nlohmann::json>* inner = nullptr) : inner_(inner) {}
  bool null() override { return !inner_ || inner_->null(); }
  bool boolean(bool v) override { return !inner_ || inner_->boolean(v); }
  bool number_integer(number_integer_t v) override { return !inner_ || inner_->number_integer(v); }
  bool number_unsigned(number_unsigned_t v) override { return !inner_ || inner_->number_unsigned(v); }
  bool number_float(number_float_t v, const string_t& s) override { return !inner_ || inner_->number_float(v, s); }
  bool string(string_t& v) override { return !inner_ || inner_->string(v); }
  bool binary(binary_t& v) override { return !inner_ || inner_->binary(v); }
  bool start_object(std::size_t n) override {
    open(true);
    keys_.emplace_back();
    return !inner_ || inner_->start_object(n);
  }
  bool key(string_t& k) override {
    if (!keys_.empty() && !keys_.back().insert(k).second) throw Refusal{"duplicate key \"" + k + "\" in a JSON object"};
    return !inner_ || inner_->key(k);
  }
  bool end_object() override {
    if (!keys_.empty()) keys_.pop_back();
    depth_ = depth_ ? depth_ - 1 : 0;
    return !inner_ || inner_->end_object();
  }
  bool start_array(std::size_t n) override {
    open(false);
    return !inner_ || inner_->start_array(n);
  }
  bool end_array() override {
    depth_ = depth_ ? depth_ - 1 : 0;
    return !inner_ || inner_->end_array();
  }
  // Malformed text: without `inner` the DOM parse that follows reports it (with nlohmann's
  // message); with it, the error is kept for sax_strict_json to report the same way.
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) override {
    if (inner_) {
      if (const auto* pe = dynamic_cast<const nlohmann::json::parse_error*>(&e)) {
        error_byte_ = pe->byte;
        syntax_ = true;
      }
      error_ = e.what();
    }
    return false;
  }

  std::optional<std::string> error_;  // what() of the parse error (inner mode)
  bool syntax_ = false;               // a parse_error (else out_of_range: a number too large)
  std::size_t error_byte_ = 0;

 private:
  void open(bool) {
    if (depth_ >= kMaxDepth) throw Refusal{"JSON nests deeper than " + std::to_string(kMaxDepth) + " levels"};
    ++depth_;
  }
  nlohmann::json_sax<nlohmann::json>* inner_;
  std::vector<std::set<std::string>> keys_;  // one set per open object
  int depth_ = 0;
};

[[noreturn]] void malformed(const char* format, uint64_t base_offset, std::size_t byte, std::string what) {
  // "[json.exception.parse_error.101] parse error at line 1, column 2: ..." -> keep the explanation.
  if (auto p = what.find(": "); p != std::string::npos) what = what.substr(p + 2);
  throw FormatError(format, base_offset + (byte > 0 ? byte - 1 : 0), "malformed JSON: " + what);
}

[[noreturn]] void out_of_range(const char* format, uint64_t base_offset, std::string what) {
  // Found by fuzzing: a number too large for a double ("1e512") is out_of_range 406, not a
  // parse_error. serde_json refuses it too.
  if (auto p = what.find("] "); p != std::string::npos) what = what.substr(p + 2);
  throw FormatError(format, base_offset, "JSON value out of range (" + what + ")");
}

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
    malformed(format, base_offset, e.byte, e.what());
  } catch (const nlohmann::json::exception& e) {
    out_of_range(format, base_offset, e.what());
  }
}

namespace {

template <typename It>
void run_strict_sax(It first, It last, nlohmann::json_sax<nlohmann::json>& sax, const char* format,
                    uint64_t base_offset) {
  StrictSax strict(&sax);
  try {
    if (nlohmann::json::sax_parse(std::move(first), std::move(last), &strict, nlohmann::json::input_format_t::json,
                                  /*strict=*/true, /*ignore_comments=*/false))
      return;
  } catch (const Refusal& r) {
    throw FormatError(format, base_offset, r.detail);
  }
  if (!strict.error_) throw FormatError(format, base_offset, "JSON handler stopped the parse");
  if (strict.syntax_) malformed(format, base_offset, strict.error_byte_, *strict.error_);
  out_of_range(format, base_offset, *strict.error_);
}

constexpr size_t kBlock = 1 << 20;

// Bytes of a source range in blocks, as an input iterator (copies share the position; the end
// iterator is any one whose reader is done).
class BlockReader {
 public:
  BlockReader(const ByteSource& src, uint64_t offset, uint64_t len, const char* format)
      : src_(src), offset_(offset), len_(len), format_(format) {}
  bool done() const { return pos_ >= len_; }
  char get() {
    if (pos_ < at_ || pos_ >= at_ + buf_.size()) fill();
    return buf_[pos_ - at_];
  }
  void next() { ++pos_; }

 private:
  void fill() {
    at_ = pos_;
    buf_ = read_exact(src_, offset_ + pos_, static_cast<size_t>(std::min<uint64_t>(kBlock, len_ - pos_)), format_);
  }
  const ByteSource& src_;
  uint64_t offset_, len_, pos_ = 0, at_ = 0;
  const char* format_;
  std::string buf_;
};

struct BlockIterator {
  using iterator_category = std::input_iterator_tag;
  using value_type = char;
  using difference_type = std::ptrdiff_t;
  using pointer = const char*;
  using reference = char;
  BlockReader* r = nullptr;  // null: the end
  char operator*() const { return r->get(); }
  BlockIterator& operator++() {
    r->next();
    return *this;
  }
  bool at_end() const { return !r || r->done(); }
  bool operator==(const BlockIterator& o) const { return at_end() == o.at_end(); }
  bool operator!=(const BlockIterator& o) const { return !(*this == o); }
};

}  // namespace

void sax_strict_json(std::string_view text, nlohmann::json_sax<nlohmann::json>& sax, const char* format,
                     uint64_t base_offset) {
  if (auto bad = find_invalid_utf8(text))
    throw FormatError(format, base_offset + *bad, "JSON is not valid UTF-8 (byte " + std::to_string(*bad) + " of the text)");
  run_strict_sax(text.begin(), text.end(), sax, format, base_offset);
}

void sax_strict_json(const ByteSource& src, uint64_t offset, uint64_t len, nlohmann::json_sax<nlohmann::json>& sax,
                     const char* format, uint64_t base_offset) {
  BlockReader r(src, offset, len, format);
  run_strict_sax(BlockIterator{&r}, BlockIterator{}, sax, format, base_offset);
}

std::optional<uint64_t> find_invalid_utf8(const ByteSource& src, uint64_t offset, uint64_t len) {
  // A sequence is at most 4 bytes: one refused within the last 3 bytes of a block may only be cut
  // by the block's end, so those bytes are checked again at the start of the next one.
  std::string buf;
  uint64_t at = 0;  // position of buf[0]
  uint64_t pos = 0;
  while (pos < len) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(kBlock, len - pos));
    buf += read_exact(src, offset + pos, n, "json");
    pos += n;
    const auto bad = find_invalid_utf8(buf);
    if (!bad) {
      buf.clear();
      at = pos;
      continue;
    }
    if (pos < len && *bad + 3 >= buf.size()) {
      buf.erase(0, *bad);
      at += *bad;
      continue;
    }
    return at + *bad;
  }
  return std::nullopt;
}

}  // namespace nemofs
