#include "formats/remote/http.h"

#include <curl/curl.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <thread>

#include "formats/core/errors.h"

namespace nemofs::remote {

namespace {

std::atomic<uint64_t> g_requests{0}, g_bytes{0};

struct CurlInit {
  CurlInit() { curl_global_init(CURL_GLOBAL_DEFAULT); }
};

struct Transfer {
  const HttpRequest* req = nullptr;
  HttpResponse* resp = nullptr;
  bool aborted = false;
  bool overflow = false;
};

size_t on_header(char* data, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  size_t len = size * n;
  std::string line(data, len);
  while (!line.empty() && (line.back() == '\r' || line.back() == '\n')) line.pop_back();
  if (line.rfind("HTTP/", 0) == 0) {
    // A new response (a redirect's, then the final one): only the last one's headers are kept.
    t->resp->headers.clear();
    return len;
  }
  auto colon = line.find(':');
  if (colon == std::string::npos) return len;
  std::string name = line.substr(0, colon);
  std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
  size_t v = colon + 1;
  while (v < line.size() && (line[v] == ' ' || line[v] == '\t')) ++v;
  t->resp->headers[name] = line.substr(v);
  return len;
}

size_t on_body(char* data, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  size_t len = size * n;
  // A success's body goes to the sink; an error document into body.
  g_bytes.fetch_add(len, std::memory_order_relaxed);
  const bool success = t->resp->status / 100 == 2;
  if (t->req->write && success) {
    if (!t->req->write(data, len)) {
      t->aborted = true;
      return 0;
    }
    return len;
  }
  if (!success) {
    // An error document: its start is enough to say why (S3's <Code>); the rest is dropped.
    t->resp->body.append(data, std::min(len, (64u << 10) - std::min<size_t>(t->resp->body.size(), 64u << 10)));
    return len;
  }
  if (t->resp->body.size() + len > t->req->max_body) {
    t->overflow = true;
    return 0;
  }
  t->resp->body.append(data, len);
  return len;
}

bool transient_code(CURLcode c, bool retry_refused) {
  switch (c) {
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
      return true;
    case CURLE_COULDNT_CONNECT:
      return retry_refused;
    default:
      return false;
  }
}

bool tls_error(CURLcode c) {
  switch (c) {
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
      return true;
    default:
      return false;
  }
}

int code_errno(CURLcode c) {
  if (tls_error(c)) return EPROTO;
  switch (c) {
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
      return EHOSTUNREACH;
    case CURLE_COULDNT_CONNECT:
      return ECONNREFUSED;
    case CURLE_OPERATION_TIMEDOUT:
      return ETIMEDOUT;
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
      return EINVAL;
    default:
      return EIO;
  }
}

std::string code_text(CURLcode c, const char* errbuf) {
  std::string why;
  switch (c) {
    case CURLE_COULDNT_RESOLVE_HOST: why = "cannot resolve host"; break;
    case CURLE_COULDNT_CONNECT: why = "cannot connect (connection refused or host unreachable)"; break;
    case CURLE_OPERATION_TIMEDOUT: why = "timed out"; break;
    default: why = tls_error(c) ? "TLS error" : curl_easy_strerror(c);
  }
  // curl's own detail may name the host; it never holds the query string or credentials.
  if (errbuf && *errbuf && c != CURLE_COULDNT_RESOLVE_HOST) why += std::string(" (") + errbuf + ")";
  return why;
}

}  // namespace

std::string redact(const std::string& url) {
  std::string u = url.substr(0, url.find_first_of("?#"));
  auto scheme = u.find("://");
  if (scheme != std::string::npos) {
    auto host_start = scheme + 3;
    auto slash = u.find('/', host_start);
    auto at = u.rfind('@', slash == std::string::npos ? u.size() : slash);
    if (at != std::string::npos && at >= host_start) u.erase(host_start, at + 1 - host_start);
  }
  return u;
}

int status_errno(long status) {
  if (status == 401 || status == 403) return EACCES;
  if (status == 404 || status == 410) return ENOENT;
  if (status == 412) return EIO;
  return EIO;
}

std::string status_text(long status) {
  std::string s = "HTTP " + std::to_string(status);
  switch (status) {
    case 401: return s + " unauthorized (missing or wrong credentials)";
    case 403: return s + " forbidden (access denied: check the credentials)";
    case 404: return s + " not found";
    case 410: return s + " gone";
    case 412: return s + " precondition failed (the object changed)";
    case 416: return s + " range not satisfiable";
    case 429: return s + " too many requests";
    default:
      if (status >= 500) return s + " server error";
      return s;
  }
}

struct HttpClient::Impl {
  size_t max_handles;
  std::mutex mu;
  std::vector<CURL*> idle;
  size_t out = 0;
  std::condition_variable_any cv;

  CURL* take() {
    std::unique_lock lk(mu);
    cv.wait(lk, [&] { return !idle.empty() || out < max_handles; });
    ++out;
    if (!idle.empty()) {
      CURL* h = idle.back();
      idle.pop_back();
      return h;
    }
    lk.unlock();
    CURL* h = curl_easy_init();
    if (!h) {
      std::lock_guard g(mu);
      --out;
      throw SysError(ENOMEM, "curl_easy_init failed");
    }
    return h;
  }
  void give(CURL* h) {
    {
      std::lock_guard lk(mu);
      --out;
      idle.push_back(h);
    }
    cv.notify_one();
  }
};

HttpClient::HttpClient(size_t max_handles) : impl_(std::make_unique<Impl>()) {
  static CurlInit init;
  impl_->max_handles = std::max<size_t>(1, max_handles);
}

HttpClient::~HttpClient() {
  for (CURL* h : impl_->idle) curl_easy_cleanup(h);
}

HttpClient& HttpClient::shared() {
  // Never destroyed: daemon threads may still be in a request when the process exits.
  static HttpClient* c = new HttpClient(16);
  return *c;
}

uint64_t HttpClient::requests() const { return g_requests.load(); }
uint64_t HttpClient::bytes() const { return g_bytes.load(); }

HttpResponse HttpClient::perform(const HttpRequest& req, const RetryPolicy& policy) const {
  const std::string what = req.what.empty() ? redact(req.url) : req.what;
  CURL* h = impl_->take();
  struct Give {
    const Impl* impl;
    CURL* h;
    ~Give() { const_cast<Impl*>(impl)->give(h); }
  } give{impl_.get(), h};

  for (int attempt = 0;; ++attempt) {
    HttpResponse resp;
    Transfer t{&req, &resp};
    char errbuf[CURL_ERROR_SIZE] = {};
    curl_easy_reset(h);
    curl_easy_setopt(h, CURLOPT_URL, req.url.c_str());
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, req.follow_redirects ? 1L : 0L);
    curl_easy_setopt(h, CURLOPT_MAXREDIRS, 5L);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, policy.connect_timeout_ms);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, policy.low_speed_bytes);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, policy.low_speed_s);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(h, CURLOPT_USERAGENT, "nemofs");
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, &t);
    if (req.head) curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
    // Large receive buffer for bodies that go to a sink (cache blocks): fewer callbacks and
    // writes per MiB. curl_easy_reset puts back the 16 KiB default for the others.
    if (req.write) curl_easy_setopt(h, CURLOPT_BUFFERSIZE, 512L << 10);
    std::string range;
    if (req.range) {
      range = std::to_string(req.range->first) + "-" + std::to_string(req.range->second);
      curl_easy_setopt(h, CURLOPT_RANGE, range.c_str());
    }
    curl_slist* hdrs = nullptr;
    for (const auto& x : req.headers) hdrs = curl_slist_append(hdrs, x.c_str());
    if (hdrs) curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    std::string user, pass;
    if (!req.aws_sigv4.empty()) {
      curl_easy_setopt(h, CURLOPT_AWS_SIGV4, req.aws_sigv4.c_str());
      // Separately: a secret may hold characters USERPWD would split on.
      auto colon = req.aws_userpwd.find(':');
      user = req.aws_userpwd.substr(0, colon);
      pass = colon == std::string::npos ? std::string() : req.aws_userpwd.substr(colon + 1);
      curl_easy_setopt(h, CURLOPT_USERNAME, user.c_str());
      curl_easy_setopt(h, CURLOPT_PASSWORD, pass.c_str());
    }
    if (req.begin) req.begin();
    g_requests.fetch_add(1, std::memory_order_relaxed);
    // Decide where the body goes when the first body byte arrives: a 2xx body goes to the sink,
    // anything else into resp.body (an error document).
    CURLcode rc = CURLE_OK;
    {
      // on_body reads resp.status: 0 until we know the response is not a success. Headers of the
      // final response are complete before the first body byte, so peek at the status line there.
      struct Ctx {
        Transfer* t;
        CURL* h;
      } ctx{&t, h};
      curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, +[](char* data, size_t size, size_t n, void* user) -> size_t {
        auto* c = static_cast<Ctx*>(user);
        long code = 0;
        curl_easy_getinfo(c->h, CURLINFO_RESPONSE_CODE, &code);
        c->t->resp->status = code;  // the response this body belongs to (after any redirect)
        return on_body(data, size, n, c->t);
      });
      curl_easy_setopt(h, CURLOPT_WRITEDATA, &ctx);
      rc = curl_easy_perform(h);
    }
    if (hdrs) curl_slist_free_all(hdrs);
    long code = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
    resp.status = code;
    if (t.aborted && req.range && code == 200)
      throw SysError(EIO, what + ": the server ignores Range requests (HTTP 200 to a range request)");
    if (t.aborted) throw SysError(EIO, what + ": transfer aborted");
    if (t.overflow) throw SysError(EIO, what + ": response larger than expected");
    bool retry = false;
    std::string why;
    int err = EIO;
    if (rc != CURLE_OK) {
      retry = transient_code(rc, policy.retry_refused);
      why = code_text(rc, errbuf);
      err = code_errno(rc);
    } else if (code >= 500 || code == 429) {
      retry = true;
      why = status_text(code);
    } else {
      return resp;
    }
    if (!retry || attempt >= policy.retries) {
      if (retry && attempt > 0) why += " (after " + std::to_string(attempt + 1) + " attempts)";
      throw SysError(err, what + ": " + why);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100L << std::min(attempt, 6)));
  }
}

}  // namespace nemofs::remote
