// Big-endian key encoding for the event log.
#include "persistence/keys.hpp"

namespace nerve::persistence::keys {

// Big-endian bytes appended at once (a push_back per byte cost ~20
// instructions each, on every key of every event).
void put_u32(std::string& out, std::uint32_t v) {
  char b[4];
  for (int i = 3; i >= 0; --i, v >>= 8)
    b[i] = static_cast<char>(v & 0xff);
  out.append(b, sizeof b);
}

void put_u64(std::string& out, std::uint64_t v) {
  char b[8];
  for (int i = 7; i >= 0; --i, v >>= 8)
    b[i] = static_cast<char>(v & 0xff);
  out.append(b, sizeof b);
}

std::uint32_t get_u32(std::string_view in, std::size_t at) {
  std::uint32_t v = 0;
  for (std::size_t i = 0; i < 4; ++i)
    v = (v << 8) | static_cast<unsigned char>(in[at + i]);
  return v;
}

std::uint64_t get_u64(std::string_view in, std::size_t at) {
  std::uint64_t v = 0;
  for (std::size_t i = 0; i < 8; ++i)
    v = (v << 8) | static_cast<unsigned char>(in[at + i]);
  return v;
}

std::string partition_prefix(std::uint32_t topic_id, std::uint32_t partition) {
  std::string k;
  k.reserve(8);
  put_u32(k, topic_id);
  put_u32(k, partition);
  return k;
}

std::string event_key(std::uint32_t topic_id, std::uint32_t partition, std::uint64_t offset) {
  std::string k = partition_prefix(topic_id, partition);
  k.reserve(16); // one allocation: the prefix alone fits the string's own buffer
  put_u64(k, offset);
  return k;
}

std::string time_key(std::int64_t time_us, std::uint32_t topic_id, std::uint32_t partition,
                     std::uint64_t offset) {
  std::string k;
  k.reserve(24);
  // Times before 1970 do not occur; the cast keeps the order for the rest.
  put_u64(k, static_cast<std::uint64_t>(time_us));
  put_u32(k, topic_id);
  put_u32(k, partition);
  put_u64(k, offset);
  return k;
}

std::string id_value(std::uint32_t topic_id, std::uint32_t partition, std::uint64_t offset,
                     std::int64_t time_us) {
  std::string v = event_key(topic_id, partition, offset);
  put_u64(v, static_cast<std::uint64_t>(time_us));
  return v;
}

} // namespace nerve::persistence::keys
