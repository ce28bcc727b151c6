// Reads every field of a verified table of a run-time type through the dyn accessors
// (dyn_read.hpp), recursively, without knowing what to expect: under ASan/UBSan a fuzz run proves
// that whatever the verifier accepts is read in bounds. Also the extra schema the targets use.
#pragma once

#include <bit>
#include <cstdint>

#include "shmq/serialize/dyn_read.hpp"

namespace shmq::fb::fuzz {

// Field kinds tick.fbs and order.fbs lack.
inline constexpr const char* kShapeSchema = R"(
namespace fuzz;
struct P { x: float; y: double; }
struct Box { lo: P; hi: P; tag: [ubyte:3]; corners: [P:2]; }
enum Color : short { Red = -1, Green = 0, Blue = 7 }
table Leaf { s: string (required); n: int; }
union Any { Leaf, Shape }
table Shape {
  name: string (required);
  pts: [P];
  boxes: [Box];
  flags: [bool];
  weights: [float];
  labels: [string];
  color: Color = Green;
  colors: [Color];
  maybe: int32 = null;
  child: Shape;
  leaves: [Leaf];
  any: Any;
  box: Box;
}
root_type Shape;
)";

inline std::uint64_t touch_scalar(reflection::BaseType t, const std::uint8_t* p) {
  if (t == reflection::Float || t == reflection::Double) {
    return std::bit_cast<std::uint64_t>(dyn::float_at(t, p));  // by bits: no float-to-int UB
  }
  return static_cast<std::uint64_t>(dyn::int_at(t, p));
}

inline std::uint64_t touch_string(std::string_view s) {
  std::uint64_t h = s.size();
  for (const char c : s) h = h * 31 + static_cast<unsigned char>(c);
  return h;
}

inline std::uint64_t touch_struct(const TypeInfo& t, const std::uint8_t* p) {
  std::uint64_t h = 0;
  for (const FieldInfo& f : t.fields) {
    const std::uint8_t* a = p + f.offset;
    if (f.base == reflection::Obj) {
      h += touch_struct(*f.type, a);
    } else if (f.base == reflection::Array) {
      for (std::uint32_t i = 0; i < f.fixed_length; ++i) {
        h += f.element == reflection::Obj ? touch_struct(*f.type, a + i * f.element_size)
                                          : touch_scalar(f.element, a + i * f.element_size);
      }
    } else {
      h += touch_scalar(f.base, a);
    }
  }
  return h;
}

inline std::uint64_t touch_table(const dyn::TableRef& t, int depth) {
  if (!t.present() || depth > 64) return 0;
  std::uint64_t h = 0;
  for (const FieldInfo& f : t.type().fields) {
    if (f.deprecated) continue;
    const std::uint8_t* a = t.address(f);
    switch (f.base) {
      case reflection::String: h += t.string(f).size() + (a != nullptr ? touch_string(t.string(f)) : 0); break;
      case reflection::Obj:
        h += f.type->is_struct ? (a != nullptr ? touch_struct(*f.type, a) : 0) : touch_table(t.table(f), depth + 1);
        break;
      case reflection::Union: {
        const dyn::TableRef m = t.union_member(f);
        h += m.present() && m.type().is_struct ? touch_struct(m.type(), m.data()) : touch_table(m, depth + 1);
        break;
      }
      case reflection::Vector: {
        if (!f.supported) break;
        const dyn::VectorRef v = t.vector(f);
        for (std::uint32_t i = 0; i < v.size; ++i) {
          if (f.element == reflection::String) {
            h += touch_string(dyn::string_at(v.data + 4 * i));
          } else if (f.element == reflection::Obj && !f.type->is_struct) {
            h += touch_table(dyn::TableRef(dyn::follow(v.data + 4 * i), f.type), depth + 1);
          } else if (f.element == reflection::Obj) {
            h += touch_struct(*f.type, v.data + i * f.element_size);
          } else {
            h += touch_scalar(f.element, v.data + i * f.element_size);
          }
        }
        break;
      }
      default: h += a != nullptr ? touch_scalar(f.base, a) : static_cast<std::uint64_t>(f.default_integer); break;
    }
  }
  return h;
}

}  // namespace shmq::fb::fuzz
