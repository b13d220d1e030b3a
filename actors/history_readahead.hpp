// history_readahead: pages of replay histories built ahead of their
// request, and the readers waiting for one being built.
#pragma once

#include <chrono>
#include <cstddef>
#include <map>
#include <mutex>
#include <optional>
#include <string>

#include "actors/node.hpp"

namespace nerve::actors::detail {

/// Read-ahead for history cursors. A reader pages through a history one
/// cursor at a time, so while it takes in one page the next one is built on
/// another core. A page built ahead is served for at most a second (delivery
/// state moves on), and only a few, of bounded size, are held at once.
class history_readahead {
public:
  static constexpr std::size_t max_slots = 16;
  static constexpr std::size_t max_page_bytes = 8U << 20;
  static constexpr std::chrono::seconds max_age{1};

  /// The page for `key` if it is built or being built: answers true, and
  /// `page` holds it, or `done` is kept to be called by `finish`.
  bool take(const std::string& key, std::optional<result<history_page>>& page,
            callback<history_page>& done);

  /// Claims `key` for building ahead; false when it is claimed already or
  /// there is no room.
  bool start(const std::string& key);

  /// Hands a page built ahead to the reader waiting for it (returned) or
  /// keeps it for the reader to come.
  callback<history_page> finish(const std::string& key, result<history_page>& page);

private:
  struct slot {
    std::optional<result<history_page>> page;
    callback<history_page> waiter;
    std::chrono::steady_clock::time_point built;
  };
  std::mutex mutex_;
  std::map<std::string, slot> slots_;
};

} // namespace nerve::actors::detail
