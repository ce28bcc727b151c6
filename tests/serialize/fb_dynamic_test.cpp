// Run-time schemas: loading (errors, includes, names), the reflection-driven builder from Value
// trees (every field kind, every error with its path), the reflection verifier and reader, and
// DynWriter/DynReader over a real Pipe and Queue, interoperating with the flatc-generated
// Writer<T>/Reader<T> both ways.
#include <doctest/doctest.h>

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "channel_util.hpp"
#include "fake_channel.hpp"
#include "samples.hpp"
#include "shmq/serialize/dyn_read.hpp"
#include "shmq/serialize/dyn_value.hpp"
#include "shmq/serialize/dyn_write.hpp"
#include "shmq/serialize/reader.hpp"
#include "shmq/serialize/schema.hpp"
#include "shmq/serialize/schemas.hpp"
#include "shmq/serialize/writer.hpp"
#include "shmq/shm/pipe.hpp"
#include "shmq/shm/queue.hpp"

namespace {

using shmq::Deadline;
using shmq::Status;
using shmq::fb::BuildErrc;
using shmq::fb::BuildScratch;
using shmq::fb::DynBuilder;
using shmq::fb::ReadErrc;
using shmq::fb::Schema;
using shmq::fb::TypeInfo;
using shmq::fb::Value;
using shmq::fb::ValueSource;
using shmq::fb::testing::SegmentName;
namespace s = shmq::schema;
namespace samples = shmq::fb::samples;

const std::string kSchemaDir = SHMQ_SCHEMA_DIR;

Schema load(const std::string& file) {
  auto r = Schema::load_file(kSchemaDir + "/" + file);
  REQUIRE_MESSAGE(r.has_value(), (r.has_value() ? "" : r.error().what));
  return std::move(*r);
}

// A schema with what tick.fbs and order.fbs lack: vectors of structs, arrays in structs, nested
// structs, optional scalars, bool/float vectors, vectors of strings, a second namespace.
constexpr const char* kExtra = R"(
namespace x.geo;
struct Point { x: float; y: float; }
struct Box { lo: Point; hi: Point; tag: [ubyte:3]; }
enum Color : short { Red = -1, Green = 0, Blue = 7 }
table Shape {
  name: string (required);
  points: [Point];
  boxes: [Box];
  flags: [bool];
  weights: [float];
  labels: [string];
  color: Color = Green;
  colors: [Color];
  maybe: int32 = null;
  small: byte = -3;
  big: uint64;
  child: Shape;
  bytes: [ubyte];
}
root_type Shape;
)";

Schema extra() {
  auto r = Schema::load_text(kExtra);
  REQUIRE_MESSAGE(r.has_value(), (r.has_value() ? "" : r.error().what));
  return std::move(*r);
}

// Builds `v` as `type` into a fresh builder; returns the finished buffer (empty on error).
struct Built {
  std::vector<std::uint8_t> buf;
  shmq::fb::BuildError error;
};
Built build(const TypeInfo& type, const Value& v, shmq::fb::BuildLimits limits = {}) {
  flatbuffers::FlatBufferBuilder b;
  ValueSource src;
  BuildScratch scratch;
  DynBuilder<ValueSource> sut(b, src, scratch, limits);
  Built out;
  const auto root = sut.table(type, &v);
  if (root == 0) {
    out.error = sut.error();
    return out;
  }
  b.Finish(flatbuffers::Offset<void>(root), type.identifier.empty() ? nullptr : type.identifier.c_str());
  out.buf.assign(b.GetBufferPointer(), b.GetBufferPointer() + b.GetSize());
  return out;
}

std::span<const std::byte> bytes_of(const std::vector<std::uint8_t>& v) { return std::as_bytes(std::span(v)); }

Value tick_value(std::uint64_t i) {
  return Value::map({
      {"instrument_id", i % 4096},
      {"sequence", i},
      {"exchange_ns", static_cast<std::int64_t>(1'700'000'000'000'000'000 + i)},
      {"receive_ns", static_cast<std::int64_t>(1'700'000'000'000'001'000 + i)},
      {"bid", Value::map({{"price", 100.0 + static_cast<double>(i % 1000) * 0.01}, {"size", 10 + i}, {"orders", i % 7}})},
      // a struct as a sequence of every field in order
      {"ask", Value::list({100.5 + static_cast<double>(i % 1000) * 0.01, 20 + i, i % 5, 0})},
      {"last_price", 100.25 + static_cast<double>(i % 100)},
      {"last_size", 1 + i % 300},
      {"last_side", i % 2 == 0 ? Value("Buy") : Value(2)},  // by name and by value
      {"flags", i & 0xffff},
  });
}

Value order_value(std::uint64_t i, std::size_t legs = 3, std::vector<std::int64_t> ladder = {5, -6, 7}) {
  Value::List leg_list;
  for (std::size_t k = 0; k < legs; ++k) {
    leg_list.push_back(Value::map({{"symbol", samples::numbered("LEG", k)}, {"side", k % 2 == 0 ? "Buy" : "Sell"},
                                   {"ratio", static_cast<std::int64_t>(k + 1)}}));
  }
  return Value::map({
      {"order_id", 1'000'000 + i},
      {"account", "ACC-0042"},
      {"symbol", "ESZ5"},
      {"side", "SellShort"},
      {"quantity", 42},
      {"time_in_force", "FillOrKill"},
      {"type", Value::list({"LimitOrder", Value::map({{"price", 4500.25}, {"post_only", true}})})},
      {"legs", Value::list(std::move(leg_list))},
      {"tags", Value::list({Value::map({{"key", "k"}, {"value", "v"}}), Value::map({{"key", "only-key"}})})},
      {"price_ladder", Value::array<std::int64_t>(ladder)},
      {"note", Value()},  // None: omitted
  });
}

}  // namespace

TEST_CASE("schema: a file loads with its types, root, identifier and shmq type ids") {
  Schema sut = load("tick.fbs");
  const TypeInfo* tick = sut.find("Tick");
  REQUIRE(tick != nullptr);
  CHECK(sut.find("shmq.schema.Tick") == tick);
  CHECK(sut.root() == tick);
  CHECK(tick->is_root);
  CHECK(tick->identifier == "TICK");
  CHECK(tick->type_id == shmq::fb::type_id<s::Tick>());  // the generated Reader<Tick> agrees
  CHECK(tick->path_name == "tick");
  const TypeInfo* level = sut.find("Level");
  REQUIRE(level != nullptr);
  CHECK(level->is_struct);
  CHECK(level->bytesize == sizeof(s::Level));
  CHECK(level->type_id != tick->type_id);
  CHECK((level->type_id & 0x80000000u) != 0);  // a hashed id never equals an ASCII identifier
  CHECK(tick->field("bid")->type == level);
  CHECK(tick->field("last_side")->enum_info->find("Sell")->value == 2);
  CHECK(sut.find("NoSuchType") == nullptr);
  CHECK(sut.find_enum("TradeSide") != nullptr);
}

TEST_CASE("schema: a parse error reports the parser's line, column and message") {
  shmq::fb::SchemaDiagnostic diag;
  auto r = Schema::load_text("table A { x: int; }\ntable B { y: int }\n", {}, "", &diag);
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error().code == shmq::Errc::invalid_argument);
  CHECK(diag.line == 2);
  CHECK(diag.column > 0);
  CHECK(diag.message.find("expecting: ;") != std::string::npos);
  CHECK(diag.file.empty());
  shmq::fb::SchemaDiagnostic named = shmq::fb::parse_diagnostic("/x/y.fbs:12: 7: error: bad thing");
  CHECK(named.file == "/x/y.fbs");
  CHECK(named.line == 12);
  CHECK(named.column == 7);
  CHECK(named.message == "bad thing");
  CHECK(r.error().what.find("does not parse") != std::string::npos);

  auto missing = Schema::load_file("/nonexistent/dir/x.fbs");
  REQUIRE_FALSE(missing.has_value());
  CHECK(missing.error().code == shmq::Errc::not_found);
}

TEST_CASE("schema: includes resolve next to the including file and in include_dirs") {
  const auto dir = std::filesystem::temp_directory_path() / ("shmq-fb-inc-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir / "lib");
  struct Cleanup {
    std::filesystem::path p;
    ~Cleanup() { std::filesystem::remove_all(p); }
  } cleanup{dir};
  std::ofstream(dir / "lib" / "common.fbs") << "namespace lib; table Money { units: long; }\n";
  std::ofstream(dir / "main.fbs") << "include \"lib/common.fbs\";\nnamespace app; table Trade { px: lib.Money; }\nroot_type Trade;\n";
  std::ofstream(dir / "other.fbs") << "include \"common.fbs\";\nnamespace app; table T2 { m: lib.Money; }\n";

  auto beside = Schema::load_file((dir / "main.fbs").string());
  REQUIRE_MESSAGE(beside.has_value(), (beside ? "" : beside.error().what));
  CHECK(beside->find("lib.Money") != nullptr);
  CHECK(beside->find("Trade")->field("px")->type == beside->find("Money"));

  auto without = Schema::load_file((dir / "other.fbs").string());
  CHECK_FALSE(without.has_value());
  auto with = Schema::load_file((dir / "other.fbs").string(), {.include_dirs = {(dir / "lib").string()}});
  REQUIRE_MESSAGE(with.has_value(), (with ? "" : with.error().what));
  CHECK(with->root() == nullptr);  // no root_type: every table gets a hashed type id
  CHECK((with->find("T2")->type_id & 0x80000000u) != 0);
}

TEST_CASE("schema: a short name shared by two namespaces needs the full name") {
  auto r = Schema::load_text("namespace a; table T { x: int; }\nnamespace b; table T { y: int; }\n");
  REQUIRE(r.has_value());
  CHECK(r->find("T") == nullptr);
  REQUIRE(r->find("a.T") != nullptr);
  CHECK(r->find("a.T")->field("x") != nullptr);
  CHECK(r->find("b.T")->field("y") != nullptr);
}

TEST_CASE("dyn build: a tick from a Value tree reads back through the generated classes") {
  Schema schema = load("tick.fbs");
  for (std::uint64_t i : {0ull, 1ull, 77ull, 4097ull}) {
    const Built sut = build(*schema.find("Tick"), tick_value(i));
    REQUIRE_MESSAGE(sut.error.ok(), sut.error.text());
    flatbuffers::Verifier v(sut.buf.data(), sut.buf.size());
    REQUIRE(v.VerifyBuffer<s::Tick>("TICK"));
    CHECK(samples::check_tick(flatbuffers::GetRoot<s::Tick>(sut.buf.data()), i));
  }
}

TEST_CASE("dyn build: an order with a union, enums by name, tables, strings and a typed buffer") {
  Schema schema = load("order.fbs");
  const Built sut = build(*schema.find("Order"), order_value(9));
  REQUIRE_MESSAGE(sut.error.ok(), sut.error.text());
  flatbuffers::Verifier v(sut.buf.data(), sut.buf.size());
  REQUIRE(v.VerifyBuffer<s::Order>("ORDR"));
  const s::Order* o = flatbuffers::GetRoot<s::Order>(sut.buf.data());
  CHECK(o->order_id() == 1'000'009);
  CHECK(o->account()->str() == "ACC-0042");
  CHECK(o->side() == s::Side::SellShort);
  CHECK(o->time_in_force() == s::TimeInForce::FillOrKill);
  REQUIRE(o->type_as_LimitOrder() != nullptr);
  CHECK(o->type_as_LimitOrder()->price() == 4500.25);
  CHECK(o->type_as_LimitOrder()->post_only());
  REQUIRE(o->legs()->size() == 3);
  CHECK(o->legs()->Get(2)->symbol()->str() == "LEG2");
  CHECK(o->legs()->Get(1)->side() == s::Side::Sell);
  CHECK(o->legs()->Get(2)->ratio() == 3);
  CHECK(o->tags()->Get(1)->value() == nullptr);
  REQUIRE(o->price_ladder()->size() == 3);
  CHECK(o->price_ladder()->Get(1) == -6);
  CHECK(o->note() == nullptr);
  CHECK(o->client_order_id() == nullptr);
}

TEST_CASE("dyn build: scalars equal to their default are omitted, optional scalars are kept") {
  Schema schema = extra();
  const TypeInfo& shape = *schema.find("Shape");
  const Built sut = build(shape, Value::map({{"name", "n"}, {"color", "Green"}, {"small", -3}, {"maybe", 0}}));
  REQUIRE_MESSAGE(sut.error.ok(), sut.error.text());
  const shmq::fb::dyn::TableRef t(shmq::fb::dyn::follow(sut.buf.data()), &shape);
  CHECK_FALSE(t.has(*shape.field("color")));
  CHECK_FALSE(t.has(*shape.field("small")));
  CHECK(t.integer(*shape.field("small")) == -3);  // the default
  CHECK(t.has(*shape.field("maybe")));            // `= null`: 0 is a value
}

TEST_CASE("dyn build and read: vectors of structs, arrays, bools, floats, strings, enums, nesting") {
  Schema schema = extra();
  const TypeInfo& shape = *schema.find("Shape");
  const float pts[] = {1.5f, -2.0f, 3.25f, 4.0f};
  const Value v = Value::map({
      {"name", "outer"},
      {"points", Value::array<float>(pts)},  // a buffer of whole structs (2 Points)
      {"boxes", Value::list({Value::map({{"lo", Value::list({0.5, 1.0})}, {"hi", Value::map({{"x", 2.0}})},
                                         {"tag", Value::list({1, 2, 3})}})})},
      {"flags", Value::list({true, false, true})},
      {"weights", Value::list({0.25, 1})},
      {"labels", Value::list({"a", "", "ccc"})},
      {"color", "Red"},
      {"colors", Value::list({"Blue", -1, 0})},
      {"big", std::uint64_t{18'446'744'073'709'551'615ull}},
      {"child", Value::map({{"name", "inner"}, {"small", 5}})},
      {"bytes", Value::bytes(std::as_bytes(std::span("xyz", 3)))},
  });
  const Built sut = build(shape, v);
  REQUIRE_MESSAGE(sut.error.ok(), sut.error.text());
  REQUIRE(shmq::fb::verify_dyn(shape, bytes_of(sut.buf)));
  namespace dyn = shmq::fb::dyn;
  const dyn::TableRef t(dyn::follow(sut.buf.data()), &shape);
  CHECK(t.string(*shape.field("name")) == "outer");
  const dyn::VectorRef points = t.vector(*shape.field("points"));
  REQUIRE(points.size == 2);
  CHECK(dyn::load<float>(points.data + 8 + 4) == 4.0f);  // points[1].y
  const dyn::VectorRef boxes = t.vector(*shape.field("boxes"));
  REQUIRE(boxes.size == 1);
  const TypeInfo& box = *schema.find("Box");
  CHECK(box.bytesize == 20);  // 19 bytes of fields, padded to its 4-byte alignment
  CHECK(dyn::load<float>(boxes.data + box.field("lo")->offset + 4) == 1.0f);
  CHECK(dyn::load<float>(boxes.data + box.field("hi")->offset) == 2.0f);
  CHECK(dyn::load<float>(boxes.data + box.field("hi")->offset + 4) == 0.0f);  // absent in a struct: 0
  CHECK(boxes.data[box.field("tag")->offset + 2] == 3);
  const dyn::VectorRef flags = t.vector(*shape.field("flags"));
  REQUIRE(flags.size == 3);
  CHECK((flags.data[0] == 1 && flags.data[1] == 0 && flags.data[2] == 1));
  CHECK(dyn::load<float>(t.vector(*shape.field("weights")).data + 4) == 1.0f);
  const dyn::VectorRef labels = t.vector(*shape.field("labels"));
  REQUIRE(labels.size == 3);
  CHECK(dyn::string_at(labels.data + 8) == "ccc");
  CHECK(t.integer(*shape.field("color")) == -1);
  const dyn::VectorRef colors = t.vector(*shape.field("colors"));
  CHECK(dyn::load<std::int16_t>(colors.data) == 7);
  CHECK(dyn::load<std::int16_t>(colors.data + 2) == -1);
  CHECK(static_cast<std::uint64_t>(t.integer(*shape.field("big"))) == 18'446'744'073'709'551'615ull);
  const dyn::TableRef child = t.table(*shape.field("child"));
  REQUIRE(child.present());
  CHECK(child.string(*shape.field("name")) == "inner");
  CHECK(child.integer(*shape.field("small")) == 5);
  CHECK_FALSE(child.table(*shape.field("child")).present());
  CHECK(t.vector(*shape.field("bytes")).size == 3);
}

TEST_CASE("dyn build: every error names the field path and leaves nothing half-built") {
  Schema orders = load("order.fbs");
  Schema ticks = load("tick.fbs");
  Schema shapes = extra();
  const TypeInfo& order = *orders.find("Order");
  const TypeInfo& tick = *ticks.find("Tick");
  const TypeInfo& shape = *shapes.find("Shape");
  struct Case {
    const TypeInfo* type;
    Value v;
    BuildErrc code;
    const char* path;
    const char* words;
  };
  Value legs_missing_symbol = order_value(1);
  // legs[2] without its required symbol
  {
    Value::List legs;
    for (int k = 0; k < 3; ++k) {
      legs.push_back(k == 2 ? Value::map({{"ratio", 2}}) : Value::map({{"symbol", "S"}}));
    }
    legs_missing_symbol = Value::map({{"account", "a"}, {"symbol", "s"}, {"legs", Value::list(std::move(legs))}});
  }
  const Case cases[] = {
      {&tick, Value::map({{"sequense", 1}}), BuildErrc::type_error, "tick", "no field 'sequense'"},
      {&tick, Value::map({{"sequence", "one"}}), BuildErrc::type_error, "tick.sequence", "got str"},
      {&tick, Value::map({{"instrument_id", std::int64_t{1} << 32}}), BuildErrc::value_error, "tick.instrument_id", "out of range for uint32"},
      {&tick, Value::map({{"sequence", -1}}), BuildErrc::value_error, "tick.sequence", "out of range"},
      {&tick, Value::map({{"flags", 70000}}), BuildErrc::value_error, "tick.flags", "uint16"},
      {&tick, Value::map({{"last_side", "Hold"}}), BuildErrc::value_error, "tick.last_side", "not a value of enum TradeSide"},
      {&tick, Value::map({{"bid", Value::map({{"prize", 1.0}})}}), BuildErrc::type_error, "tick.bid", "no field 'prize'"},
      {&tick, Value::map({{"bid", Value::list({1.0, 2})}}), BuildErrc::type_error, "tick.bid", "has 4 fields"},
      {&tick, Value::map({{"bid", Value::map({{"orders", 1.5}})}}), BuildErrc::type_error, "tick.bid.orders", "got float"},
      {&tick, Value::list({1}), BuildErrc::type_error, "tick", "expected a mapping"},
      {&order, Value::map({{"symbol", "s"}}), BuildErrc::type_error, "order.account", "missing required field 'account'"},
      {&order, Value::map({{"symbol", "s"}, {"account", Value()}}), BuildErrc::type_error, "order.account", "is None"},
      {&order, legs_missing_symbol, BuildErrc::type_error, "order.legs[2].symbol", "missing required"},
      {&order, Value::map({{"account", "a"}, {"symbol", 5}}), BuildErrc::type_error, "order.symbol", "text or bytes"},
      {&order, Value::map({{"account", "a"}, {"symbol", "s"}, {"type", Value::list({"Iceberg", Value::map({})})}}),
       BuildErrc::value_error, "order.type", "not a member of union OrderType"},
      {&order, Value::map({{"account", "a"}, {"symbol", "s"}, {"type", Value::map({})}}), BuildErrc::type_error,
       "order.type", "pair"},
      {&order, Value::map({{"account", "a"}, {"symbol", "s"}, {"type", Value::list({"LimitOrder", Value::map({{"price", "x"}})})}}),
       BuildErrc::type_error, "order.type.price", "float"},
      {&order, Value::map({{"account", "a"}, {"symbol", "s"}, {"type_type", 1}}), BuildErrc::type_error, "order",
       "no field 'type_type'"},
      {&order, Value::map({{"account", "a"}, {"symbol", "s"}, {"price_ladder", Value::array<double>(std::vector<double>{1.0})}}),
       BuildErrc::type_error, "order.price_ladder", "does not match [int64]"},
      {&order, Value::map({{"account", "a"}, {"symbol", "s"}, {"price_ladder", Value::list({1, "2"})}}),
       BuildErrc::type_error, "order.price_ladder[1]", "got str"},
      {&order, Value::map({{"account", "a"}, {"symbol", "s"}, {"legs", Value::map({})}}), BuildErrc::type_error,
       "order.legs", "a sequence"},
      {&shape, Value::map({{"name", "n"}, {"boxes", Value::list({Value::map({{"tag", Value::list({1, 2})}})})}}),
       BuildErrc::type_error, "shape.boxes[0].tag", "expected 3 items"},
      {&shape, Value::map({{"name", "n"}, {"boxes", Value::list({Value::map({{"tag", Value::list({1, 2, 300})}})})}}),
       BuildErrc::value_error, "shape.boxes[0].tag[2]", "uint8"},
      {&shape, Value::map({{"name", "n"}, {"child", Value::map({{"name", "c"}, {"colors", Value::list({"Pink"})}})}}),
       BuildErrc::value_error, "shape.child.colors[0]", "enum Color"},
      {&shape, Value::map({{"name", "n"}, {"small", -129}}), BuildErrc::value_error, "shape.small", "int8"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.path);
    const Built sut = build(*c.type, c.v);
    CHECK(sut.buf.empty());
    CHECK(sut.error.code == c.code);
    CHECK(sut.error.path == c.path);
    CHECK_MESSAGE(sut.error.message.find(c.words) != std::string::npos, sut.error.message);
  }
}

TEST_CASE("dyn build: nesting deeper than the limit is refused") {
  Schema shapes = extra();
  const TypeInfo& shape = *shapes.find("Shape");
  Value v = Value::map({{"name", "leaf"}});
  for (int i = 0; i < 5; ++i) v = Value::map({{"name", "n"}, {"child", v}});
  CHECK(build(shape, v).error.ok());
  const Built sut = build(shape, v, {.max_depth = 3});
  CHECK(sut.error.code == BuildErrc::value_error);
  CHECK(sut.error.path == "shape.child.child.child");
  CHECK(sut.error.message.find("deeper than 3") != std::string::npos);
}

TEST_CASE("dyn verify: rejects other types, truncations and corrupted offsets") {
  Schema orders = load("order.fbs");
  Schema ticks = load("tick.fbs");
  const TypeInfo& order = *orders.find("Order");
  const Built good = build(order, order_value(3));
  REQUIRE(good.error.ok());
  CHECK(shmq::fb::verify_dyn(order, bytes_of(good.buf)));
  // Another type's buffer: the identifier differs.
  const Built tick = build(*ticks.find("Tick"), tick_value(3));
  CHECK_FALSE(shmq::fb::verify_dyn(order, bytes_of(tick.buf)));
  // Truncations that cut data (the last 16 bytes may hold only the first string and padding).
  int accepted = 0;
  for (std::size_t n = 0; n + 16 < good.buf.size(); n += 3) {
    std::vector<std::uint8_t> cut(good.buf.begin(), good.buf.begin() + static_cast<std::ptrdiff_t>(n));
    accepted += shmq::fb::verify_dyn(order, bytes_of(cut)) ? 1 : 0;
  }
  CHECK(accepted == 0);
  // The root offset pointing outside the buffer.
  std::vector<std::uint8_t> bad = good.buf;
  flatbuffers::WriteScalar<flatbuffers::uoffset_t>(bad.data(), 0x7ffffff0u);
  CHECK_FALSE(shmq::fb::verify_dyn(order, bytes_of(bad)));
  // A struct is never a root.
  CHECK_FALSE(shmq::fb::verify_dyn(*ticks.find("Level"), bytes_of(tick.buf)));
}

TEST_CASE("dyn verify: a missing required field is rejected, at the root and in nested tables") {
  Schema orders = load("order.fbs");
  const TypeInfo& order = *orders.find("Order");
  // Built with the raw builder calls (flatc's builders assert on a missing required field).
  auto built = [](bool root_ok, bool leg_ok) {
    flatbuffers::FlatBufferBuilder b;
    auto sym = b.CreateString("L");
    const auto leg_start = b.StartTable();
    if (leg_ok) b.AddOffset(s::Leg::VT_SYMBOL, sym);
    const flatbuffers::Offset<s::Leg> leg(b.EndTable(leg_start));
    auto legs = b.CreateVector(&leg, 1);
    auto acc = b.CreateString("A");
    auto sy = b.CreateString("S");
    const auto start = b.StartTable();
    b.AddOffset(s::Order::VT_ACCOUNT, acc);
    if (root_ok) b.AddOffset(s::Order::VT_SYMBOL, sy);
    b.AddOffset(s::Order::VT_LEGS, legs);
    b.Finish(flatbuffers::Offset<s::Order>(b.EndTable(start)), "ORDR");
    return std::vector<std::uint8_t>(b.GetBufferPointer(), b.GetBufferPointer() + b.GetSize());
  };
  CHECK(shmq::fb::verify_dyn(order, bytes_of(built(true, true))));
  CHECK_FALSE(shmq::fb::verify_dyn(order, bytes_of(built(false, true))));
  CHECK_FALSE(shmq::fb::verify_dyn(order, bytes_of(built(true, false))));
}

TEST_CASE("dyn writer: a build error aborts the claim and the channel carries on") {
  Schema ticks = load("tick.fbs");
  const TypeInfo& tick = *ticks.find("Tick");
  shmq::fb::testing::FakeChannel ch;
  shmq::fb::testing::FakeWriter w(ch);
  shmq::fb::DynWriter<shmq::fb::testing::FakeWriter> sut(w);
  ValueSource src;
  BuildScratch scratch;
  const Value bad = Value::map({{"sequence", "x"}});
  const shmq::fb::DynSent e = sut.try_send(tick, src, &bad, scratch);
  CHECK_FALSE(e.ok());
  CHECK(e.status == Status::ok);
  CHECK(e.error.path == "tick.sequence");
  CHECK(ch.records.empty());
  const Value good = tick_value(5);
  const shmq::fb::DynSent ok = sut.try_send(tick, src, &good, scratch);
  REQUIRE(ok.ok());
  REQUIRE(ch.records.size() == 1);
  CHECK(sut.any().last_in_place());
  shmq::fb::testing::FakeReader r(ch);
  shmq::fb::Reader<s::Tick, shmq::fb::testing::FakeReader> reader(r);
  auto m = reader.try_recv();
  REQUIRE_MESSAGE(m.ok(), m.error().message());
  CHECK(samples::check_tick(m.get(), 5));
  // A struct as root is refused before anything is claimed.
  const shmq::fb::DynSent st = sut.try_send(*ticks.find("Level"), src, &good, scratch);
  CHECK(st.error.code == BuildErrc::type_error);
  CHECK(w.claims == 2);  // the failed build's claim (aborted) and the good one
}

TEST_CASE("dyn interop over a Pipe: DynWriter -> Reader<T> and Writer<T> -> DynReader, in place") {
  SegmentName name("dynpipe");
  auto p = shmq::Pipe::create({.name = name.str(), .capacity = 1 << 16});
  REQUIRE(p.has_value());
  auto tx = p->writer();
  auto rx = p->reader();
  REQUIRE((tx.has_value() && rx.has_value()));
  Schema orders = load("order.fbs");
  const TypeInfo& order = *orders.find("Order");
  ValueSource src;
  BuildScratch scratch;

  shmq::fb::DynWriter<shmq::PipeWriter> dw(*tx);
  const Value v = order_value(11);
  REQUIRE(dw.send(order, src, &v, scratch, Deadline::never()).ok());
  CHECK(dw.any().last_in_place());
  CHECK(shmq::fb::testing::inside(p->segment(), dw.any().last_buffer()));
  shmq::fb::Reader<s::Order, shmq::PipeReader> gr(*rx);
  {
    auto m = gr.recv(Deadline::never());
    REQUIRE_MESSAGE(m.ok(), m.error().message());
    CHECK(m->order_id() == 1'000'011);
    CHECK(m->legs()->Get(1)->symbol()->str() == "LEG1");
  }

  shmq::fb::Writer<s::Order, shmq::PipeWriter> gw(*tx);
  REQUIRE(gw.send([](auto& b) { return samples::build_order(b, 21, {.legs = 4, .tags = 2, .ladder = 9}); },
                  Deadline::never()) == Status::ok);
  shmq::fb::DynReader<shmq::PipeReader> dr(*rx, order);
  auto m = dr.recv(Deadline::never());
  REQUIRE_MESSAGE(m.ok(), m.error().message());
  CHECK(m.zero_copy());
  const auto t = m.root();
  CHECK(t.integer(*order.field("order_id")) == 1'000'021);
  CHECK(t.string(*order.field("account")) == "ACC-0042");
  const auto legs = t.vector(*order.field("legs"));
  REQUIRE(legs.size == 4);
  const shmq::fb::dyn::TableRef leg3(shmq::fb::dyn::follow(legs.data + 12), order.field("legs")->type);
  CHECK(leg3.string(*leg3.type().field("symbol")) == "LEG3");
  const auto ladder = t.vector(*order.field("price_ladder"));
  REQUIRE(ladder.size == 9);
  CHECK(shmq::fb::dyn::load<std::int64_t>(ladder.data + 8 * 8) == 21 + 8 - 2);
  const auto member = t.union_member(*order.field("type"));
  REQUIRE(member.present());
  CHECK(member.type().short_name == "MarketOrder");  // build_order: i % 3 == 0
}

TEST_CASE("dyn reader: another type or a hostile buffer is rejected, consumed, and the pipe stays usable") {
  SegmentName name("dynrej");
  auto p = shmq::Pipe::create({.name = name.str(), .capacity = 1 << 16});
  REQUIRE(p.has_value());
  auto tx = p->writer();
  auto rx = p->reader();
  REQUIRE((tx.has_value() && rx.has_value()));
  Schema orders = load("order.fbs");
  Schema ticks = load("tick.fbs");
  const TypeInfo& order = *orders.find("Order");
  shmq::fb::Writer<s::Tick, shmq::PipeWriter> tw(*tx);
  REQUIRE(tw.send([](auto& b) { return samples::build_tick(b, 1); }, Deadline::never()) == Status::ok);
  // An Order prefix in front of garbage.
  std::vector<std::byte> junk(64, std::byte{0x5a});
  shmq::fb::store_prefix(junk.data(), {order.type_id, 8});
  REQUIRE(tx->send(junk, Deadline::never(), shmq::fb::kFlatBuffersKind) == Status::ok);
  REQUIRE(tx->send(std::as_bytes(std::span("raw", 3)), Deadline::never(), 0) == Status::ok);
  shmq::fb::Writer<s::Order, shmq::PipeWriter> ow(*tx);
  REQUIRE(ow.send([](auto& b) { return samples::build_order(b, 4); }, Deadline::never()) == Status::ok);

  shmq::fb::DynReader<shmq::PipeReader> sut(*rx, order);
  auto a = sut.recv(Deadline::never());
  CHECK(a.code() == ReadErrc::wrong_type);
  CHECK(a.error().message().find("shmq.schema.Order") != std::string::npos);
  auto b = sut.recv(Deadline::never());
  CHECK(b.code() == ReadErrc::verify_failed);
  auto c = sut.recv(Deadline::never());
  CHECK(c.code() == ReadErrc::wrong_kind);
  auto d = sut.recv(Deadline::never());
  REQUIRE_MESSAGE(d.ok(), d.error().message());
  CHECK(d.root().integer(*order.field("order_id")) == 1'000'004);
  CHECK(sut.rejected() == 3);
  CHECK(sut.verify_failures() == 1);
  // The same reader type over the schema's Tick accepts the generated Writer's ticks.
  REQUIRE(tw.send([](auto& bb) { return samples::build_tick(bb, 8); }, Deadline::never()) == Status::ok);
  shmq::fb::DynReader<shmq::PipeReader> tr(*rx, *ticks.find("Tick"));
  auto e = tr.recv(Deadline::never());
  REQUIRE(e.ok());
  CHECK(e.root().integer(*ticks.find("Tick")->field("sequence")) == 8);
}

TEST_CASE("dyn writer over a Queue: a message larger than a slot is built in place with a size hint") {
  SegmentName name("dynq");
  auto q = shmq::Queue::create({.name = name.str(), .slots = 64, .slot_size = 256});
  REQUIRE_MESSAGE(q.has_value(), q.error().what);
  auto w = q->writer();
  auto r = q->reader();
  REQUIRE((w.has_value() && r.has_value()));
  Schema orders = load("order.fbs");
  const TypeInfo& order = *orders.find("Order");
  std::vector<std::int64_t> ladder(20000);
  for (std::size_t k = 0; k < ladder.size(); ++k) ladder[k] = static_cast<std::int64_t>(k * 3);
  const Value v = order_value(2, 2, ladder);
  ValueSource src;
  BuildScratch scratch;
  shmq::fb::DynWriter<shmq::QueueWriter> sut(*w);
  // Without a hint: one slot is claimed, the build outgrows it and takes the copy path.
  REQUIRE(sut.send(order, src, &v, scratch, Deadline::never()).ok());
  CHECK_FALSE(sut.any().last_in_place());
  const std::size_t size = sut.any().last_buffer_size();
  // With the size seen: built in place in the side allocation.
  REQUIRE(sut.send(order, src, &v, scratch, Deadline::never(), size).ok());
  CHECK(sut.any().last_in_place());
  shmq::fb::DynReader<shmq::QueueReader> dr(*r, order);
  for (int i = 0; i < 2; ++i) {
    auto m = dr.recv(Deadline::never());
    REQUIRE_MESSAGE(m.ok(), m.error().message());
    const auto lad = m.root().vector(*order.field("price_ladder"));
    REQUIRE(lad.size == 20000);
    CHECK(shmq::fb::dyn::load<std::int64_t>(lad.data + 8 * 19999) == 19999 * 3);
  }
}
