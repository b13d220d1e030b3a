// The one place a failed NERVE_ASSERT ends the process.
#include "config/assert.hpp"

#include <cstdio>
#include <cstdlib>

namespace nerve::invariant {

void assert_failed(const char* condition, const char* file, int line, const char* detail) noexcept {
  // stderr, not the logger: the logger may be what is broken.
  std::fprintf(stderr, "nerve: assertion failed: %s at %s:%d%s%s\n", condition, file, line,
               detail[0] != '\0' ? ": " : "", detail);
  std::fflush(stderr);
  std::abort();
}

} // namespace nerve::invariant
