// UTF-8 decoding for every format that checks or converts text (strict JSON headers, pickle
// strings), so that there is one decoder to get right.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace nemofs {

enum class Utf8Check : uint8_t {
  // Unicode's well-formed UTF-8: overlongs, surrogates and code points above U+10FFFF are refused.
  WellFormed,
  // Lead and continuation bytes only: any 2-4 byte sequence led by 110xxxxx, 1110xxxx or 11110xxx
  // and followed by 10xxxxxx bytes. The pickle machine tells Python 2 str text from bytes this way.
  Shape,
  // Sequence lengths from lead bytes alone; the bytes after a lead are taken as they are. The
  // pickle machine's latin-1 encode (protocol-2 bytes) has always decoded this way.
  LeadOnly,
  // Shape and LeadOnly keep the pickle JSON of existing (malformed) inputs as it was: a stricter
  // check would turn some strs into bytes and some bytes into inert _codecs.encode objects.
};

// Offset of the first byte that does not begin a sequence `check` accepts, or nullopt when all of
// `text` is accepted.
std::optional<size_t> find_invalid_utf8(std::string_view text, Utf8Check check = Utf8Check::WellFormed);

// Appends the code points of `text` to `out`; false (with `out` partly filled) when `check` refuses
// a sequence.
bool decode_utf8(std::string_view text, Utf8Check check, std::vector<uint32_t>& out);

// Appends the UTF-8 encoding of `cp`; the caller keeps cp <= U+10FFFF (surrogates are written as
// they come).
void append_utf8(std::string& out, uint32_t cp);

}  // namespace nemofs
