// Rendezvous placement: every node computes the same owner, owners spread,
// and a member added or gone moves only its own share.
#include <catch2/catch.hpp>

#include <map>

#include "actors/placement.hpp"

using nerve::actors::placement;
using nerve::config::member;

namespace {

std::vector<member> members(std::initializer_list<const char*> ids) {
  std::vector<member> out;
  std::uint16_t port = 7101;
  for (auto* id : ids)
    out.push_back({id, "127.0.0.1", port++});
  return out;
}

} // namespace

TEST_CASE("every node computes the same owner and home", "[unit]") {
  auto list = members({"n1", "n2", "n3"});
  placement a{list, "n1"}, b{list, "n2"}, c{list, "n3"};
  for (std::uint32_t p = 0; p < 64; ++p) {
    CHECK(a.owner("orders", p) == b.owner("orders", p));
    CHECK(b.owner("orders", p) == c.owner("orders", p));
  }
  CHECK(a.home("orders") == c.home("orders"));
  CHECK(a.digest() == b.digest());
  // The owner is the first replica.
  for (std::uint32_t p = 0; p < 16; ++p)
    CHECK(a.replicas("orders", p, 3).front() == a.owner("orders", p));
}

TEST_CASE("owners spread over the members", "[unit]") {
  placement where{members({"n1", "n2", "n3"}), "n1"};
  std::map<std::string, int> owned;
  for (int t = 0; t < 100; ++t)
    for (std::uint32_t p = 0; p < 8; ++p)
      ++owned[where.owner("topic-" + std::to_string(t), p)];
  REQUIRE(owned.size() == 3);
  for (auto& [id, n] : owned) {
    INFO(id << " owns " << n << " of 800");
    CHECK(n > 200);
    CHECK(n < 340);
  }
}

TEST_CASE("a member added takes partitions only for itself", "[unit]") {
  placement three{members({"n1", "n2", "n3"}), "n1"};
  placement four{members({"n1", "n2", "n3", "n4"}), "n1"};
  int moved = 0;
  for (std::uint32_t p = 0; p < 400; ++p) {
    auto before = three.owner("orders", p);
    auto after = four.owner("orders", p);
    if (before != after) {
      CHECK(after == "n4");
      ++moved;
    }
  }
  CHECK(moved > 50);
  CHECK(moved < 150);
}

TEST_CASE("another member list has another digest, another order the same", "[unit]") {
  placement a{members({"n1", "n2", "n3"}), "n1"};
  auto list = members({"n1", "n2", "n3"});
  placement reordered{{list[2], list[0], list[1]}, "n1"};
  placement moved{{{"n1", "127.0.0.1", 7101}, {"n2", "127.0.0.1", 7102}, {"n3", "10.0.0.3", 7103}},
                  "n1"};
  CHECK(a.digest() == reordered.digest());
  CHECK(a.digest() != moved.digest());
  CHECK(a.digest().size() == 16);
  // The weights do not depend on the list's order: the owners agree.
  for (std::uint32_t p = 0; p < 32; ++p)
    CHECK(a.owner("orders", p) == reordered.owner("orders", p));
}
