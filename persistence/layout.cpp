// Topic records of the event log's `meta` family.
#include "persistence/layout.hpp"

#include <nlohmann/json.hpp>

namespace nerve::persistence::layout {

std::optional<topic_info> parse_topic_record(std::string_view key, std::string_view value) {
  if (key.substr(0, topic_meta_prefix.size()) != topic_meta_prefix)
    return std::nullopt;
  auto j = nlohmann::json::parse(value, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("id") || !j["id"].is_number_unsigned()
      || !j.contains("partitions") || !j["partitions"].is_number_unsigned())
    return std::nullopt;
  return topic_info{std::string{key.substr(topic_meta_prefix.size())}, j["id"].get<std::uint32_t>(),
                    j["partitions"].get<std::uint32_t>()};
}

} // namespace nerve::persistence::layout
