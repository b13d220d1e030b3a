#include "actors/progress_waiters.hpp"

#include <pthread.h>

#include <algorithm>
#include <utility>

namespace nerve::actors {

progress_waiters::~progress_waiters() {
  stop();
}

void progress_waiters::add(std::function<bool()> moved, clock::time_point deadline,
                           std::function<void()> fire) {
  {
    std::lock_guard<std::mutex> guard{mutex_};
    if (!stopped_) {
      waiters_.push_back({std::move(moved), deadline, std::move(fire)});
      // Published before the check below (both seq_cst): a notify() that
      // comes after the check sees a waiter and wakes the thread, and one
      // that came before it left a move the check sees.
      waiting_.store(waiters_.size(), std::memory_order_seq_cst);
      if (waiters_.back().moved()) {
        fire = std::move(waiters_.back().fire); // answered below, outside the lock
        waiters_.pop_back();
        waiting_.store(waiters_.size());
      } else {
        if (!thread_.joinable())
          thread_ = std::thread{[this] {
            ::pthread_setname_np(::pthread_self(), "nerve.waiters");
            run();
          }};
        else if (deadline < sleeps_until_)
          wake_.notify_one(); // it sleeps past this deadline: it must sleep less
        return;
      }
    }
  }
  fire();
}

void progress_waiters::stop() {
  {
    std::lock_guard<std::mutex> guard{mutex_};
    if (stopped_)
      return;
    stopped_ = true;
  }
  wake_.notify_one();
  if (thread_.joinable())
    thread_.join();
}

void progress_waiters::run() {
  std::unique_lock<std::mutex> lock{mutex_};
  std::vector<waiter> due;
  for (;;) {
    auto now = clock::now();
    // Checked under the lock: a notify() that comes meanwhile sets dirty_
    // again, so no move is missed.
    bool check = dirty_.exchange(false) || stopped_;
    for (auto it = waiters_.begin(); it != waiters_.end();) {
      if (stopped_ || it->deadline <= now || (check && it->moved())) {
        due.push_back(std::move(*it));
        it = waiters_.erase(it);
      } else {
        ++it;
      }
    }
    waiting_.store(waiters_.size());
    if (!due.empty()) {
      lock.unlock();
      for (auto& w : due)
        w.fire(); // answers outside the lock: fire() may add a waiter
      due.clear();
      lock.lock();
      continue;
    }
    if (stopped_)
      return;
    if (dirty_.load())
      continue;
    // Without a predicate: add() wakes the thread for a new deadline
    // without setting dirty_, and the loop looks again at whatever woke it
    // (a notify() that came after the check above waits for this lock, so
    // its wake-up comes once the thread sleeps).
    if (waiters_.empty()) {
      sleeps_until_ = clock::time_point::max();
      wake_.wait(lock);
    } else {
      sleeps_until_ = std::min_element(waiters_.begin(), waiters_.end(), [](auto& a, auto& b) {
                        return a.deadline < b.deadline;
                      })->deadline;
      wake_.wait_until(lock, sleeps_until_);
    }
  }
}

} // namespace nerve::actors
