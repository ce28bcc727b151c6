// The SPSC ring's format rules, as the reader and the CLI's peek apply them (spsc_format.hpp).
#include "shmq/core/spsc_format.hpp"

#include <doctest/doctest.h>

#include <cstdint>

using namespace shmq::core;
using namespace shmq::core::spsc;

namespace {
constexpr std::uint64_t kCapacity = 256;
constexpr std::uint64_t kMaxPayload = SpscRing::max_payload(kCapacity);  // 120
constexpr unsigned kShift = SpscRing::capacity_shift(kCapacity);  // 8
constexpr std::uint32_t kWhole = make_tag(RecordKind::whole, 3, kTagMagic);
constexpr std::uint32_t kPadding = make_tag(RecordKind::padding, 0, kTagMagic);
}  // namespace

TEST_CASE("spsc format: a tag carries the check byte, the record kind and the message kind") {
  CHECK(tag_valid(kWhole));
  CHECK(tag_record(kWhole) == RecordKind::whole);
  CHECK(tag_check(kWhole) == kTagMagic);
  CHECK(tag_kind(make_tag(RecordKind::last, 0xBEEF, 1)) == 0xBEEF);
  CHECK_FALSE(tag_valid(0));
  CHECK_FALSE(tag_valid(make_tag(RecordKind::whole, 0, kTagMagic) | (7u << 16)));  // unknown kind
}

TEST_CASE("spsc format: a header is committed only with its lap's check byte") {
  CHECK(kShift == 8);
  CHECK(lap_check(0, kShift) == kTagMagic);
  CHECK(lap_check(kCapacity - 8, kShift) == kTagMagic);  // the same lap
  CHECK(lap_check(kCapacity, kShift) == static_cast<std::uint8_t>(kTagMagic + 1));
  CHECK(lap_check(300 * kCapacity, kShift) == static_cast<std::uint8_t>(kTagMagic + 300));
  const std::uint64_t word = header_word(10, kWhole);
  CHECK(word_length(word) == 10);
  CHECK(word_tag(word) == kWhole);
  CHECK(committed(word, lap_check(16, kShift)));
  CHECK_FALSE(committed(word, lap_check(kCapacity + 16, kShift)));  // one lap later: not yet
  CHECK_FALSE(committed(0, lap_check(16, kShift)));                  // the zeroed frontier
  // A zero word is never committed, even in the lap whose check byte is 0.
  const std::uint64_t lap_of_zero = (0x100u - kTagMagic) & 0xFF;
  CHECK(lap_check(lap_of_zero * kCapacity, kShift) == 0);
  CHECK_FALSE(committed(0, 0));
  CHECK(later(8, 16) == 16);
  CHECK(later(16, 8) == 16);
  CHECK(later(std::uint64_t(-8), 8) == 8);  // across the wrap of the positions
}

TEST_CASE("spsc format: check_record accepts records that fit and names what is wrong otherwise") {
  // A 10-byte record at offset 0 with 64 bytes published: 24 bytes, fits.
  CHECK(check_record(10, kWhole, kCapacity, 64, kMaxPayload) == RecordCheck::ok);
  CHECK(record_bytes(10) == 24);
  CHECK(check_record(10, 0xDEADBEEF, kCapacity, 64, kMaxPayload) == RecordCheck::bad_tag);
  CHECK(check_record(kMaxPayload + 1, kWhole, kCapacity, kCapacity, kMaxPayload) ==
        RecordCheck::bad_length);
  CHECK(check_record(10, kWhole, 16, 64, kMaxPayload) == RecordCheck::bad_length);  // crosses the end
  CHECK(check_record(10, kWhole, kCapacity, 16, kMaxPayload) == RecordCheck::bad_length);  // past tail
}

TEST_CASE("spsc format: a padding record fills exactly the rest of the data area") {
  constexpr std::uint64_t contiguous = 40;  // bytes left before the end
  CHECK(padding_length(contiguous) == 32);
  CHECK(record_bytes(padding_length(contiguous)) == contiguous);
  CHECK(check_record(padding_length(contiguous), kPadding, contiguous, 64, kMaxPayload) ==
        RecordCheck::ok);
  CHECK(check_record(8, kPadding, contiguous, 64, kMaxPayload) == RecordCheck::bad_padding);
  CHECK(check_record(padding_length(contiguous), kPadding, contiguous, 32, kMaxPayload) ==
        RecordCheck::bad_padding);  // not all of it published
}

TEST_CASE("spsc format: chunks must announce, continue and finish a message exactly") {
  CHECK(first_chunk_ok(kMaxPayload, kMaxPayload + 1, kMaxPayload));
  CHECK_FALSE(first_chunk_ok(kMaxPayload - 8, 1000, kMaxPayload));  // not a full record
  CHECK_FALSE(first_chunk_ok(kMaxPayload, kMaxPayload, kMaxPayload));  // would fit one record
  CHECK_FALSE(first_chunk_ok(kMaxPayload, kMaxMessageBytes + 1, kMaxPayload));
  const std::uint32_t middle = make_tag(RecordKind::middle, 5, kTagMagic);
  const std::uint32_t last = make_tag(RecordKind::last, 5, kTagMagic);
  CHECK(next_chunk_ok(middle, kMaxPayload, 5, 500, kMaxPayload));
  CHECK_FALSE(next_chunk_ok(middle, kMaxPayload - 8, 5, 500, kMaxPayload));  // a short middle
  CHECK_FALSE(next_chunk_ok(middle, kMaxPayload, 6, 500, kMaxPayload));  // another message kind
  CHECK(next_chunk_ok(last, 40, 5, 40, kMaxPayload));
  CHECK_FALSE(next_chunk_ok(last, 39, 5, 40, kMaxPayload));  // the message would be short
  CHECK_FALSE(next_chunk_ok(middle, kMaxPayload, 5, kMaxPayload - 1, kMaxPayload));  // too long
}

TEST_CASE("spsc format: positions and the reader's recovery word") {
  CHECK(SpscRing::valid_capacity(128));
  CHECK_FALSE(SpscRing::valid_capacity(192));
  CHECK_FALSE(SpscRing::valid_capacity(64));
  CHECK(SpscRing::positions_ok(8, 64, kCapacity));
  CHECK(SpscRing::positions_ok(64, 8, kCapacity));  // a reader ahead of a tail not yet stored
  CHECK_FALSE(SpscRing::positions_ok(kCapacity + 16, 8, kCapacity));  // head a ring past tail
  CHECK_FALSE(SpscRing::positions_ok(0, kCapacity + 8, kCapacity));
  CHECK_FALSE(SpscRing::positions_ok(4, 64, kCapacity));  // misaligned
  CHECK(SpscRing::read_end(8, 32, kCapacity) == 32);
  CHECK(SpscRing::read_end(8, 0, kCapacity) == 8);                  // stale: behind head
  CHECK(SpscRing::read_end(8, kCapacity + 16, kCapacity) == 8);     // more than a ring ahead
  CHECK(SpscRing::read_end(8, 33, kCapacity) == 8);                 // not on a record boundary
  CHECK(SpscRing::head_batch(1 << 20) == SpscRing::kMaxHeadBatch);
}
