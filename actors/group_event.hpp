// An event as a consumer group sees it: the partition actor's tail cache
// holds these, and the publish lane hands its appends over as these
// (node_context.hpp, partition_slot::lane_appended).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

namespace nerve::actors {

/// An event as a consumer group sees it.
struct group_event {
  std::uint64_t offset = 0;
  std::int64_t appended_us = 0; ///< append time; 0 when read back from the log
  std::shared_ptr<const std::string> json;
  std::string id, key, type, source;
};

} // namespace nerve::actors
