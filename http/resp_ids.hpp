// Stream entry ids of the Redis protocol (docs/redis.md, "Entry ids"): an
// event's place (partition, offset) and append time as "<ms>-<seq>", and back.
#pragma once

#include <charconv>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <string_view>

namespace nerve::http::resp {

/// A Redis stream entry id: milliseconds, then a sequence number.
struct entry_id {
  std::uint64_t ms = 0;
  std::uint64_t seq = 0;

  friend bool operator==(const entry_id& a, const entry_id& b) {
    return a.ms == b.ms && a.seq == b.seq;
  }
  friend bool operator<(const entry_id& a, const entry_id& b) {
    return a.ms < b.ms || (a.ms == b.ms && a.seq < b.seq);
  }
};

/// Where an event lives in its topic.
struct entry_place {
  std::uint32_t partition = 0;
  std::uint64_t offset = 0;
};

/// The id of the event at `offset` of `partition`, in a topic of `partitions`
/// partitions, appended at `ms`: seq = offset * partitions + partition, so
/// that ids of one partition increase with its offsets (its append times
/// never decrease) and every place has its own seq. Nothing when the place
/// cannot be encoded: no partitions, a partition out of range, or an offset
/// so large that the seq would overflow (2^64 / partitions).
[[nodiscard]] inline std::optional<entry_id> encode_id(std::uint64_t ms, std::uint32_t partition,
                                                       std::uint64_t offset,
                                                       std::uint32_t partitions) {
  if (partitions == 0 || partition >= partitions
      || offset > (std::numeric_limits<std::uint64_t>::max() - partition) / partitions)
    return std::nullopt;
  return entry_id{ms, offset * partitions + partition};
}

/// The place an id names in a topic of `partitions` partitions (its ms is
/// not needed to find it); nothing when `partitions` is 0.
[[nodiscard]] inline std::optional<entry_place> decode_id(const entry_id& id,
                                                          std::uint32_t partitions) {
  if (partitions == 0)
    return std::nullopt;
  return entry_place{static_cast<std::uint32_t>(id.seq % partitions), id.seq / partitions};
}

/// "<ms>-<seq>".
[[nodiscard]] inline std::string format_id(const entry_id& id) {
  return std::to_string(id.ms) + "-" + std::to_string(id.seq);
}

/// Parses "<ms>-<seq>" (decimal, no sign, each within 64 bits); nothing for
/// any other text.
[[nodiscard]] inline std::optional<entry_id> parse_id(std::string_view text) {
  auto dash = text.find('-');
  if (dash == std::string_view::npos)
    return std::nullopt;
  auto number = [](std::string_view digits) -> std::optional<std::uint64_t> {
    std::uint64_t v = 0;
    if (digits.empty() || digits.front() == '+')
      return std::nullopt;
    auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), v);
    if (ec != std::errc{} || end != digits.data() + digits.size())
      return std::nullopt;
    return v;
  };
  auto ms = number(text.substr(0, dash));
  auto seq = number(text.substr(dash + 1));
  if (!ms || !seq)
    return std::nullopt;
  return entry_id{*ms, *seq};
}

} // namespace nerve::http::resp
