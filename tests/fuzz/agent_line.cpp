// Fuzzes a process agent's reply line: any bytes are an ack, a nack, an
// unknown type or no reply, never an exception (which would crash the
// agent's instance actor), a crash or undefined behaviour.
#include <cstdint>
#include <string>

#include "actors/agent_line.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string line(reinterpret_cast<const char*>(data), size);
  (void)nerve::actors::parse_agent_line(line); // an exception aborts the fuzzer
  return 0;
}
