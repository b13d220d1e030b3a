// Aligned plain-text tables.
#include "runtime/table.hpp"

#include <algorithm>
#include <ostream>

namespace nerve::runtime {

table::table(std::vector<std::string> headers) : headers_(std::move(headers)) {
}

void table::add(std::vector<std::string> row) {
  row.resize(headers_.size());
  rows_.push_back(std::move(row));
}

void table::print(std::ostream& out) const {
  std::vector<std::size_t> width(headers_.size());
  for (std::size_t c = 0; c < headers_.size(); ++c) {
    width[c] = headers_[c].size();
    for (auto& r : rows_)
      width[c] = std::max(width[c], r[c].size());
  }
  auto line = [&](const std::vector<std::string>& cells) {
    std::string s;
    for (std::size_t c = 0; c < cells.size(); ++c) {
      s += cells[c];
      if (c + 1 < cells.size())
        s += std::string(width[c] - cells[c].size() + 2, ' ');
    }
    out << s << '\n';
  };
  line(headers_);
  for (auto& r : rows_)
    line(r);
}

} // namespace nerve::runtime
