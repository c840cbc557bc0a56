// A small HTTP client over libcurl for remote sources: GET/HEAD with byte ranges, connection reuse
// and bounded retries.
//
// Connections: a pool of curl easy handles; each handle keeps its own live connections, so a
// handle taken from the pool reuses a connection to the same host, and as many requests run at
// once as handles are out (several connections per host). Handles are taken and given back per
// request, from any thread.
//
// Retries: a request that fails for a reason that may pass (a timeout, a reset or cut connection,
// HTTP 5xx or 429, and, once a source is open, a refused connection: the server restarting) is
// tried again after 100 ms, 200 ms, 400 ms ... up to `retries` more times; anything else (4xx,
// DNS, TLS) fails at once. Errors are SysError with an errno that says which (ENOENT for 404,
// EACCES for 401/403, EHOSTUNREACH for DNS, ECONNREFUSED, EPROTO for TLS, ETIMEDOUT, EIO) and a
// message that names the URL without its query string (signatures and tokens never show).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace nemofs::remote {

struct HttpRequest {
  std::string url;
  bool head = false;
  // Inclusive byte range [first, last].
  std::optional<std::pair<uint64_t, uint64_t>> range;
  std::vector<std::string> headers;  // "Name: value"
  bool follow_redirects = true;
  // S3: CURLOPT_AWS_SIGV4 provider string ("aws:amz:REGION:s3") and "KEY:SECRET".
  std::string aws_sigv4, aws_userpwd;
  // Where the body goes. `begin` is called before every attempt (a retry starts over); `write`
  // takes each chunk and returns false to abort. Without a sink the body is kept in
  // HttpResponse::body, up to `max_body` bytes.
  std::function<void()> begin;
  std::function<bool(const char*, size_t)> write;
  size_t max_body = 64u << 20;
  // What is said in errors ("https://host/path"); empty: the URL without its query.
  std::string what;
};

struct HttpResponse {
  long status = 0;
  std::map<std::string, std::string> headers;  // lowercased names, the last response's (after redirects)
  std::string body;
  std::string header(const std::string& lower_name) const {
    auto it = headers.find(lower_name);
    return it == headers.end() ? std::string() : it->second;
  }
};

struct RetryPolicy {
  int retries = 5;              // more attempts after the first
  bool retry_refused = true;    // false at open: a closed port fails at once
  long connect_timeout_ms = 10000;
  // A transfer slower than low_speed_bytes per second for low_speed_s seconds is a timeout.
  long low_speed_bytes = 1024, low_speed_s = 20;
};

class HttpClient {
 public:
  explicit HttpClient(size_t max_handles = 16);
  ~HttpClient();
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  // Performs the request with retries. HTTP statuses are not errors here (the caller decides),
  // except 5xx/429 after the retries are spent: SysError(EIO). Transport failures throw SysError.
  HttpResponse perform(const HttpRequest& req, const RetryPolicy& policy) const;

  // Requests sent (every attempt) and body bytes received, for `nemofs status` and the benches.
  uint64_t requests() const;
  uint64_t bytes() const;

  static HttpClient& shared();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The URL as errors and status show it: no query string, no user:password.
std::string redact(const std::string& url);
// The errno and one-line reason for an HTTP status that refuses a request (401, 403, 404, 416 ...).
int status_errno(long status);
std::string status_text(long status);

}  // namespace nemofs::remote
