// URL schemes, S3 (SigV4, ListObjectsV2), the Hugging Face Hub (resolve, tree API), and the remote
// folders they make. See remote.h.
#include "formats/remote/remote.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <stdexcept>

#include "formats/core/errors.h"
#include "formats/core/utf8.h"
#include "formats/remote/source.h"
#include "formats/detect/folder.h"

namespace nemofs::remote {

namespace {

Options g_options;
bool g_configured = false;
std::mutex g_opt_mu;

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::string(v) : std::string();
}

std::string trim(const std::string& s) {
  size_t a = s.find_first_not_of(" \t\r\n"), b = s.find_last_not_of(" \t\r\n");
  return a == std::string::npos ? std::string() : s.substr(a, b - a + 1);
}

// Percent-encodes everything but RFC 3986 unreserved characters (and '/' when `keep_slash`), as
// SigV4's canonical request wants it.
std::string uri_encode(const std::string& s, bool keep_slash) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~' || (keep_slash && c == '/')) out += static_cast<char>(c);
    else {
      out += '%';
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

std::string strip_slash(std::string s) {
  while (!s.empty() && s.back() == '/') s.pop_back();
  return s;
}

// ---- AWS configuration (the CLI's and the SDKs' rules, for what nemofs uses).

// Sections of an INI file: name -> key -> value.
using Ini = std::map<std::string, std::map<std::string, std::string>>;

Ini read_ini(const std::string& path) {
  Ini ini;
  std::ifstream in(path);
  std::string line, section;
  while (std::getline(in, line)) {
    line = trim(line);
    if (line.empty() || line[0] == '#' || line[0] == ';') continue;
    if (line.front() == '[' && line.back() == ']') {
      section = trim(line.substr(1, line.size() - 2));
      continue;
    }
    auto eq = line.find('=');
    if (eq == std::string::npos) continue;
    ini[section][trim(line.substr(0, eq))] = trim(line.substr(eq + 1));
  }
  return ini;
}

struct S3Config {
  std::string endpoint;  // no trailing slash; empty: AWS itself
  std::string region;
  std::string key, secret, token;
};

S3Config s3_config() {
  S3Config c;
  const std::string home = env("HOME");
  std::string profile = env("AWS_PROFILE");
  if (profile.empty()) profile = "default";
  std::string cred_file = env("AWS_SHARED_CREDENTIALS_FILE");
  if (cred_file.empty()) cred_file = home + "/.aws/credentials";
  std::string conf_file = env("AWS_CONFIG_FILE");
  if (conf_file.empty()) conf_file = home + "/.aws/config";
  Ini creds = read_ini(cred_file), conf = read_ini(conf_file);
  auto& conf_sec = conf[profile == "default" ? "default" : "profile " + profile];
  auto& cred_sec = creds[profile];
  if (env("AWS_PROFILE").size() && cred_sec.empty() && conf_sec.empty())
    throw SysError(EINVAL, "AWS_PROFILE=" + profile + ": no such profile in " + cred_file + " or " + conf_file);

  c.key = env("AWS_ACCESS_KEY_ID");
  c.secret = env("AWS_SECRET_ACCESS_KEY");
  c.token = env("AWS_SESSION_TOKEN");
  if (c.key.empty() || c.secret.empty()) {
    c.key = cred_sec.count("aws_access_key_id") ? cred_sec["aws_access_key_id"] : conf_sec["aws_access_key_id"];
    c.secret = cred_sec.count("aws_secret_access_key") ? cred_sec["aws_secret_access_key"] : conf_sec["aws_secret_access_key"];
    c.token = cred_sec.count("aws_session_token") ? cred_sec["aws_session_token"] : conf_sec["aws_session_token"];
  }
  c.region = env("AWS_REGION");
  if (c.region.empty()) c.region = env("AWS_DEFAULT_REGION");
  if (c.region.empty()) c.region = conf_sec["region"];
  if (c.region.empty()) c.region = "us-east-1";
  c.endpoint = env("AWS_ENDPOINT_URL_S3");
  if (c.endpoint.empty()) c.endpoint = env("AWS_ENDPOINT_URL");
  if (c.endpoint.empty()) c.endpoint = conf_sec["endpoint_url"];
  c.endpoint = strip_slash(c.endpoint);
  return c;
}

struct S3Url {
  std::string bucket, key;  // key may be empty or end with '/'
};

S3Url parse_s3(const std::string& url) {
  std::string rest = url.substr(5);
  auto slash = rest.find('/');
  S3Url u;
  u.bucket = rest.substr(0, slash);
  if (slash != std::string::npos) u.key = rest.substr(slash + 1);
  if (u.bucket.empty()) throw SysError(EINVAL, url + ": no bucket (s3://BUCKET/KEY)");
  return u;
}

// The request base for an S3 key: path-style on a custom endpoint (every S3 compatible store
// takes it), virtual-hosted style on AWS.
ObjectRef s3_ref(const S3Config& c, const std::string& bucket, const std::string& key) {
  ObjectRef r;
  if (!c.endpoint.empty()) r.url = c.endpoint + "/" + uri_encode(bucket, false) + "/" + uri_encode(key, true);
  else r.url = "https://" + bucket + ".s3." + c.region + ".amazonaws.com/" + uri_encode(key, true);
  r.display = "s3://" + bucket + "/" + key;
  r.cache_name = (c.endpoint.empty() ? std::string("aws") : redact(c.endpoint)) + " s3://" + bucket + "/" + key;
  if (!c.key.empty()) {
    r.aws_sigv4 = "aws:amz:" + c.region + ":s3";
    r.aws_userpwd = c.key + ":" + c.secret;
    // S3 wants the payload's hash signed; curl signs this header's value as that hash.
    r.headers.push_back("x-amz-content-sha256: UNSIGNED-PAYLOAD");
    if (!c.token.empty()) r.headers.push_back("x-amz-security-token: " + c.token);
  }
  return r;
}

std::string xml_unescape(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '&') {
      out += s[i];
      continue;
    }
    auto semi = s.find(';', i);
    if (semi == std::string::npos) {
      out += s[i];
      continue;
    }
    std::string ent = s.substr(i + 1, semi - i - 1);
    if (ent == "amp") out += '&';
    else if (ent == "lt") out += '<';
    else if (ent == "gt") out += '>';
    else if (ent == "quot") out += '"';
    else if (ent == "apos") out += '\'';
    else if (!ent.empty() && ent[0] == '#') {
      unsigned long cp = ent.size() > 1 && (ent[1] == 'x' || ent[1] == 'X') ? std::strtoul(ent.c_str() + 2, nullptr, 16)
                                                                              : std::strtoul(ent.c_str() + 1, nullptr, 10);
      // A code point past Unicode is kept as the entity's text (append_utf8 needs cp <= U+10FFFF).
      if (cp > 0x10FFFF) out += s.substr(i, semi - i + 1);
      else append_utf8(out, static_cast<uint32_t>(cp));
    } else {
      out += s.substr(i, semi - i + 1);
    }
    i = semi;
  }
  return out;
}

// The text of each <tag>...</tag> inside `xml` (ListObjectsV2 answers are flat enough for this:
// no CDATA, no nesting of a tag in itself).
std::vector<std::string> xml_all(const std::string& xml, const std::string& tag) {
  std::vector<std::string> out;
  const std::string open = "<" + tag + ">", close = "</" + tag + ">";
  size_t pos = 0;
  while ((pos = xml.find(open, pos)) != std::string::npos) {
    size_t start = pos + open.size();
    size_t end = xml.find(close, start);
    if (end == std::string::npos) break;
    out.push_back(xml.substr(start, end - start));
    pos = end + close.size();
  }
  return out;
}

std::string xml_one(const std::string& xml, const std::string& tag) {
  auto v = xml_all(xml, tag);
  return v.empty() ? std::string() : xml_unescape(v.front());
}

RetryPolicy open_policy() {
  RetryPolicy p;
  p.retries = options().retries;
  p.retry_refused = false;
  p.low_speed_s = options().timeout_s;
  return p;
}

[[noreturn]] void refuse(const std::string& what, const HttpResponse& r) {
  std::string detail = status_text(r.status);
  // S3 and the Hub say why in the body (<Code>, X-Error-Message); no request detail is echoed.
  std::string code = xml_one(r.body, "Code");
  if (!code.empty() && code.size() < 64) detail += " (" + code + ")";
  else if (!r.header("x-error-code").empty()) detail += " (" + r.header("x-error-code").substr(0, 64) + ")";
  throw SysError(status_errno(r.status), what + ": " + detail);
}

// ---- Remote folders.

class RemoteFileSet final : public FileSet {
 public:
  RemoteFileSet(std::string display, std::map<std::string, ObjectRef> files)
      : display_(std::move(display)), files_(std::move(files)) {}
  std::vector<std::string> list() const override {
    std::vector<std::string> out;
    for (const auto& [k, v] : files_) out.push_back(k);
    return out;
  }
  SourcePtr open(const std::string& rel) const override {
    std::lock_guard lk(mu_);
    if (auto it = opened_.find(rel); it != opened_.end()) return it->second;
    auto it = files_.find(rel);
    if (it == files_.end()) return nullptr;
    SourcePtr s = RemoteSource::lazy(it->second);
    opened_[rel] = s;
    return s;
  }
  std::string describe() const override { return display_; }

 private:
  std::string display_;
  std::map<std::string, ObjectRef> files_;
  mutable std::mutex mu_;
  mutable std::map<std::string, SourcePtr> opened_;
};

std::map<std::string, ObjectRef> s3_list(const S3Config& c, const std::string& bucket, const std::string& prefix,
                                         const std::string& display) {
  std::map<std::string, ObjectRef> out;
  std::string token;
  ObjectRef base = s3_ref(c, bucket, "");
  for (int page = 0; page < 100000; ++page) {
    // Query parameters in canonical (sorted, encoded) order: SigV4 signs them as they are sent.
    std::string q;
    if (!token.empty()) q += "continuation-token=" + uri_encode(token, false) + "&";
    q += "list-type=2&prefix=" + uri_encode(prefix, false);
    HttpRequest rq;
    rq.url = base.url + "?" + q;
    rq.what = display;
    rq.headers = base.headers;
    rq.aws_sigv4 = base.aws_sigv4;
    rq.aws_userpwd = base.aws_userpwd;
    HttpResponse r = HttpClient::shared().perform(rq, open_policy());
    if (r.status != 200) refuse(display, r);
    for (const auto& item : xml_all(r.body, "Contents")) {
      std::string key = xml_one(item, "Key");
      if (key.size() <= prefix.size() || key.compare(0, prefix.size(), prefix) != 0) continue;
      if (key.back() == '/') continue;  // a "folder" marker object
      ObjectRef ref = s3_ref(c, bucket, key);
      std::string size = xml_one(item, "Size");
      if (size.empty()) continue;
      ref.size = std::stoull(size);
      ref.identity = xml_one(item, "ETag");
      if (ref.identity.empty()) ref.size.reset();
      out[key.substr(prefix.size())] = std::move(ref);
    }
    if (xml_one(r.body, "IsTruncated") != "true") break;
    token = xml_one(r.body, "NextContinuationToken");
    if (token.empty()) break;
  }
  return out;
}

// ---- The Hub.

struct HubUrl {
  std::string type = "models";  // models, datasets, spaces
  std::string repo;             // ORG/REPO
  std::string rev = "main";
  std::string path;             // empty: the whole repository
  // The commit `rev` named when the repository was mounted (hub_commit): a repository mount lists
  // and fetches every file at it. Empty: files are asked for at `rev`.
  std::string commit;
};

HubUrl parse_hf(const std::string& url) {
  std::string rest = url.substr(5);
  HubUrl u;
  for (const char* t : {"datasets/", "spaces/", "models/"}) {
    if (rest.rfind(t, 0) == 0) {
      u.type = std::string(t, std::strlen(t) - 1);
      rest = rest.substr(std::strlen(t));
    }
  }
  auto s1 = rest.find('/');
  if (s1 == std::string::npos || s1 == 0) throw SysError(EINVAL, url + ": not hf://ORG/REPO[@REVISION][/PATH]");
  auto s2 = rest.find('/', s1 + 1);
  std::string name = rest.substr(s1 + 1, s2 == std::string::npos ? std::string::npos : s2 - s1 - 1);
  auto at = name.find('@');
  if (at != std::string::npos) {
    u.rev = name.substr(at + 1);
    name = name.substr(0, at);
    if (u.rev.empty()) throw SysError(EINVAL, url + ": empty revision after '@'");
  }
  if (name.empty()) throw SysError(EINVAL, url + ": not hf://ORG/REPO[@REVISION][/PATH]");
  u.repo = rest.substr(0, s1) + "/" + name;
  if (s2 != std::string::npos) u.path = strip_slash(rest.substr(s2 + 1));
  return u;
}

std::string hub_endpoint() {
  std::string e = strip_slash(env("HF_ENDPOINT"));
  return e.empty() ? "https://huggingface.co" : e;
}

std::vector<std::string> hub_headers() {
  std::string t = env("HF_TOKEN");
  if (t.empty()) t = env("HUGGING_FACE_HUB_TOKEN");
  if (t.empty()) return {};
  return {"Authorization: Bearer " + t};
}

ObjectRef hub_ref(const HubUrl& u, const std::string& path) {
  ObjectRef r;
  std::string prefix = u.type == "models" ? "" : "/" + u.type;
  const std::string& at = u.commit.empty() ? u.rev : u.commit;
  r.url = hub_endpoint() + prefix + "/" + u.repo + "/resolve/" + uri_encode(at, false) + "/" + uri_encode(path, true);
  std::string tp = u.type == "models" ? "" : u.type + "/";
  r.display = "hf://" + tp + u.repo + (u.rev == "main" ? "" : "@" + u.rev) + "/" + path;
  r.cache_name = redact(hub_endpoint()) + " hf://" + tp + u.repo + "/" + path;
  r.headers = hub_headers();
  r.hub = true;
  r.commit = u.commit;
  return r;
}

bool is_commit_id(const std::string& s) {
  return s.size() == 40 && s.find_first_not_of("0123456789abcdef") == std::string::npos;
}

// The commit a revision names now, as huggingface_hub's snapshot_download asks for it (the
// revision API's "sha"): one request, none when the revision is a commit id already. A repository
// mount lists and fetches every file at that commit, so a push while it is mounted (or between
// the pages of its listing) cannot mix files of two commits.
std::string hub_commit(const HubUrl& u, const std::string& display) {
  if (is_commit_id(u.rev)) return u.rev;
  HttpRequest rq;
  rq.url = hub_endpoint() + "/api/" + u.type + "/" + u.repo + "/revision/" + uri_encode(u.rev, false);
  rq.what = display;
  rq.headers = hub_headers();
  rq.max_body = 16u << 20;  // the answer lists the repository's files too
  HttpResponse r = HttpClient::shared().perform(rq, open_policy());
  if (r.status != 200) refuse(display, r);
  auto j = nlohmann::json::parse(r.body, nullptr, false);
  std::string sha = j.is_object() && j.contains("sha") && j["sha"].is_string() ? j["sha"].get<std::string>() : "";
  if (!is_commit_id(sha)) throw SysError(EIO, display + ": the Hub did not name the commit of revision '" + u.rev + "'");
  return sha;
}

std::map<std::string, ObjectRef> hub_list(const HubUrl& u, const std::string& display) {
  std::map<std::string, ObjectRef> out;
  const std::string& at = u.commit.empty() ? u.rev : u.commit;
  std::string url = hub_endpoint() + "/api/" + u.type + "/" + u.repo + "/tree/" + uri_encode(at, false) + "?recursive=true";
  for (int page = 0; page < 100000 && !url.empty(); ++page) {
    HttpRequest rq;
    rq.url = url;
    rq.what = display;
    rq.headers = hub_headers();
    HttpResponse r = HttpClient::shared().perform(rq, open_policy());
    if (r.status != 200) refuse(display, r);
    auto j = nlohmann::json::parse(r.body, nullptr, false);
    if (j.is_discarded() || !j.is_array()) throw SysError(EIO, display + ": the Hub's tree answer is not a JSON list");
    for (const auto& e : j) {
      if (!e.is_object() || e.value("type", "") != "file" || !e.contains("path") || !e["path"].is_string()) continue;
      std::string path = e["path"].get<std::string>();
      ObjectRef ref = hub_ref(u, path);
      if (e.contains("lfs") && e["lfs"].is_object()) {
        ref.size = e["lfs"].value("size", uint64_t{0});
        ref.identity = e["lfs"].value("oid", std::string());
      } else {
        ref.size = e.value("size", uint64_t{0});
        ref.identity = e.value("oid", std::string());
      }
      out[path] = std::move(ref);
    }
    // Pagination: Link: <URL>; rel="next"
    url.clear();
    std::string link = r.header("link");
    auto next = link.find("rel=\"next\"");
    if (next != std::string::npos) {
      auto lt = link.rfind('<', next), gt = link.rfind('>', next);
      if (lt != std::string::npos && gt != std::string::npos && gt > lt) url = link.substr(lt + 1, gt - lt - 1);
    }
  }
  return out;
}

Checkpoint from_files(const std::string& display, std::map<std::string, ObjectRef> files, bool safetensors_views) {
  if (files.empty()) throw SysError(ENOENT, display + ": no objects there");
  auto set = std::make_shared<RemoteFileSet>(display, std::move(files));
  // Neither a DCP nor a Hugging Face folder: a folder of checkpoints (formats/detect/folder.h).
  if (sniff_dir(*set) == Format::Unknown) return open_folder_files(set, safetensors_views, options().connections);
  Checkpoint cp = open_checkpoint_files(*set);
  cp.keepalive = set;
  return cp;
}

Checkpoint from_object(ObjectRef ref) {
  auto src = RemoteSource::open(std::move(ref));
  return open_checkpoint_source(src);
}

}  // namespace

void configure(const Options& o) {
  std::lock_guard lk(g_opt_mu);
  g_options = o;
  if (g_options.cache_dir.empty()) {
    std::string base = env("XDG_CACHE_HOME");
    if (base.empty()) base = env("HOME").empty() ? "/tmp" : env("HOME") + "/.cache";
    g_options.cache_dir = base + "/nemofs/remote";
  }
  g_configured = true;
}

const Options& options() {
  if (!g_configured) configure(Options{});
  return g_options;
}

bool is_remote_url(const std::string& s) {
  for (const char* p : {"http://", "https://", "s3://", "hf://"})
    if (s.rfind(p, 0) == 0) return true;
  return false;
}

std::string display_url(const std::string& url) { return redact(url); }

Checkpoint open_remote_checkpoint(const std::string& url, bool safetensors_views) {
  const std::string shown = redact(url);
  if (url.rfind("http://", 0) == 0 || url.rfind("https://", 0) == 0) {
    if (url.find('@', url.find("://") + 3) < url.find('/', url.find("://") + 3))
      throw SysError(EINVAL, shown + ": credentials in the URL are not supported");
    ObjectRef r;
    r.url = url;
    r.display = shown;
    r.cache_name = shown;
    return from_object(std::move(r));
  }
  if (url.rfind("s3://", 0) == 0) {
    S3Config c = s3_config();
    S3Url u = parse_s3(url);
    if (u.key.empty() || u.key.back() == '/') return from_files(shown, s3_list(c, u.bucket, u.key, shown), safetensors_views);
    try {
      return from_object(s3_ref(c, u.bucket, u.key));
    } catch (const SysError& e) {
      // s3://BUCKET/PREFIX without its slash: a folder when objects lie below it.
      if (e.err() != ENOENT) throw;
      auto files = s3_list(c, u.bucket, u.key + "/", shown);
      if (files.empty()) throw;
      return from_files(shown, std::move(files), safetensors_views);
    }
  }
  if (url.rfind("hf://", 0) == 0) {
    HubUrl u = parse_hf(url);
    if (u.path.empty()) {
      u.commit = hub_commit(u, shown);
      return from_files(shown, hub_list(u, shown), safetensors_views);
    }
    return from_object(hub_ref(u, u.path));
  }
  throw SysError(EINVAL, shown + ": not a URL nemofs reads (http://, https://, s3://, hf://)");
}

nlohmann::json stats(const std::string& url) {
  Counters& c = counters();
  nlohmann::json j{{"url", redact(url)},
                   {"requests", HttpClient::shared().requests()},
                   {"bytes_fetched", HttpClient::shared().bytes()},
                   {"cache_hits", c.cache_hits.load()},
                   {"cache_misses", c.cache_misses.load()},
                   {"errors", c.errors.load()}};
  std::lock_guard lk(c.mu);
  if (!c.last_error.empty()) j["last_error"] = c.last_error;
  return j;
}

uint64_t parse_size(const std::string& s) {
  if (s.empty()) throw std::invalid_argument("empty size");
  size_t used = 0;
  unsigned long long v = std::stoull(s, &used);
  std::string suf = s.substr(used);
  for (auto& ch : suf) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
  if (!suf.empty() && suf.back() == 'B') suf.pop_back();
  if (!suf.empty() && suf.back() == 'I') suf.pop_back();
  int shift = 0;
  if (suf.empty()) shift = 0;
  else if (suf == "K") shift = 10;
  else if (suf == "M") shift = 20;
  else if (suf == "G") shift = 30;
  else if (suf == "T") shift = 40;
  else throw std::invalid_argument("bad size suffix '" + s.substr(used) + "'");
  if (shift && v > (~0ull >> shift)) throw std::invalid_argument("size too large");
  return static_cast<uint64_t>(v) << shift;
}

}  // namespace nemofs::remote
