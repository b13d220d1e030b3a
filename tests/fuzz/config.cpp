// Fuzzes the YAML config loader: any text is a config or a one-line error,
// never a crash, a hang or undefined behaviour.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "config/config.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string text(reinterpret_cast<const char*>(data), size);
  auto c = nerve::config::parse_yaml(text);
  if (!c && (c.error().empty() || c.error().find('\n') != std::string::npos)) {
    std::fprintf(stderr, "a config error must be one line: %s\n", c.error().c_str());
    std::abort();
  }
  return 0;
}
