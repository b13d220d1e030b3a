// history_readahead: pages built ahead, served fresh or dropped.
#include "actors/history_readahead.hpp"

namespace nerve::actors::detail {

bool history_readahead::take(const std::string& key, std::optional<result<history_page>>& page,
                             callback<history_page>& done) {
  std::lock_guard<std::mutex> guard{mutex_};
  auto it = slots_.find(key);
  if (it == slots_.end())
    return false;
  auto& s = it->second;
  if (!s.page) {
    if (s.waiter)
      return false; // a second reader of the same cursor builds its own
    s.waiter = std::move(done);
    return true;
  }
  bool fresh = std::chrono::steady_clock::now() - s.built < max_age;
  if (fresh)
    page = std::move(s.page);
  slots_.erase(it);
  return fresh;
}

bool history_readahead::start(const std::string& key) {
  std::lock_guard<std::mutex> guard{mutex_};
  auto now = std::chrono::steady_clock::now();
  for (auto it = slots_.begin(); it != slots_.end();)
    it = it->second.page && now - it->second.built >= max_age ? slots_.erase(it) : std::next(it);
  if (slots_.size() >= max_slots || slots_.count(key) > 0)
    return false;
  slots_[key];
  return true;
}

callback<history_page> history_readahead::finish(const std::string& key,
                                                 result<history_page>& page) {
  std::lock_guard<std::mutex> guard{mutex_};
  auto it = slots_.find(key);
  if (it == slots_.end())
    return nullptr;
  if (it->second.waiter) {
    auto w = std::move(it->second.waiter);
    slots_.erase(it);
    return w;
  }
  if (page && page->entries_json.size() > max_page_bytes) {
    slots_.erase(it);
    return nullptr;
  }
  it->second.page = std::move(page);
  it->second.built = std::chrono::steady_clock::now();
  return nullptr;
}

} // namespace nerve::actors::detail
