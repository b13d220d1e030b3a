// Aligned plain-text tables.
#include "runtime/table.hpp"

#include <algorithm>
#include <ostream>

namespace nerve::runtime {

table::table(std::vector<std::string> headers) : headers_(std::move(headers)) {
}

namespace {

/// Cells come from publishers (an event's key or type): a control character
/// must neither move the cursor or recolour the terminal nor start a fake
/// row, so each is shown escaped (\n, \u001b).
std::string printable(const std::string& cell) {
  static constexpr char hex[] = "0123456789abcdef";
  std::string out;
  out.reserve(cell.size());
  for (unsigned char c : cell) {
    if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c < 0x20 || c == 0x7f) {
      out += "\\u00";
      out += hex[c >> 4];
      out += hex[c & 0xf];
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

} // namespace

void table::add(std::vector<std::string> row) {
  row.resize(headers_.size());
  for (auto& cell : row)
    cell = printable(cell);
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
