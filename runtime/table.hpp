// Aligned plain-text tables for the CLI's human output.
#pragma once

#include <iosfwd>
#include <string>
#include <vector>

namespace nerve::runtime {

/// Characters (code points) in UTF-8 text: what a terminal column counts.
[[nodiscard]] std::size_t utf8_length(const std::string& s);
/// The first `n` characters of UTF-8 text.
[[nodiscard]] std::string utf8_prefix(const std::string& s, std::size_t n);

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
