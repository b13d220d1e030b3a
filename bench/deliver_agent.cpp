// deliver_agent: the process agent of bench/deliver, a no-op in C++.
//
// Speaks nerve's JSON Lines agent protocol (docs/api.md, CONTRACT section 5):
// reads {"type":"event","delivery":"<id>","attempt":1,"event":{...}} lines on
// stdin and answers {"type":"ack","delivery":"<id>"} on stdout. Every line is
// parsed as JSON, as a real agent would; the acks for all lines that arrived
// in one read() go out in one write(), so a busy agent does not make one
// system call per event. Exits when nerve closes stdin.
#include <cerrno>
#include <cstdio>
#include <string>
#include <string_view>

#include <unistd.h>

#include <nlohmann/json.hpp>

namespace {

bool write_all(const std::string& out) {
  std::size_t done = 0;
  while (done < out.size()) {
    auto n = ::write(1, out.data() + done, out.size() - done);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return false;
    done += static_cast<std::size_t>(n);
  }
  return true;
}

} // namespace

int main() {
  std::string in;
  std::string out;
  char buf[65536];
  for (;;) {
    auto n = ::read(0, buf, sizeof buf);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return 0;
    in.append(buf, static_cast<std::size_t>(n));
    std::size_t begin = 0;
    for (auto nl = in.find('\n'); nl != std::string::npos; nl = in.find('\n', begin)) {
      auto msg
        = nlohmann::json::parse(std::string_view{in}.substr(begin, nl - begin), nullptr, false);
      begin = nl + 1;
      if (!msg.is_object() || msg.value("type", "") != "event" || !msg.contains("delivery"))
        continue;
      out += "{\"type\":\"ack\",\"delivery\":";
      out += msg["delivery"].dump();
      out += "}\n";
    }
    in.erase(0, begin);
    if (!out.empty() && !write_all(out))
      return 1;
    out.clear();
  }
}
