// lean_sharing: CAF's work-sharing scheduler policy (one central queue under
// a mutex) without its two costs on nerve's hot path. CAF 0.17's
// `work_sharing` allocates a list node per job and notifies its condition
// variable while holding the queue's mutex, on every enqueue: the worker it
// wakes then blocks on that mutex at once (a second context switch), and a
// thread that enqueues while the worker dequeues waits too. Here jobs go in
// a deque, and the condition variable is notified after the mutex is
// released and only when a worker sleeps on it. Same semantics otherwise
// (FIFO, no stealing, any number of workers); installed as the scheduler
// module by node.cpp (docs/architecture.md, "Threads").
//
// Its workers' scheduling loop is nerve's as well (the specialization of
// worker<lean_sharing>::run() below): CAF's loop tags the thread with the
// resumed actor's id for its logger before every resume, through a
// dynamic_cast from resumable to abstract_actor (a cross-cast through
// scheduled_actor's bases: ~1,100 instructions, callgrind, about one per
// published event) even when CAF logs nothing, as Debian's build
// (CAF_LOG_LEVEL QUIET) never does.
#pragma once

#include <condition_variable>
#include <deque>
#include <mutex>

#include <caf/policy/unprofiled.hpp>
#include <caf/resumable.hpp>
#include <caf/scheduler/abstract_coordinator.hpp>
#include <caf/scheduler/coordinator.hpp>
#include <caf/scheduler/worker.hpp>

namespace nerve::actors {

class lean_sharing : public caf::policy::unprofiled {
public:
  struct coordinator_data {
    explicit coordinator_data(caf::scheduler::abstract_coordinator*) {}
    std::mutex lock;
    std::condition_variable cv;
    std::deque<caf::resumable*> queue; ///< guarded by lock
    int sleeping = 0;                  ///< workers waiting on cv; guarded by lock
  };

  struct worker_data {
    explicit worker_data(caf::scheduler::abstract_coordinator*) {}
  };

  template <class Coordinator>
  void enqueue(Coordinator* self, caf::resumable* job) {
    auto& data = d(self);
    bool wake = false;
    {
      std::lock_guard<std::mutex> guard{data.lock};
      data.queue.push_back(job);
      wake = data.sleeping > 0;
    }
    if (wake)
      data.cv.notify_one();
  }

  template <class Coordinator>
  void central_enqueue(Coordinator* self, caf::resumable* job) {
    enqueue(self, job);
  }

  template <class Worker>
  void external_enqueue(Worker* self, caf::resumable* job) {
    enqueue(self->parent(), job);
  }

  template <class Worker>
  void internal_enqueue(Worker* self, caf::resumable* job) {
    enqueue(self->parent(), job);
  }

  template <class Worker>
  void resume_job_later(Worker* self, caf::resumable* job) {
    enqueue(self->parent(), job);
  }

  template <class Worker>
  caf::resumable* dequeue(Worker* self) {
    auto& data = d(self->parent());
    std::unique_lock<std::mutex> guard{data.lock};
    while (data.queue.empty()) {
      ++data.sleeping;
      data.cv.wait(guard);
      --data.sleeping;
    }
    auto* job = data.queue.front();
    data.queue.pop_front();
    return job;
  }

  template <class Worker, class UnaryFunction>
  void foreach_resumable(Worker*, UnaryFunction) {}

  template <class Coordinator, class UnaryFunction>
  void foreach_central_resumable(Coordinator* self, UnaryFunction f) {
    auto& data = d(self);
    std::unique_lock<std::mutex> guard{data.lock};
    while (!data.queue.empty()) {
      auto* job = data.queue.front();
      data.queue.pop_front();
      f(job);
    }
  }
};

} // namespace nerve::actors

/// The worker loop of lean_sharing: take the next job, run it, and keep,
/// requeue or drop the reference by what it says (CAF's semantics), without
/// the logger's per-resume actor tag (above). Declared here, before any use
/// of the worker, so every translation unit sees this loop.
template <>
inline void caf::scheduler::worker<nerve::actors::lean_sharing>::run() {
  CAF_SET_LOGGER_SYS(&system());
  for (;;) {
    auto* job = policy_.dequeue(this);
    policy_.before_resume(this, job);
    auto res = job->resume(this, max_throughput_);
    policy_.after_resume(this, job);
    if (res == resumable::resume_later) {
      policy_.resume_job_later(this, job); // it stays referenced in the queue
    } else if (res == resumable::done) {
      policy_.after_completion(this, job);
      intrusive_ptr_release(job);
    } else if (res == resumable::awaiting_message) {
      intrusive_ptr_release(job); // enqueued again by its next message
    } else {                      // shutdown_execution_unit
      policy_.after_completion(this, job);
      policy_.before_shutdown(this);
      return;
    }
  }
}
