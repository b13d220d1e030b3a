// progress_waiters: requests that wait for something to move (a consumer
// group's cursor: GET /v1/topics/{t}/groups?index=&wait_ms=), answered by
// the caller when it moved already, else on a thread of their own once it
// moved or their wait is over. Partitions call notify() whenever a cursor
// moves; with nobody waiting that is one atomic load. The thread starts with
// the first waiter that has to wait.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace nerve::actors {

class progress_waiters {
public:
  using clock = std::chrono::steady_clock;

  progress_waiters() = default;
  progress_waiters(const progress_waiters&) = delete;
  progress_waiters& operator=(const progress_waiters&) = delete;
  ~progress_waiters();

  /// Calls `fire` once: on the calling thread, before add() returns, when
  /// `moved()` holds already or the waiters are stopped; else on the
  /// waiters' thread, when `moved()` holds after a notify() or at
  /// `deadline`, whichever comes first. A waiter that must wait wakes the
  /// thread only when its deadline is earlier than the one the thread
  /// sleeps towards (a long poll that finds its cursor moved, the common
  /// case under load, costs no thread hand-off at all).
  void add(std::function<bool()> moved, clock::time_point deadline, std::function<void()> fire);

  /// Something moved: the waiters check again. One atomic load when nobody
  /// waits; one lock and wake-up per round of the waiters' thread otherwise.
  void notify() {
    if (waiting_.load(std::memory_order_seq_cst) == 0 || dirty_.exchange(true))
      return;
    {
      // Empty, but ordered against the thread's check of dirty_: it either
      // saw the flag or sleeps by now and gets the wake-up.
      std::lock_guard<std::mutex> guard{mutex_};
    }
    wake_.notify_one();
  }

  /// Answers every waiter and ends the thread; later add()s fire at once.
  void stop();

  /// Waiters now.
  [[nodiscard]] std::size_t waiting() const { return waiting_.load(); }

private:
  struct waiter {
    std::function<bool()> moved;
    clock::time_point deadline;
    std::function<void()> fire;
  };

  void run();

  std::mutex mutex_;
  std::condition_variable wake_;
  std::vector<waiter> waiters_;
  std::atomic<bool> dirty_{false}; ///< set by notify(), cleared by the thread under mutex_
  bool stopped_ = false;
  /// When the thread wakes of itself next (max: only when notified); under mutex_.
  clock::time_point sleeps_until_ = clock::time_point::max();
  std::atomic<std::size_t> waiting_{0};
  std::thread thread_;
};

} // namespace nerve::actors
