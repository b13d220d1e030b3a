#include "actors/control_keys.hpp"

#include <algorithm>
#include <charconv>

#include <nlohmann/json.hpp>

namespace nerve::actors::control {

bool partition_state::is_in_sync(const std::string& node) const {
  return std::find(in_sync.begin(), in_sync.end(), node) != in_sync.end();
}

bool operator==(const partition_state& a, const partition_state& b) {
  return a.epoch == b.epoch && a.leader == b.leader && a.replicas == b.replicas
         && a.in_sync == b.in_sync;
}

std::string encode(const partition_state& s) {
  return nlohmann::json{
    {"epoch", s.epoch}, {"leader", s.leader}, {"replicas", s.replicas}, {"in_sync", s.in_sync}}
    .dump();
}

std::optional<partition_state> decode(std::string_view text) {
  auto j = nlohmann::json::parse(text, nullptr, false);
  if (!j.is_object())
    return std::nullopt;
  auto strings = [&](const char* name, std::vector<std::string>& out) {
    auto it = j.find(name);
    if (it == j.end() || !it->is_array())
      return false;
    for (auto& v : *it) {
      if (!v.is_string())
        return false;
      out.push_back(v.get<std::string>());
    }
    return true;
  };
  partition_state s;
  auto epoch = j.find("epoch");
  auto leader = j.find("leader");
  if (epoch == j.end() || !epoch->is_number_unsigned() || *epoch > UINT32_MAX || leader == j.end()
      || !leader->is_string() || !strings("replicas", s.replicas) || !strings("in_sync", s.in_sync))
    return std::nullopt;
  s.epoch = epoch->get<std::uint32_t>();
  s.leader = leader->get<std::string>();
  return s;
}

key_space::key_space(const std::string& cluster_name) : root_("/nerve/" + cluster_name + "/") {
}

std::string key_space::node(const std::string& id) const {
  return nodes() + id;
}

std::string key_space::topic(const std::string& name) const {
  return topics() + name;
}

std::string key_space::state(std::uint32_t topic_id, std::uint32_t p) const {
  return partitions() + std::to_string(topic_id) + "/" + std::to_string(p) + "/state";
}

std::string key_space::leader(std::uint32_t topic_id, std::uint32_t p) const {
  return partitions() + std::to_string(topic_id) + "/" + std::to_string(p) + "/leader";
}

std::optional<key_space::parsed> key_space::parse_partition_key(std::string_view key) const {
  auto prefix = partitions();
  if (key.substr(0, prefix.size()) != prefix)
    return std::nullopt;
  key.remove_prefix(prefix.size());
  parsed out;
  auto number = [&](std::uint32_t& v) {
    auto [end, ec] = std::from_chars(key.data(), key.data() + key.size(), v);
    if (ec != std::errc{} || end == key.data() || end == key.data() + key.size() || *end != '/')
      return false;
    key.remove_prefix(static_cast<std::size_t>(end - key.data()) + 1);
    return true;
  };
  if (!number(out.topic_id) || !number(out.partition))
    return std::nullopt;
  if (key == "leader")
    out.is_leader = true;
  else if (key != "state")
    return std::nullopt;
  return out;
}

} // namespace nerve::actors::control
