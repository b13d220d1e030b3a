// Aligned plain-text tables for the CLI's human output.
#pragma once

#include <iosfwd>
#include <string>
#include <vector>

namespace nerve::runtime {

class table {
public:
  explicit table(std::vector<std::string> headers);
  void add(std::vector<std::string> row);
  /// Columns padded to their widest cell, two spaces apart.
  void print(std::ostream& out) const;

private:
  std::vector<std::string> headers_;
  std::vector<std::vector<std::string>> rows_;
};

} // namespace nerve::runtime
