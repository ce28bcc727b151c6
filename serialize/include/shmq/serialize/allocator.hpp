// ClaimAllocator: a flatbuffers::Allocator that hands FlatBufferBuilder one caller-supplied
// region (the space claimed in a ring) and spills to the heap if the builder outgrows it.
//
// FlatBufferBuilder (its vector_downward) asks for its first block with allocate(initial_size)
// and treats the returned pointer as the block's low end, filling it from the high end down.
// Passing the region's size as initial_size therefore makes the finished buffer end exactly at
// the region's end. Growth goes through reallocate_downward(): the default implementation
// allocates a larger block (here: heap), copies the used ends and frees the old one (for the
// region: nothing to do). After Finish(), in_region(ptr) tells which case happened.
//
// Synchronization
//   None: an allocator belongs to one builder on one thread for one message.
#pragma once

#include <flatbuffers/allocator.h>

#include <cstddef>
#include <cstdint>
#include <new>

namespace shmq::fb {

class ClaimAllocator final : public flatbuffers::Allocator {
 public:
  ClaimAllocator(std::uint8_t* region, std::size_t size) noexcept : region_(region), size_(size) {}
  ClaimAllocator(const ClaimAllocator&) = delete;
  ClaimAllocator& operator=(const ClaimAllocator&) = delete;
  // Declare the allocator before its builder: the builder's destructor frees its block here.
  ~ClaimAllocator() override = default;

  std::uint8_t* allocate(std::size_t size) override {
    if (!region_taken_ && size <= size_) {
      region_taken_ = true;
      return region_ + (size_ - size);  // high-aligned: the buffer will end at the region's end
    }
    // Spill. Builders keep one live block at a time (realloc frees the old one right after the
    // copy), so one heap block is tracked.
    spilled_ = true;
    auto* p = static_cast<std::uint8_t*>(::operator new(size, std::align_val_t{kHeapAlign}));
    heap_ = p;
    return p;
  }

  void deallocate(std::uint8_t* p, std::size_t /*size*/) override {
    if (in_region(p)) return;  // ring space is committed or aborted by the owner of the claim
    // Unsized: clang declares sized delete only with -fsized-deallocation.
    ::operator delete(p, std::align_val_t{kHeapAlign});
    if (p == heap_) heap_ = nullptr;
  }

  bool in_region(const std::uint8_t* p) const noexcept {
    // Compare as integers: p may point into an unrelated heap block.
    const auto a = reinterpret_cast<std::uintptr_t>(p);
    const auto lo = reinterpret_cast<std::uintptr_t>(region_);
    return a >= lo && a < lo + size_;
  }
  bool spilled() const noexcept { return spilled_; }
  // The live heap block, if the builder spilled: its low end (the free space below the data).
  const std::uint8_t* heap_block() const noexcept { return heap_; }

 private:
  static constexpr std::size_t kHeapAlign = 16;

  std::uint8_t* region_;
  std::size_t size_;
  bool region_taken_ = false;
  bool spilled_ = false;
  std::uint8_t* heap_ = nullptr;
};

}  // namespace shmq::fb
