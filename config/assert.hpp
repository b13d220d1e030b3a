// NERVE_ASSERT: invariants that hold in every build (tests and release).
// It lives in config/, the library every other one depends on, so that
// persistence, actors and http can all assert without a dependency upward.
// A failed assertion is a bug: it logs the condition and where, then aborts
// (the runner's supervision cannot repair a state the code thinks impossible).
#pragma once

namespace nerve::invariant {

/// Prints the failed condition with its place and a detail, then aborts.
[[noreturn]] void assert_failed(const char* condition, const char* file, int line,
                                const char* detail) noexcept;

} // namespace nerve::invariant

/// Aborts with a message naming `cond` when it is false. The optional second
/// argument is a string literal saying what the invariant means.
#define NERVE_ASSERT(...)                                                                          \
  NERVE_ASSERT_PICK(__VA_ARGS__, NERVE_ASSERT_2, NERVE_ASSERT_1, )(__VA_ARGS__)
#define NERVE_ASSERT_PICK(a, b, name, ...) name
#define NERVE_ASSERT_1(cond)                                                                       \
  ((cond) ? static_cast<void>(0) : ::nerve::invariant::assert_failed(#cond, __FILE__, __LINE__, ""))
#define NERVE_ASSERT_2(cond, why)                                                                  \
  ((cond) ? static_cast<void>(0)                                                                   \
          : ::nerve::invariant::assert_failed(#cond, __FILE__, __LINE__, why))
