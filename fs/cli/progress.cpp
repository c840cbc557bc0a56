#include "fs/cli/progress.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "fs/cli/state.h"

namespace nemofs {

ProgressWatcher::ProgressWatcher(std::string mp) : mp_(std::move(mp)) {
  if (::isatty(2)) thread_ = std::thread([this] { run(); });
}

ProgressWatcher::~ProgressWatcher() {
  {
    std::lock_guard lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  if (shown_) std::fprintf(stderr, "\r\033[K");
}

void ProgressWatcher::run() {
  using clock = std::chrono::steady_clock;
  auto start = clock::now();
  std::string path;
  try {
    path = progress_file_for(mp_);
  } catch (...) {
    return;
  }
  while (true) {
    {
      std::unique_lock lk(mu_);
      if (cv_.wait_for(lk, std::chrono::milliseconds(100), [this] { return stop_; })) return;
    }
    if (clock::now() - start < std::chrono::milliseconds(500)) continue;
    std::ifstream f(path);
    if (!f) continue;
    std::stringstream ss;
    ss << f.rdbuf();
    auto j = nlohmann::json::parse(ss.str(), nullptr, false);
    if (j.is_discarded() || !j.contains("done") || !j.contains("total")) continue;
    double done = j["done"].get<double>(), total = j["total"].get<double>();
    if (total <= 0) continue;
    std::fprintf(stderr, "\r\033[Knemofs: committing %s: %3.0f%% (%.2f of %.2f GB)",
                 j.value("target", std::string("archive")).c_str(), 100.0 * done / total, done / 1e9, total / 1e9);
    std::fflush(stderr);
    shown_ = true;
  }
}

}  // namespace nemofs
