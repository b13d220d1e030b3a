// `nerve __dump-log --data-dir D`: a stopped node's log as text lines, so an
// offline checker can compare what every node stored with what was acked.
#include "runtime/dump_log.hpp"

#include <array>
#include <cstdio>

#include <nlohmann/json.hpp>
#include <openssl/sha.h>

#include "persistence/read_only_log.hpp"
#include "runtime/commands.hpp"
#include "runtime/logging.hpp"

namespace nerve::runtime {

namespace {

std::string sha1_hex(std::string_view bytes) {
  std::array<unsigned char, SHA_DIGEST_LENGTH> digest{};
  SHA1(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size(), digest.data());
  static constexpr char hex[] = "0123456789abcdef";
  std::string out;
  out.reserve(2 * digest.size());
  for (unsigned char b : digest) {
    out += hex[b >> 4];
    out += hex[b & 0xf];
  }
  return out;
}

/// The event's id, after checking that the JSON names the coordinates its
/// key gives; otherwise why it does not.
tl::expected<std::string, std::string> checked_id(std::string_view json, const std::string& topic,
                                                  std::uint32_t partition, std::uint64_t offset) {
  auto j = nlohmann::json::parse(json, nullptr, false);
  if (j.is_discarded() || !j.is_object())
    return tl::make_unexpected(std::string{"not a JSON object"});
  auto id = j.find("id");
  if (id == j.end() || !id->is_string() || id->get_ref<const std::string&>().empty())
    return tl::make_unexpected(std::string{"no \"id\" string"});
  auto names = [&j](const char* name, const nlohmann::json& want) {
    auto it = j.find(name);
    return it != j.end() && *it == want;
  };
  if (!names("topic", topic) || !names("partition", partition) || !names("offset", offset))
    return tl::make_unexpected(std::string{"its topic, partition or offset differ from its key"});
  return id->get<std::string>();
}

/// The directory opened read-only, or nothing (said on stderr).
std::unique_ptr<persistence::read_only_log> open_log(const std::string& data_dir) {
  setup_logging(config::log_config{}); // RocksDB's warnings to stderr: stdout is the dump
  auto log = persistence::read_only_log::open(data_dir);
  if (!log) {
    print_error("__dump-log: " + log.error().message);
    return nullptr;
  }
  return std::move(*log);
}

/// Whether everything printed reached stdout (else said on stderr).
bool flushed() {
  if (std::fflush(stdout) == 0 && !std::ferror(stdout))
    return true;
  print_error("__dump-log: cannot write the dump to stdout");
  return false;
}

} // namespace

int dump_log(const std::string& data_dir) {
  auto log = open_log(data_dir);
  if (!log)
    return exit_failed;
  std::uint64_t bad = 0;
  std::string line;
  auto visited = log->visit([&](const persistence::topic_info& topic, std::uint32_t partition,
                                std::uint64_t offset, std::int64_t time_us, std::string_view json) {
    auto id = checked_id(json, topic.name, partition, offset);
    if (!id) {
      ++bad;
      print_error("__dump-log: corrupt event " + topic.name + "/" + std::to_string(partition) + "/"
                  + std::to_string(offset) + ": " + id.error());
      return;
    }
    line.clear();
    line += topic.name;
    line += ' ';
    line += std::to_string(partition);
    line += ' ';
    line += std::to_string(offset);
    line += ' ';
    line += *id;
    line += ' ';
    line += std::to_string(time_us);
    line += ' ';
    line += sha1_hex(json);
    line += '\n';
    std::fwrite(line.data(), 1, line.size(), stdout);
  });
  if (!flushed())
    return exit_failed;
  if (!visited) {
    print_error("__dump-log: the dump of " + data_dir
                + " is incomplete: " + visited.error().message);
    return exit_failed;
  }
  return bad == 0 ? exit_ok : exit_failed;
}

int dump_epochs(const std::string& data_dir) {
  auto log = open_log(data_dir);
  if (!log)
    return exit_failed;
  for (const auto& topic : log->topics())
    for (std::uint32_t p = 0; p < topic.partitions; ++p) {
      auto epochs = log->epochs(topic, p);
      if (!epochs) {
        print_error("__dump-log: " + epochs.error().message);
        return exit_failed;
      }
      for (const auto& e : *epochs)
        std::printf("%s %u %u %llu\n", topic.name.c_str(), p, e.epoch,
                    static_cast<unsigned long long>(e.start_offset));
    }
  return flushed() ? exit_ok : exit_failed;
}

} // namespace nerve::runtime
