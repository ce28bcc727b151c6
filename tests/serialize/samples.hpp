// Sample messages for the serialize tests, benchmarks and fuzz seeds: builders that derive every
// field from a sequence number, and checkers that read every field back.
#pragma once

#include <flatbuffers/flatbuffers.h>

#include <cstdint>
#include <string>
#include <vector>

#include "shmq/serialize/schemas.hpp"

namespace shmq::fb::samples {

namespace s = shmq::schema;

inline flatbuffers::Offset<s::Tick> build_tick(flatbuffers::FlatBufferBuilder& b, std::uint64_t i) {
  const s::Level bid(100.0 + static_cast<double>(i % 1000) * 0.01, 10 + i, static_cast<std::uint32_t>(i % 7), 0);
  const s::Level ask(100.5 + static_cast<double>(i % 1000) * 0.01, 20 + i, static_cast<std::uint32_t>(i % 5), 0);
  s::TickBuilder t(b);
  t.add_instrument_id(static_cast<std::uint32_t>(i % 4096));
  t.add_sequence(i);
  t.add_exchange_ns(static_cast<std::int64_t>(1'700'000'000'000'000'000 + i));
  t.add_receive_ns(static_cast<std::int64_t>(1'700'000'000'000'001'000 + i));
  t.add_bid(&bid);
  t.add_ask(&ask);
  t.add_last_price(100.25 + static_cast<double>(i % 100));
  t.add_last_size(1 + i % 300);
  t.add_last_side(i % 2 == 0 ? s::TradeSide::Buy : s::TradeSide::Sell);
  t.add_flags(static_cast<std::uint16_t>(i & 0xffff));
  return t.Finish();
}

// Reads every field; returns false on the first that differs from what build_tick(i) wrote.
inline bool check_tick(const s::Tick* t, std::uint64_t i) {
  if (t == nullptr) return false;
  bool ok = t->instrument_id() == i % 4096 && t->sequence() == i &&
            t->exchange_ns() == static_cast<std::int64_t>(1'700'000'000'000'000'000 + i) &&
            t->receive_ns() == static_cast<std::int64_t>(1'700'000'000'000'001'000 + i) &&
            t->last_price() == 100.25 + static_cast<double>(i % 100) && t->last_size() == 1 + i % 300 &&
            t->last_side() == (i % 2 == 0 ? s::TradeSide::Buy : s::TradeSide::Sell) &&
            t->flags() == (i & 0xffff);
  const s::Level* bid = t->bid();
  const s::Level* ask = t->ask();
  ok = ok && bid != nullptr && ask != nullptr &&
       bid->price() == 100.0 + static_cast<double>(i % 1000) * 0.01 && bid->size() == 10 + i &&
       bid->orders() == i % 7 && ask->price() == 100.5 + static_cast<double>(i % 1000) * 0.01 &&
       ask->size() == 20 + i && ask->orders() == i % 5;
  return ok;
}

// "<prefix><n>", built with append(): g++ 12 reports a false -Wrestrict on `"lit" + std::string`.
inline std::string numbered(const char* prefix, std::uint64_t n) {
  std::string s(prefix);
  s.append(std::to_string(n));
  return s;
}

struct OrderShape {
  std::size_t legs = 2;
  std::size_t tags = 3;
  std::size_t ladder = 4;
  std::size_t note_bytes = 16;
};

inline std::string note_text(std::uint64_t i, std::size_t n) {
  std::string s(n, 'x');
  for (std::size_t k = 0; k < n; ++k) s[k] = static_cast<char>('a' + (i + k) % 26);
  return s;
}

inline flatbuffers::Offset<s::Order> build_order(flatbuffers::FlatBufferBuilder& b, std::uint64_t i,
                                                 const OrderShape& shape = {}) {
  // The ladder first: the first object built ends the buffer, and a vector of int64 has no
  // trailing padding, so every truncation of a sample cuts real data (tests rely on this).
  std::vector<std::int64_t> ladder(shape.ladder);
  for (std::size_t k = 0; k < shape.ladder; ++k) ladder[k] = static_cast<std::int64_t>(i + k) - 2;
  auto ladder_v = b.CreateVector(ladder);
  const std::string cl = numbered("cl-", i);
  auto client = b.CreateString(cl);
  auto account = b.CreateString("ACC-0042");
  auto symbol = b.CreateString(i % 2 == 0 ? "ESZ5" : "NQZ5");
  std::vector<flatbuffers::Offset<s::Leg>> legs;
  for (std::size_t k = 0; k < shape.legs; ++k) {
    auto sym = b.CreateString(numbered("LEG", k));
    legs.push_back(s::CreateLeg(b, sym, k % 2 == 0 ? s::Side::Buy : s::Side::Sell,
                                static_cast<std::int32_t>(k + 1)));
  }
  std::vector<flatbuffers::Offset<s::Tag>> tags;
  for (std::size_t k = 0; k < shape.tags; ++k) {
    auto key = b.CreateString(numbered("k", k));
    auto val = b.CreateString(numbered("v", i + k));
    tags.push_back(s::CreateTag(b, key, val));
  }
  auto legs_v = b.CreateVector(legs);
  auto tags_v = b.CreateVector(tags);
  auto note = b.CreateString(note_text(i, shape.note_bytes));
  flatbuffers::Offset<void> type;
  s::OrderType type_kind = s::OrderType::NONE;
  switch (i % 3) {
    case 0:
      type = s::CreateMarketOrder(b).Union();
      type_kind = s::OrderType::MarketOrder;
      break;
    case 1:
      type = s::CreateLimitOrder(b, 4500.25 + static_cast<double>(i), i % 2 == 1).Union();
      type_kind = s::OrderType::LimitOrder;
      break;
    default:
      type = s::CreateStopLimitOrder(b, 4400.0 + static_cast<double>(i), 4399.5).Union();
      type_kind = s::OrderType::StopLimitOrder;
      break;
  }
  s::OrderBuilder o(b);
  o.add_order_id(1'000'000 + i);
  o.add_client_order_id(client);
  o.add_account(account);
  o.add_symbol(symbol);
  o.add_side(i % 3 == 2 ? s::Side::SellShort : s::Side::Buy);
  o.add_quantity(1 + i % 50);
  o.add_time_in_force(static_cast<s::TimeInForce>(i % 4));
  o.add_type_type(type_kind);
  o.add_type(type);
  o.add_legs(legs_v);
  o.add_tags(tags_v);
  o.add_price_ladder(ladder_v);
  o.add_created_ns(static_cast<std::int64_t>(1'700'000'000'000'000'000 + i));
  o.add_note(note);
  return o.Finish();
}

inline bool check_order(const s::Order* o, std::uint64_t i, const OrderShape& shape = {}) {
  if (o == nullptr) return false;
  bool ok = o->order_id() == 1'000'000 + i && o->client_order_id() != nullptr &&
            o->client_order_id()->str() == numbered("cl-", i) &&
            o->account()->str() == "ACC-0042" &&
            o->symbol()->str() == (i % 2 == 0 ? "ESZ5" : "NQZ5") &&
            o->side() == (i % 3 == 2 ? s::Side::SellShort : s::Side::Buy) &&
            o->quantity() == 1 + i % 50 &&
            o->time_in_force() == static_cast<s::TimeInForce>(i % 4) &&
            o->created_ns() == static_cast<std::int64_t>(1'700'000'000'000'000'000 + i) &&
            o->note() != nullptr && o->note()->str() == note_text(i, shape.note_bytes);
  switch (i % 3) {
    case 0: ok = ok && o->type_as_MarketOrder() != nullptr; break;
    case 1:
      ok = ok && o->type_as_LimitOrder() != nullptr &&
           o->type_as_LimitOrder()->price() == 4500.25 + static_cast<double>(i) &&
           o->type_as_LimitOrder()->post_only() == (i % 2 == 1);
      break;
    default:
      ok = ok && o->type_as_StopLimitOrder() != nullptr &&
           o->type_as_StopLimitOrder()->stop_price() == 4400.0 + static_cast<double>(i) &&
           o->type_as_StopLimitOrder()->limit_price() == 4399.5;
      break;
  }
  if (!ok || o->legs() == nullptr || o->tags() == nullptr || o->price_ladder() == nullptr) return false;
  if (o->legs()->size() != shape.legs || o->tags()->size() != shape.tags ||
      o->price_ladder()->size() != shape.ladder) {
    return false;
  }
  for (flatbuffers::uoffset_t k = 0; k < o->legs()->size(); ++k) {
    const s::Leg* leg = o->legs()->Get(k);
    ok = ok && leg->symbol()->str() == numbered("LEG", k) &&
         leg->side() == (k % 2 == 0 ? s::Side::Buy : s::Side::Sell) &&
         leg->ratio() == static_cast<std::int32_t>(k + 1);
  }
  for (flatbuffers::uoffset_t k = 0; k < o->tags()->size(); ++k) {
    const s::Tag* tag = o->tags()->Get(k);
    ok = ok && tag->key()->str() == numbered("k", k) && tag->value() != nullptr &&
         tag->value()->str() == numbered("v", i + k);
  }
  for (flatbuffers::uoffset_t k = 0; k < o->price_ladder()->size(); ++k) {
    ok = ok && o->price_ladder()->Get(k) == static_cast<std::int64_t>(i + k) - 2;
  }
  return ok;
}

}  // namespace shmq::fb::samples
