// Reads every field of a verified Tick or Order without knowing what to expect, so that a fuzz
// run (under ASan/UBSan) proves accessors stay in bounds on anything the verifier accepted.
#pragma once

#include <bit>
#include <cstdint>

#include "shmq/serialize/schemas.hpp"

namespace shmq::fb::fuzz {

inline std::uint64_t touch_string(const flatbuffers::String* s) {
  if (s == nullptr) return 0;
  std::uint64_t h = s->size();
  for (flatbuffers::uoffset_t i = 0; i < s->size(); ++i) h = h * 31 + static_cast<unsigned char>(s->Get(i));
  return h;
}

// Doubles by their bits: converting an arbitrary double (NaN, 1e300) to an integer is UB.
inline std::uint64_t bits(double d) { return std::bit_cast<std::uint64_t>(d); }

inline std::uint64_t touch(const shmq::schema::Tick* t) {
  std::uint64_t h = t->instrument_id() + t->sequence() + static_cast<std::uint64_t>(t->exchange_ns()) +
                    static_cast<std::uint64_t>(t->receive_ns()) + t->last_size() +
                    static_cast<std::uint64_t>(t->last_side()) + t->flags() +
                    bits(t->last_price());
  for (const shmq::schema::Level* l : {t->bid(), t->ask()}) {
    if (l != nullptr) h += bits(l->price()) + l->size() + l->orders() + l->reserved();
  }
  return h;
}

inline std::uint64_t touch(const shmq::schema::Order* o) {
  std::uint64_t h = o->order_id() + o->quantity() + static_cast<std::uint64_t>(o->side()) +
                    static_cast<std::uint64_t>(o->time_in_force()) +
                    static_cast<std::uint64_t>(o->created_ns());
  h += touch_string(o->client_order_id()) + touch_string(o->account()) + touch_string(o->symbol()) +
       touch_string(o->note());
  if (const auto* lo = o->type_as_LimitOrder()) h += bits(lo->price()) + lo->post_only();
  if (const auto* so = o->type_as_StopLimitOrder()) {
    h += bits(so->stop_price()) + bits(so->limit_price());
  }
  if (o->type_as_MarketOrder() != nullptr) ++h;
  if (const auto* legs = o->legs()) {
    for (const auto* leg : *legs) {
      h += touch_string(leg->symbol()) + static_cast<std::uint64_t>(leg->side()) +
           static_cast<std::uint64_t>(leg->ratio());
    }
  }
  if (const auto* tags = o->tags()) {
    for (const auto* tag : *tags) h += touch_string(tag->key()) + touch_string(tag->value());
  }
  if (const auto* ladder = o->price_ladder()) {
    for (const std::int64_t v : *ladder) h += static_cast<std::uint64_t>(v);
  }
  return h;
}

}  // namespace shmq::fb::fuzz
