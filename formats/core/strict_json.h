// Strict JSON at the format boundary: UTF-8 checked, duplicate keys refused, nesting bounded.
//
// nlohmann::json silently keeps the last of two equal keys; safetensors' README says duplicate keys
// are disallowed and an index with two entries for one tensor is ambiguous, so every checkpoint
// JSON goes through parse_strict_json. The nesting limit (128, serde_json's) keeps hostile headers
// from building trees that recursive code (dump, compare, destroy) would walk too deep.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

#include <nlohmann/json.hpp>

#include "formats/core/byte_source.h"
#include "formats/core/utf8.h"  // find_invalid_utf8, for the callers that include only this header

namespace nemofs {

// Parses `text` as one JSON value (surrounding JSON whitespace allowed). Throws
// FormatError(format, base_offset + position, ...) with distinct messages for: invalid UTF-8,
// malformed JSON, a duplicate key in any object, nesting deeper than 128.
nlohmann::json parse_strict_json(std::string_view text, const char* format, uint64_t base_offset);

// The same checks in one pass that builds nothing itself: every event that passes them goes on to
// `sax` (which may throw its own FormatError; returning false from an event stops the parse with
// a generic error). The same FormatErrors as parse_strict_json for malformed text.
void sax_strict_json(std::string_view text, nlohmann::json_sax<nlohmann::json>& sax, const char* format,
                     uint64_t base_offset);

// The same over bytes [offset, offset + len) of `src`, read in blocks so that the text is never
// held whole (only the lexer's copies of the current token are). UTF-8 is not checked first here:
// callers that report it with their own message run find_invalid_utf8(src, ...) before.
void sax_strict_json(const ByteSource& src, uint64_t offset, uint64_t len, nlohmann::json_sax<nlohmann::json>& sax,
                     const char* format, uint64_t base_offset);

// find_invalid_utf8 over bytes [offset, offset + len) of `src`, read in blocks: the position
// (relative to offset) of the first byte that does not begin a well-formed sequence.
std::optional<uint64_t> find_invalid_utf8(const ByteSource& src, uint64_t offset, uint64_t len);

}  // namespace nemofs
