// The publish lane: a publishing thread with an event loop appends the
// publishes of one pass of its loop itself, in one write, and waits for one
// sync, instead of handing each to its partition's actor
// (docs/architecture.md, "The publish lane"). No CAF here: the HTTP
// server's translation unit includes it.
#pragma once

#include <functional>

namespace nerve::actors {

/// Runs a function once the calling thread's event loop has run the
/// handlers that are ready now (the HTTP threads post it to their loop).
/// It must run it on the calling thread: the pass it ends lives in that
/// thread's storage (each HTTP and RESP thread runs a loop of its own).
using pass_poster = std::function<void(std::function<void()>)>;

/// Makes the calling thread a lane thread: its publishes to partitions that
/// allow it are appended at the end of its loop's pass. A thread without a
/// poster (CAF's, the query pool's) publishes through the partition actors.
void set_pass_poster(pass_poster post);

/// At the end of a lane thread's loop: publishes of a pass that never ran
/// are answered with an error, and the thread stops being a lane thread.
void end_lane_thread();

} // namespace nerve::actors
