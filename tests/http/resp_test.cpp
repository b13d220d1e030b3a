// The Redis protocol listener's pure parts: stream entry ids, the reply
// encoder in both protocol versions, the command table and Redis' error texts.
#include <catch2/catch.hpp>

#include <limits>

#include "http/resp_ids.hpp"
#include "http/resp_server.hpp"

using namespace nerve::http::resp;

TEST_CASE("entry ids encode a partition and offset and decode back", "[unit][http]") {
  auto id = encode_id(1700000000123, 2, 10, 4);
  REQUIRE(id);
  CHECK(id->ms == 1700000000123);
  CHECK(id->seq == 42);
  CHECK(format_id(*id) == "1700000000123-42");
  auto place = decode_id(*id, 4);
  REQUIRE(place);
  CHECK(place->partition == 2);
  CHECK(place->offset == 10);
  for (std::uint32_t p = 0; p < 7; ++p)
    for (std::uint64_t o : {0ULL, 1ULL, 999ULL, 1ULL << 40}) {
      auto e = encode_id(5, p, o, 7);
      REQUIRE(e);
      auto back = decode_id(*e, 7);
      REQUIRE(back);
      CHECK(back->partition == p);
      CHECK(back->offset == o);
    }
}

TEST_CASE("entry ids of one partition increase with its offsets", "[unit][http]") {
  // Append times never decrease within a partition; offsets always increase.
  auto a = *encode_id(1000, 3, 5, 8);
  auto b = *encode_id(1000, 3, 6, 8);
  auto c = *encode_id(1001, 3, 7, 8);
  CHECK(a < b);
  CHECK(b < c);
  // One partition: seq is the offset itself.
  CHECK(encode_id(9, 0, 77, 1)->seq == 77);
}

TEST_CASE("entry ids refuse places they cannot encode", "[unit][http]") {
  CHECK_FALSE(encode_id(1, 0, 0, 0));
  CHECK_FALSE(encode_id(1, 4, 0, 4));
  CHECK_FALSE(encode_id(1, 0, std::numeric_limits<std::uint64_t>::max() / 2, 4));
  CHECK(encode_id(1, 0, std::numeric_limits<std::uint64_t>::max(), 1));
  CHECK_FALSE(decode_id(entry_id{1, 2}, 0));
}

TEST_CASE("entry ids parse only <ms>-<seq>", "[unit][http]") {
  auto id = parse_id("1526919030474-55");
  REQUIRE(id);
  CHECK(id->ms == 1526919030474);
  CHECK(id->seq == 55);
  CHECK(parse_id("18446744073709551615-18446744073709551615"));
  for (auto bad : {"", "-", "1-", "-1", "1", "a-1", "1-b", "1--2", "+1-2", "1-+2", " 1-2", "1-2 ",
                   "18446744073709551616-0", "*", "1-*"})
    CHECK_FALSE(parse_id(bad));
}

TEST_CASE("replies encode as RESP2 and RESP3", "[unit][http]") {
  auto both = [](auto build, const std::string& v2, const std::string& v3) {
    reply r2{protocol::resp2};
    reply r3{protocol::resp3};
    build(r2);
    build(r3);
    CHECK(r2.bytes() == v2);
    CHECK(r3.bytes() == v3);
  };
  both([](reply& r) { r.simple("OK"); }, "+OK\r\n", "+OK\r\n");
  both([](reply& r) { r.error("ERR a\r\nb"); }, "-ERR a  b\r\n", "-ERR a  b\r\n");
  both([](reply& r) { r.integer(-42); }, ":-42\r\n", ":-42\r\n");
  both(
    [](reply& r) {
      r.bulk(std::string{"a\0b", 3});
    },
    std::string{"$3\r\na\0b\r\n", 9}, std::string{"$3\r\na\0b\r\n", 9});
  both([](reply& r) { r.bulk(""); }, "$0\r\n\r\n", "$0\r\n\r\n");
  both([](reply& r) { r.null(); }, "$-1\r\n", "_\r\n");
  both([](reply& r) { r.null_array(); }, "*-1\r\n", "_\r\n");
  both([](reply& r) { r.map(1).bulk("k").integer(1); }, "*2\r\n$1\r\nk\r\n:1\r\n",
       "%1\r\n$1\r\nk\r\n:1\r\n");
  both([](reply& r) { r.set(1).simple("x"); }, "*1\r\n+x\r\n", "~1\r\n+x\r\n");
  both([](reply& r) { r.real(1.5); }, "$3\r\n1.5\r\n", ",1.5\r\n");
  both([](reply& r) { r.real(-std::numeric_limits<double>::infinity()); }, "$4\r\n-inf\r\n",
       ",-inf\r\n");
  both([](reply& r) { r.boolean(true).boolean(false); }, ":1\r\n:0\r\n", "#t\r\n#f\r\n");
  both([](reply& r) { r.verbatim("a:b"); }, "$3\r\na:b\r\n", "=7\r\ntxt:a:b\r\n");
  both([](reply& r) { r.array(0); }, "*0\r\n", "*0\r\n");
}

TEST_CASE("the command table finds commands in any case", "[unit][http]") {
  command_table table;
  table.add({"xadd", -5, false, {"write"}, 1, 1, 1, nullptr, {}});
  CHECK(table.find("XADD") != nullptr);
  CHECK(table.find("xAdd") == table.find("xadd"));
  CHECK(table.find("xread") == nullptr);
  table.add({"XADD", 3, false, {}, 0, 0, 0, nullptr, {}}); // replaces
  CHECK(table.all().size() == 1);
  CHECK(table.find("xadd")->arity == 3);
  CHECK(upper("client|list") == "CLIENT|LIST");
}

TEST_CASE("unknown commands and wrong arities are worded as Redis 7 words them", "[unit][http]") {
  CHECK(unknown_command_error({"FOO"}) == "ERR unknown command 'FOO', with args beginning with: ");
  CHECK(unknown_command_error({"foo", "a", "b"})
        == "ERR unknown command 'foo', with args beginning with: 'a' 'b' ");
  // At most 128 bytes of arguments, the last one cut to fit.
  auto long_args = unknown_command_error({"x", std::string(100, 'a'), std::string(100, 'b'), "c"});
  CHECK(long_args
        == "ERR unknown command 'x', with args beginning with: '" + std::string(100, 'a') + "' '"
             + std::string(25, 'b') + "' ");
  CHECK(unknown_command_error({std::string(200, 'n')})
        == "ERR unknown command '" + std::string(128, 'n') + "', with args beginning with: ");
  CHECK(arity_error("client|setname")
        == "ERR wrong number of arguments for 'client|setname' command");
}
