// shmq::fb::Value: a small tree of values (None, bool, integers, float, text, bytes/typed
// buffers, lists, maps) that DynBuilder builds from in C++ through ValueSource, the way the Python
// binding builds from dicts. For C++ programs that get their message's shape at run time, and for
// the tests of the builder.
//
//   using shmq::fb::Value;
//   Value order = Value::map({{"order_id", 7}, {"symbol", "ESZ5"},
//                             {"legs", Value::list({Value::map({{"symbol", "A"}})})},
//                             {"type", Value::list({"LimitOrder", Value::map({{"price", 1.5}})})},
//                             {"price_ladder", Value::array<std::int64_t>(ladder)}});
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "shmq/serialize/dyn_build.hpp"

namespace shmq::fb {

class Value {
 public:
  struct Bytes {
    std::vector<std::byte> data;
    std::string format = "B";  // struct-module notation of the items
    std::size_t itemsize = 1;
  };
  using List = std::vector<Value>;
  using Map = std::vector<std::pair<std::string, Value>>;

  Value() = default;  // None
  Value(bool b) : v_(b) {}
  template <class I>
    requires(std::is_integral_v<I> && !std::is_same_v<I, bool>)
  Value(I i) {
    if constexpr (std::is_signed_v<I>) {
      v_ = static_cast<std::int64_t>(i);
    } else {
      v_ = static_cast<std::uint64_t>(i);
    }
  }
  Value(double d) : v_(d) {}
  Value(const char* s) : v_(std::string(s)) {}
  Value(std::string s) : v_(std::move(s)) {}

  static Value list(std::initializer_list<Value> items) { return from(List(items)); }
  static Value list(List items) { return from(std::move(items)); }
  static Value map(std::initializer_list<std::pair<std::string, Value>> entries) { return from(Map(entries)); }
  static Value map(Map entries) { return from(std::move(entries)); }
  static Value bytes(std::span<const std::byte> data, std::string format = "B", std::size_t itemsize = 1) {
    Bytes b;
    b.data.assign(data.begin(), data.end());
    b.format = std::move(format);
    b.itemsize = itemsize;
    return from(std::move(b));
  }
  // A typed buffer, as a numpy array would be: the elements' bytes with their format.
  template <class T>
  static Value array(std::span<const T> items) {
    return bytes(std::as_bytes(items), format_of<T>(), sizeof(T));
  }

  bool is_none() const noexcept { return std::holds_alternative<std::monostate>(v_); }
  template <class T>
  const T* get() const noexcept { return std::get_if<T>(&v_); }

 private:
  template <class T>
  static Value from(T x) {
    Value v;
    v.v_ = std::move(x);
    return v;
  }
  template <class T>
  static std::string format_of() {
    if constexpr (std::is_same_v<T, bool>) return "?";
    else if constexpr (std::is_same_v<T, float>) return "f";
    else if constexpr (std::is_same_v<T, double>) return "d";
    else if constexpr (std::is_signed_v<T>) return sizeof(T) == 1 ? "b" : sizeof(T) == 2 ? "h" : sizeof(T) == 4 ? "i" : "q";
    else return sizeof(T) == 1 ? "B" : sizeof(T) == 2 ? "H" : sizeof(T) == 4 ? "I" : "Q";
  }

  std::variant<std::monostate, bool, std::int64_t, std::uint64_t, double, std::string, Bytes, List, Map> v_;
};

// DynBuilder's Source over a Value tree (see the concept in dyn_build.hpp). Nodes are pointers
// into the tree, which must outlive the build.
class ValueSource {
 public:
  using Node = const Value*;
  struct Hold {};
  class Seq {
   public:
    std::size_t size() const noexcept { return list_ != nullptr ? list_->size() : 0; }
    Node item(std::size_t i) const noexcept { return &(*list_)[i]; }

   private:
    friend class ValueSource;
    const Value::List* list_ = nullptr;
  };

  static bool is_mapping(Node n) noexcept { return n->get<Value::Map>() != nullptr; }
  static bool is_none(Node n) noexcept { return n->is_none(); }
  template <class Fn>
  bool fields(Node map, const TypeInfo& t, Fn&& fn) const {
    for (const auto& entry : *map->get<Value::Map>()) {  // not a structured binding: clang 14
      const std::string& key = entry.first;                // cannot capture one in a lambda
      if (!fn(t.field(key), &entry.second, [&key] { return key; })) return false;
    }
    return true;
  }

  Conv to_i64(Node n, std::int64_t& out) const noexcept {
    if (const auto* i = n->get<std::int64_t>()) {
      out = *i;
      return Conv::ok;
    }
    if (const auto* u = n->get<std::uint64_t>()) {
      if (*u > static_cast<std::uint64_t>(INT64_MAX)) return Conv::overflow;
      out = static_cast<std::int64_t>(*u);
      return Conv::ok;
    }
    if (const auto* b = n->get<bool>()) {
      out = *b ? 1 : 0;
      return Conv::ok;
    }
    return Conv::wrong_type;
  }
  Conv to_u64(Node n, std::uint64_t& out) const noexcept {
    if (const auto* u = n->get<std::uint64_t>()) {
      out = *u;
      return Conv::ok;
    }
    std::int64_t i = 0;
    const Conv c = to_i64(n, i);
    if (c != Conv::ok) return c;
    if (i < 0) return Conv::overflow;
    out = static_cast<std::uint64_t>(i);
    return Conv::ok;
  }
  Conv to_f64(Node n, double& out) const noexcept {
    if (const auto* d = n->get<double>()) {
      out = *d;
      return Conv::ok;
    }
    if (const auto* i = n->get<std::int64_t>()) {
      out = static_cast<double>(*i);
      return Conv::ok;
    }
    if (const auto* u = n->get<std::uint64_t>()) {
      out = static_cast<double>(*u);
      return Conv::ok;
    }
    return Conv::wrong_type;
  }
  Conv to_bool(Node n, bool& out) const noexcept {
    if (const auto* b = n->get<bool>()) {
      out = *b;
      return Conv::ok;
    }
    std::int64_t i = 0;
    if (to_i64(n, i) == Conv::ok && (i == 0 || i == 1)) {
      out = i == 1;
      return Conv::ok;
    }
    return Conv::wrong_type;
  }
  Conv text(Node n, std::string_view& out) const noexcept {
    if (const auto* s = n->get<std::string>()) {
      out = *s;
      return Conv::ok;
    }
    if (const auto* b = n->get<Value::Bytes>(); b != nullptr && b->itemsize == 1) {
      out = std::string_view(reinterpret_cast<const char*>(b->data.data()), b->data.size());
      return Conv::ok;
    }
    return Conv::wrong_type;
  }
  Conv buffer(Node n, BufferView& out, Hold&) const noexcept {
    const auto* b = n->get<Value::Bytes>();
    if (b == nullptr) return Conv::wrong_type;
    out = {b->data.data(), b->data.size(), b->itemsize, b->format.c_str()};
    return Conv::ok;
  }
  Conv sequence(Node n, Seq& out) const noexcept {
    out.list_ = n->get<Value::List>();
    return out.list_ != nullptr ? Conv::ok : Conv::wrong_type;
  }
  Conv pair(Node n, Node& first, Node& second) const noexcept {
    const auto* l = n->get<Value::List>();
    if (l == nullptr || l->size() != 2) return Conv::wrong_type;
    first = &(*l)[0];
    second = &(*l)[1];
    return Conv::ok;
  }
  std::string describe(Node n) const {
    if (n == nullptr || n->is_none()) return "None";
    if (n->get<bool>() != nullptr) return "bool";
    if (n->get<std::int64_t>() != nullptr || n->get<std::uint64_t>() != nullptr) return "int";
    if (n->get<double>() != nullptr) return "float";
    if (n->get<std::string>() != nullptr) return "str";
    if (n->get<Value::Bytes>() != nullptr) return "bytes";
    if (n->get<Value::List>() != nullptr) return "list";
    return "map";
  }
};

}  // namespace shmq::fb
