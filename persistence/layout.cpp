// The stored layout's helpers: the id at the start of a stored event, and the
// log's own records in `meta` (topics, heads, leader-epoch checkpoints).
#include "persistence/layout.hpp"

#include <charconv>

#include <nlohmann/json.hpp>
#include <rocksdb/db.h>

#include "persistence/ids.hpp"
#include "persistence/keys.hpp"

namespace nerve::persistence::layout {

std::optional<std::string> stored_id(std::string_view json) {
  constexpr std::string_view lead = "{\"id\":\"";
  if (json.substr(0, lead.size()) != lead)
    return std::nullopt;
  bool escaped = false;
  for (auto i = lead.size(); i < json.size(); ++i) {
    if (json[i] == '\\') {
      escaped = true;
      ++i; // the escaped character, which may be a quote
      continue;
    }
    if (json[i] != '"')
      continue;
    const auto length = i - lead.size();
    if (length == 0)
      return std::nullopt; // events always have an id
    if (!escaped)
      return std::string{json.substr(lead.size(), length)};
    // The string with its quotes, for nlohmann to unescape.
    auto id = nlohmann::json::parse(json.substr(lead.size() - 1, length + 2), nullptr, false);
    if (!id.is_string())
      return std::nullopt;
    return id.get<std::string>();
  }
  return std::nullopt;
}

std::string time_run_value(std::uint64_t last, bool indexed) {
  std::string v(1, indexed ? '\1' : '\0');
  keys::put_u64(v, last);
  return v;
}

std::optional<time_run> parse_time_run(std::string_view key, std::string_view value) {
  if (key.size() != 24 || value.empty())
    return std::nullopt;
  time_run run{static_cast<std::int64_t>(keys::get_u64(key, 0)),
               keys::get_u32(key, 8),
               keys::get_u32(key, 12),
               keys::get_u64(key, 16),
               0,
               false,
               {}};
  if (value[0] != '\0' && value[0] != '\1') {
    run.last = run.first; // format 1: one event, the value is its id
    run.indexed = true;
    run.legacy_id = value;
    return run;
  }
  if (value.size() != 9)
    return std::nullopt;
  run.last = keys::get_u64(value, 1);
  run.indexed = value[0] == '\1';
  if (run.last < run.first)
    return std::nullopt;
  return run;
}

bool located_at(std::string_view id, std::uint32_t topic_id, std::uint32_t partition,
                std::uint64_t offset) {
  auto at = locate_id(id);
  return at && at->topic_id == topic_id && at->partition == partition && at->offset == offset;
}

std::string partition_family_name(std::uint32_t topic_id, std::uint32_t partition) {
  return "events." + std::to_string(topic_id) + "." + std::to_string(partition);
}

std::optional<std::pair<std::uint32_t, std::uint32_t>>
parse_partition_family(std::string_view name) {
  constexpr std::string_view prefix = "events.";
  if (name.substr(0, prefix.size()) != prefix)
    return std::nullopt;
  name.remove_prefix(prefix.size());
  auto dot = name.find('.');
  if (dot == std::string_view::npos)
    return std::nullopt;
  auto number = [](std::string_view text) -> std::optional<std::uint32_t> {
    std::uint32_t v = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
    if (text.empty() || ec != std::errc{} || end != text.data() + text.size()
        || (text.size() > 1 && text[0] == '0'))
      return std::nullopt;
    return v;
  };
  auto topic = number(name.substr(0, dot));
  auto partition = number(name.substr(dot + 1));
  if (!topic || !partition)
    return std::nullopt;
  return std::pair{*topic, *partition};
}

std::vector<std::string> stored_partition_families(const rocksdb::DBOptions& opts,
                                                   const std::string& path) {
  std::vector<std::string> names;
  std::vector<std::string> out;
  if (rocksdb::DB::ListColumnFamilies(opts, path, &names).ok())
    for (auto& name : names)
      if (parse_partition_family(name))
        out.push_back(std::move(name));
  return out;
}

std::string head_key(std::uint32_t topic_id, std::uint32_t partition) {
  return "head/" + keys::partition_prefix(topic_id, partition);
}

std::string epoch_prefix(std::uint32_t topic_id, std::uint32_t partition) {
  return "epoch/" + keys::partition_prefix(topic_id, partition);
}

std::optional<epoch_entry> parse_epoch_record(std::string_view key, std::string_view value,
                                              std::size_t prefix_bytes) {
  if (key.size() != prefix_bytes + 4 || value.size() != 8)
    return std::nullopt;
  return epoch_entry{keys::get_u32(key, prefix_bytes), keys::get_u64(value, 0)};
}

std::string epoch_key(std::uint32_t topic_id, std::uint32_t partition, std::uint32_t epoch) {
  auto k = epoch_prefix(topic_id, partition);
  keys::put_u32(k, epoch);
  return k;
}

bool is_log_record(std::string_view meta_key) {
  for (std::string_view prefix :
       {std::string_view{topic_meta_prefix}, std::string_view{"head/"}, std::string_view{"epoch/"}})
    if (meta_key.substr(0, prefix.size()) == prefix)
      return true;
  return meta_key == "node_id" || meta_key == format_key;
}

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
