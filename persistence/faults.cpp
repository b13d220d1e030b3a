// Names of the storage layer's fault points.
#include "persistence/faults.hpp"

namespace nerve::persistence {

const char* to_string(fault_point p) {
  switch (p) {
    case fault_point::before_append:
      return "before_append";
    case fault_point::before_sync:
      return "before_sync";
    case fault_point::before_cursor_commit:
      return "before_cursor_commit";
    case fault_point::child_io:
      return "child_io";
  }
  return "unknown";
}

} // namespace nerve::persistence
