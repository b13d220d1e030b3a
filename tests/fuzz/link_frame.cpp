// Fuzzes a cluster link's data frame (actors/messages.cpp, read_link_frame):
// any bytes a peer sends after its hello are a decoded frame or a one-line
// reason to drop the link, never a crash, undefined behaviour or an
// allocation the frame's bytes do not pay for (libFuzzer's -rss_limit_mb and
// -malloc_limit_mb). A decoded frame encodes again to a frame that decodes
// to the same values. `fuzz_link_frame -seeds DIR` writes the seed corpus.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <string_view>

#include "actors/messages.hpp"

using namespace nerve::actors;

namespace {

std::string encode(const link_frame& f) {
  switch (f.op) {
    case link_op::fetch:
      return link_fetch(f.fetches);
    case link_op::fetch_answer:
      return link_fetch_answer(f.answers);
    case link_op::synced:
      return link_synced(f.request);
    case link_op::forward:
      return link_forward(f.forwards);
    case link_op::forward_answer:
      return link_forward_answer(f.replies);
  }
  std::abort();
}

bool same(const link_frame& a, const link_frame& b) {
  return a.op == b.op && a.fetches == b.fetches && a.answers == b.answers && a.request == b.request
         && a.forwards == b.forwards && a.replies == b.replies;
}

/// One real frame of each op, as the nodes send them.
void write_seeds(const std::string& dir) {
  fetch_request req{"orders", 3, 2, 100, 1, "n2", 90, 7};
  fetch_answer_item answer;
  answer.topic = "orders";
  answer.partition = 3;
  answer.token = 11;
  answer.response.epoch = 2;
  answer.response.high_watermark = 95;
  answer.response.chunks.push_back(
    {2, {{100, 1764900000000000, "e1", R"({"id":"e1","topic":"orders","data":1})"}}});
  answer.response.state.push_back({1, false, "pending/a/3/100", "{}"});
  forward_item fwd;
  fwd.token = 5;
  fwd.topic = "orders";
  fwd.partitions = 4;
  fwd.events.push_back({"orders", 1, {{"e2", "k", R"("trace_id":"ab","data":2)", "t", "s", true}}});
  forward_reply reply{5, 0, "", {{"e2", 1, 7, 1764900000000000, false}}};
  const std::pair<const char*, std::string> seeds[] = {
    {"fetch", link_fetch({{9, req}})},
    {"fetch_answer", link_fetch_answer({answer})},
    {"synced", link_synced(req)},
    {"forward", link_forward({fwd})},
    {"forward_answer", link_forward_answer({reply})},
    {"forward_error", link_forward_answer({{6, 3, "not the leader", {}}})},
  };
  for (const auto& [name, bytes] : seeds)
    std::ofstream{dir + "/" + name, std::ios::binary} << bytes;
}

} // namespace

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  for (int i = 1; i + 1 < *argc; ++i)
    if (std::strcmp((*argv)[i], "-seeds") == 0) {
      write_seeds((*argv)[i + 1]);
      std::exit(0);
    }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  auto frame = read_link_frame({reinterpret_cast<const char*>(data), size});
  if (!frame) {
    const auto& why = frame.error();
    if (why.empty() || why.find('\n') != std::string::npos)
      std::abort(); // the reason goes into one log line
    return 0;
  }
  auto again = read_link_frame(encode(*frame));
  if (!again || !same(*frame, *again))
    std::abort();
  return 0;
}
