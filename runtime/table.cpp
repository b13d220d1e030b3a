// Aligned plain-text tables.
#include "runtime/table.hpp"

#include <algorithm>
#include <ostream>

#include "config/config.hpp"

namespace nerve::runtime {

table::table(std::vector<std::string> headers) : headers_(std::move(headers)) {
}

std::size_t utf8_length(const std::string& s) {
  return static_cast<std::size_t>(std::count_if(s.begin(), s.end(), [](char c) {
    return (static_cast<unsigned char>(c) & 0xC0U) != 0x80U; // not a continuation byte
  }));
}

std::string utf8_prefix(const std::string& s, std::size_t n) {
  std::size_t chars = 0;
  for (std::size_t i = 0; i < s.size(); ++i)
    if ((static_cast<unsigned char>(s[i]) & 0xC0U) != 0x80U && chars++ == n)
      return s.substr(0, i);
  return s;
}

void table::add(std::vector<std::string> row) {
  row.resize(headers_.size());
  for (auto& cell : row)
    cell = config::one_line(cell);
  rows_.push_back(std::move(row));
}

void table::print(std::ostream& out) const {
  std::vector<std::size_t> width(headers_.size());
  for (std::size_t c = 0; c < headers_.size(); ++c) {
    width[c] = utf8_length(headers_[c]);
    for (auto& r : rows_)
      width[c] = std::max(width[c], utf8_length(r[c]));
  }
  auto line = [&](const std::vector<std::string>& cells) {
    std::string s;
    for (std::size_t c = 0; c < cells.size(); ++c) {
      s += cells[c];
      if (c + 1 < cells.size())
        s += std::string(width[c] - utf8_length(cells[c]) + 2, ' ');
    }
    out << s << '\n';
  };
  line(headers_);
  for (auto& r : rows_)
    line(r);
}

} // namespace nerve::runtime
