// Names of the protocol's enums, and the registration of its value types.
#include "actors/messages.hpp"

#include <array>
#include <stdexcept>
#include <utility>

#include <caf/binary_deserializer.hpp>
#include <caf/message.hpp>
#include <caf/sec.hpp>
#include <caf/serializer_impl.hpp>

namespace nerve::actors {

namespace {

template <class E, std::size_t N>
using names = std::array<std::pair<E, std::string_view>, N>;

constexpr names<agent_kind, 4> agent_kinds{{{agent_kind::builtin, "builtin"},
                                            {agent_kind::process, "process"},
                                            {agent_kind::http, "http"},
                                            {agent_kind::pull, "pull"}}};
constexpr names<ordering, 2> orderings{{{ordering::none, ""}, {ordering::key, "key"}}};
constexpr names<start_position, 2> start_positions{
  {{start_position::latest, "latest"}, {start_position::earliest, "earliest"}}};
constexpr names<replay_state, 4> replay_states{{{replay_state::running, "running"},
                                                {replay_state::done, "done"},
                                                {replay_state::failed, "failed"},
                                                {replay_state::cancelled, "cancelled"}}};
constexpr names<replay_mode, 2> replay_modes{
  {{replay_mode::dry_run, "dry-run"}, {replay_mode::redeliver, "redeliver"}}};

template <class E, std::size_t N>
std::string_view name_of(const names<E, N>& table, E x) {
  for (auto& [value, name] : table)
    if (value == x)
      return name;
  return "unknown";
}

template <class E, std::size_t N>
std::optional<E> value_of(const names<E, N>& table, std::string_view text) {
  for (auto& [value, name] : table)
    if (name == text)
      return value;
  return std::nullopt;
}

} // namespace

std::string_view to_string(replay_state x) {
  return name_of(replay_states, x);
}
std::string_view to_string(replay_mode x) {
  return name_of(replay_modes, x);
}

std::optional<agent_kind> agent_kind_of(std::string_view text) {
  return value_of(agent_kinds, text);
}
std::optional<ordering> ordering_of(std::string_view text) {
  return value_of(orderings, text);
}
std::optional<start_position> start_position_of(std::string_view text) {
  return value_of(start_positions, text);
}
std::optional<replay_state> replay_state_of(std::string_view text) {
  return value_of(replay_states, text);
}
std::optional<replay_mode> replay_mode_of(std::string_view text) {
  return value_of(replay_modes, text);
}

namespace {

caf::error nerve_error(errc code, caf::message context) {
  // CAF reads code 0 as "no error": the codes start at 1.
  return caf::error{static_cast<std::uint8_t>(static_cast<int>(code) + 1), error_category,
                    std::move(context)};
}

} // namespace

caf::error make_caf_error(errc code, std::string message) {
  return nerve_error(code, caf::make_message(std::move(message)));
}

caf::error make_caf_error(errc code, std::string message, std::string leader) {
  return nerve_error(code, caf::make_message(std::move(message), std::move(leader)));
}

error from_caf_error(const caf::error& x) {
  if (x.category() == error_category) {
    const auto& context = x.context();
    std::string message;
    std::string leader;
    bool with_leader = context.match_elements<std::string, std::string>();
    if (with_leader || context.match_elements<std::string>())
      message = context.get_as<std::string>(0);
    if (with_leader)
      leader = context.get_as<std::string>(1);
    return error{static_cast<errc>(x.code() - 1), std::move(message), std::move(leader)};
  }
  // CAF's own: the peer died, the request timed out, the message was lost.
  return error{errc::unavailable, caf::to_string(x)};
}

void register_messages(caf::actor_system_config& cfg) {
  // The names are the wire format: a node knows a type only by its name, so
  // renaming one breaks mixed-version clusters (bump wire_version instead).
  cfg.add_message_type<event_position>("nerve.event_position")
    .add_message_type<wire_event>("nerve.wire_event")
    .add_message_type<append_request>("nerve.append_request")
    .add_message_type<appended>("nerve.appended")
    .add_message_type<delivery>("nerve.delivery")
    .add_message_type<outcome>("nerve.outcome")
    .add_message_type<std::vector<outcome>>("nerve.outcome_list")
    .add_message_type<std::vector<delivery>>("nerve.delivery_list")
    .add_message_type<pull_answer>("nerve.pull_answer")
    .add_message_type<std::vector<pull_answer>>("nerve.pull_answer_list")
    .add_message_type<pull_request>("nerve.pull_request")
    .add_message_type<entry_at>("nerve.entry_at")
    .add_message_type<std::vector<entry_at>>("nerve.entry_at_list")
    .add_message_type<pending_entry>("nerve.pending_entry")
    .add_message_type<std::vector<pending_entry>>("nerve.pending_entry_list")
    .add_message_type<claim_request>("nerve.claim_request")
    .add_message_type<consumer_view>("nerve.consumer_view")
    .add_message_type<std::vector<consumer_view>>("nerve.consumer_view_list")
    .add_message_type<credit_grant>("nerve.credit_grant")
    .add_message_type<dead_letter>("nerve.dead_letter")
    .add_message_type<redelivery>("nerve.redelivery")
    .add_message_type<dlq_query>("nerve.dlq_query")
    .add_message_type<dead_letter_page>("nerve.dead_letter_page")
    .add_message_type<replay_range>("nerve.replay_range")
    .add_message_type<replay_plan>("nerve.replay_plan")
    .add_message_type<replay_record>("nerve.replay_record")
    .add_message_type<api_request>("nerve.api_request")
    .add_message_type<api_response>("nerve.api_response")
    .add_message_type<hello>("nerve.hello")
    .add_message_type<repl_record>("nerve.repl_record")
    .add_message_type<repl_chunk>("nerve.repl_chunk")
    .add_message_type<repl_state_op>("nerve.repl_state_op")
    .add_message_type<fetch_request>("nerve.fetch_request")
    .add_message_type<fetch_response>("nerve.fetch_response");
}

namespace {

/// CAF's binary format written straight into the frame's string (the
/// vector<char> of caf::binary_serializer had to be copied into one).
using frame_serializer = caf::serializer_impl<std::string>;

/// `bytes`: about what the frame takes (a fetch answer or a forward carries
/// events; grown by appends, its string was reallocated several times).
template <class... Ts>
std::string encode_link(link_op op, std::size_t bytes, Ts&... xs) {
  std::string buf;
  buf.reserve(bytes);
  buf.push_back(static_cast<char>(op));
  frame_serializer sink{static_cast<caf::execution_unit*>(nullptr), buf};
  if (auto err = sink(xs...))
    throw std::logic_error("a link frame does not serialize");
  return buf;
}

} // namespace

std::string link_fetch(const std::vector<fetch_item>& fetches) {
  return encode_link(link_op::fetch, 64 + 64 * fetches.size(),
                     const_cast<std::vector<fetch_item>&>(fetches));
}

std::string link_fetch_answer(const std::vector<fetch_answer_item>& answers) {
  std::size_t bytes = 64;
  for (const auto& a : answers) {
    bytes += 128;
    for (const auto& chunk : a.response.chunks)
      for (const auto& r : chunk.records)
        bytes += r.id.size() + r.json.size() + 32;
    for (const auto& op : a.response.state)
      bytes += op.key.size() + op.value.size() + 16;
  }
  return encode_link(link_op::fetch_answer, bytes,
                     const_cast<std::vector<fetch_answer_item>&>(answers));
}

std::string link_synced(const fetch_request& req) {
  return encode_link(link_op::synced, 128, const_cast<fetch_request&>(req));
}

std::string link_forward(const std::vector<forward_item>& items) {
  std::size_t bytes = 64;
  for (const auto& item : items) {
    bytes += item.topic.size() + 32;
    for (const auto& request : item.events)
      for (const auto& e : request.events)
        bytes += text_bytes(e) + 32;
  }
  return encode_link(link_op::forward, bytes, const_cast<std::vector<forward_item>&>(items));
}

std::string link_forward_answer(const std::vector<forward_reply>& replies) {
  std::size_t bytes = 64;
  for (const auto& reply : replies)
    bytes += reply.detail.size() + 32 + 72 * reply.out.size();
  return encode_link(link_op::forward_answer, bytes,
                     const_cast<std::vector<forward_reply>&>(replies));
}

tl::expected<link_frame, std::string> read_link_frame(std::string_view frame) {
  if (frame.empty())
    return tl::make_unexpected(std::string{"an empty frame"});
  link_frame out;
  out.op = static_cast<link_op>(frame[0]);
  caf::binary_deserializer source{static_cast<caf::execution_unit*>(nullptr), frame.data() + 1,
                                  frame.size() - 1};
  caf::error err;
  switch (out.op) {
    case link_op::fetch:
      err = source(out.fetches);
      break;
    case link_op::fetch_answer:
      err = source(out.answers);
      break;
    case link_op::synced:
      err = source(out.request);
      break;
    case link_op::forward:
      err = source(out.forwards);
      break;
    case link_op::forward_answer:
      err = source(out.replies);
      break;
    default:
      return tl::make_unexpected("the unknown op " + std::to_string(frame[0]));
  }
  if (err)
    return tl::make_unexpected("a malformed op " + std::to_string(frame[0]) + " frame");
  if (source.remaining() != 0)
    return tl::make_unexpected("an op " + std::to_string(frame[0]) + " frame with "
                               + std::to_string(source.remaining()) + " bytes too many");
  return out;
}

} // namespace nerve::actors
