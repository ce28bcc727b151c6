// The MPMC ring's format rules, as the ring, the Queue and the CLI's peek apply them
// (mpmc_format.hpp).
#include "shmq/core/mpmc_format.hpp"

#include <doctest/doctest.h>

#include <cstdint>
#include <string>

using namespace shmq::core;
using namespace shmq::core::mpmc;

namespace {
constexpr Params kGood{kMpmcMagic, 16, 64, stride_for(64), 16, ring_bytes(16, 64)};
}  // namespace

TEST_CASE("mpmc format: a valid header passes and each broken field is named") {
  CHECK(bad_field(kGood).name == nullptr);
  auto named = [](Params p) { return std::string(bad_field(p).name ? bad_field(p).name : ""); };
  Params p = kGood;
  p.magic ^= 1;
  CHECK(named(p) == "magic");
  p = kGood;
  p.slots = 12;
  CHECK(named(p) == "slots");
  p.slots = 1;  // one slot cannot tell committed from free
  CHECK(named(p) == "slots");
  p = kGood;
  p.slot_size = 60;
  CHECK(named(p) == "slot_size");
  p = kGood;
  p.stride = 64;
  CHECK(named(p) == "stride");
  p = kGood;
  p.maxsize = 17;
  CHECK(named(p) == "maxsize");
  p.maxsize = 0;
  CHECK(named(p) == "maxsize");
  p = kGood;
  p.total_bytes += 64;
  CHECK(named(p) == "total_bytes");
  CHECK(bad_field(p).value == kGood.total_bytes + 64);
}

TEST_CASE("mpmc format: slot sequence numbers and depth follow positions across the wrap") {
  constexpr std::uint64_t near_wrap = ~std::uint64_t{0} - 2;
  CHECK(seq_free(near_wrap) == near_wrap);
  CHECK(seq_committed(near_wrap) == near_wrap + 1);
  CHECK(seq_released(near_wrap, 16) == near_wrap + 16);  // wraps past 0
  CHECK(distance(near_wrap, near_wrap + 5) == 5);
  CHECK(distance(near_wrap + 5, near_wrap) == -5);
  CHECK(depth(near_wrap, near_wrap + 5, 16) == 5);
  CHECK(depth(near_wrap + 5, near_wrap, 16) == 0);  // readers ahead: nothing waits
  CHECK(depth(0, 100, 16) == 16);                  // never above maxsize
}

TEST_CASE("mpmc format: a slot is delivered, skipped or corrupt by its header") {
  CHECK(check_slot(64, 0, 64) == SlotCheck::ok);
  CHECK(check_slot(64, kSlotSpilled, 64) == SlotCheck::ok);
  CHECK(check_slot(0, kSlotSkip, 64) == SlotCheck::skip);
  CHECK(check_slot(65, 0, 64) == SlotCheck::bad_length);
}

TEST_CASE("mpmc format: a claim word covers exactly its positions, across 2^48") {
  constexpr std::uint64_t first = (1ull << 48) - 2;
  const std::uint64_t w = encode_claim(first, 4, ClaimOp::enqueue);
  CHECK(claim_covers(w, first, ClaimOp::enqueue));
  CHECK(claim_covers(w, first + 3, ClaimOp::enqueue));
  CHECK_FALSE(claim_covers(w, first + 4, ClaimOp::enqueue));
  CHECK_FALSE(claim_covers(w, first - 1, ClaimOp::enqueue));
  CHECK_FALSE(claim_covers(w, first, ClaimOp::dequeue));
  CHECK_FALSE(claim_covers(0, first, ClaimOp::enqueue));  // an idle word claims nothing
}
