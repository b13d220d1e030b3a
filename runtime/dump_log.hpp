// `nerve __dump-log`: every event stored in a data directory, one line each,
// for the offline cluster checker (tests/cluster/checker.py).
#pragma once

#include <string>

namespace nerve::runtime {

/// Opens `data_dir` read-only and prints `topic partition offset id time_us
/// sha1` for every stored event, sorted by topic, partition and offset; sha1
/// is the hex SHA-1 of the event JSON as stored. Answers exit_ok, or
/// exit_failed (with one line on stderr per problem) when the directory
/// cannot be opened or an event cannot be read.
int dump_log(const std::string& data_dir);

/// The same directory's leader-epoch checkpoints: `topic partition epoch
/// start_offset` per entry, sorted by topic, partition and epoch (replicated
/// partitions only; the replicas of a partition agree on them).
int dump_epochs(const std::string& data_dir);

} // namespace nerve::runtime
