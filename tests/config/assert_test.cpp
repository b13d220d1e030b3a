// NERVE_ASSERT: a true condition costs nothing; a false one aborts the
// process with the condition, the place and the detail on stderr, in every
// build type. Checked in a forked child, so the test process survives.
#include <catch2/catch.hpp>

#include <csignal>
#include <string>
#include <sys/wait.h>
#include <unistd.h>

#include "config/assert.hpp"

namespace {

struct child_result {
  int signal = 0;
  std::string stderr_text;
};

template <class F>
child_result run_in_child(F fn) {
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  auto pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    std::signal(SIGABRT, SIG_DFL); // not Catch's handler: the child just dies
    ::dup2(fds[1], 2);
    ::close(fds[0]);
    fn();
    ::_exit(0);
  }
  ::close(fds[1]);
  child_result r;
  char buf[512];
  for (ssize_t n; (n = ::read(fds[0], buf, sizeof buf)) > 0;)
    r.stderr_text.append(buf, static_cast<std::size_t>(n));
  ::close(fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  r.signal = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
  return r;
}

} // namespace

TEST_CASE("a true NERVE_ASSERT lets the program go on", "[unit]") {
  auto r = run_in_child([] {
    int credits = 3;
    NERVE_ASSERT(credits >= 0);
    NERVE_ASSERT(credits <= 16, "credits within max_in_flight");
  });
  CHECK(r.signal == 0);
  CHECK(r.stderr_text.empty());
}

TEST_CASE("a false NERVE_ASSERT aborts and names the condition and the invariant", "[unit]") {
  auto r = run_in_child([] {
    int dlq_count = -1;
    NERVE_ASSERT(dlq_count >= 0, "the DLQ count never goes below zero");
  });
  CHECK(r.signal == SIGABRT);
  CHECK(r.stderr_text.find("dlq_count >= 0") != std::string::npos);
  CHECK(r.stderr_text.find("assert_test.cpp") != std::string::npos);
  CHECK(r.stderr_text.find("the DLQ count never goes below zero") != std::string::npos);
}
