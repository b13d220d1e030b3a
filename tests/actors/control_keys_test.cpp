// Cluster step 2's etcd records: the key layout and the partition state
// record round-trip, and anything else read back is refused, not guessed.
#include <catch2/catch.hpp>

#include "actors/control_keys.hpp"

using namespace nerve::actors::control;

TEST_CASE("a partition state record round-trips and a malformed one is refused", "[unit]") {
  partition_state s{7, "b", {"a", "b", "c"}, {"b", "c"}};
  auto back = decode(encode(s));
  REQUIRE(back);
  CHECK(*back == s);
  CHECK(back->is_in_sync("c"));
  CHECK_FALSE(back->is_in_sync("a"));

  for (const char* bad :
       {"", "null", "[]", "{\"epoch\":-1,\"leader\":\"\",\"replicas\":[],\"in_sync\":[]}",
        "{\"epoch\":4294967296,\"leader\":\"\",\"replicas\":[],\"in_sync\":[]}",
        "{\"epoch\":1,\"leader\":3,\"replicas\":[],\"in_sync\":[]}",
        "{\"epoch\":1,\"leader\":\"a\",\"replicas\":[\"a\",2],\"in_sync\":[]}",
        "{\"epoch\":1,\"leader\":\"a\",\"replicas\":[\"a\"]}", "{\"epoch\":1"})
    CHECK_FALSE(decode(bad));
}

TEST_CASE("etcd keys live under the cluster's name and partition keys parse back", "[unit]") {
  key_space k{"prod"};
  CHECK(k.root() == "/nerve/prod/");
  CHECK(k.node("n1") == "/nerve/prod/nodes/n1");
  CHECK(k.topic("orders") == "/nerve/prod/topics/orders");
  CHECK(k.topic_seq() == "/nerve/prod/topic-seq");
  CHECK(k.state(3, 12) == "/nerve/prod/parts/3/12/state");
  CHECK(k.leader(3, 12) == "/nerve/prod/parts/3/12/leader");

  auto st = k.parse_partition_key(k.state(3, 12));
  REQUIRE(st);
  CHECK(st->topic_id == 3);
  CHECK(st->partition == 12);
  CHECK_FALSE(st->is_leader);
  auto ld = k.parse_partition_key(k.leader(4294967295U, 0));
  REQUIRE(ld);
  CHECK(ld->topic_id == 4294967295U);
  CHECK(ld->is_leader);

  for (const char* bad : {"/nerve/prod/parts/3/12/owner", "/nerve/prod/parts/3/state",
                          "/nerve/prod/parts/x/1/state", "/nerve/other/parts/3/12/state",
                          "/nerve/prod/parts/3/12/", "/nerve/prod/parts/99999999999/1/state"})
    CHECK_FALSE(k.parse_partition_key(bad));
}
