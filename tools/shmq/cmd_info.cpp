// shmq ls / stat / watch: read-only views of segments.
#include <fmt/core.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <thread>

#include "arena_view.hpp"
#include "commands.hpp"
#include "inspect.hpp"
#include "peek.hpp"

namespace shmq::cli {

using json = nlohmann::ordered_json;

int report(const std::string& context, const Error& e) {
  std::string text = e.what.empty() ? std::string(errc_name(e.code)) : e.what;
  std::cerr << "shmq: " << context << ": " << text << "\n";
  // A malformed name is a usage error: the user typed something that can never work.
  return e.code == Errc::invalid_name ? kExitUsage : kExitError;
}

int report(const std::string& context, const std::string& what) {
  std::cerr << "shmq: " << context << ": " << what << "\n";
  return kExitError;
}

namespace {

constexpr std::size_t kStatObjects = 50;  // objects `stat` lists

std::string capacity_text(const Probe& p) {
  const SegmentHeader* h = p.header();
  if (h == nullptr || !p.sound()) return "-";
  if (p.kind_name() == "pipe") {
    return human_bytes(p.capacity()) + (p.directions() == 2 ? " x2" : "");
  }
  return fmt::format("{} x {}", p.capacity(), human_bytes(h->params.slot_size));
}

// Depth from the rings themselves: messages for a queue, bytes for a pipe (whose records have
// no count; the statistics' sent - received is a guess that lags batched counters).
struct Depth {
  bool ok = false;
  bool messages = false;
  std::uint64_t value = 0;
  std::string error;
};

bool is_arena(const Probe& p) { return p.kind_name() == "arena"; }

// How many objects an arena holds (ls shows them where channels show their depth).
struct Objects {
  bool ok = false;
  std::uint64_t value = 0;
  std::string error;
};

Objects objects_of(const Probe& p) {
  Objects o;
  const ArenaState a = read_arena_state(p, 0);
  o.ok = a.ok;
  o.value = a.in_use;
  o.error = a.error;
  return o;
}

Depth depth_of(const Probe& p) {
  Depth d;
  if (!p.sound()) return d;
  if (is_arena(p)) {  // no ring; see objects_of
    const Objects o = objects_of(p);
    d.ok = o.ok;
    d.error = o.error;
    return d;
  }
  for (unsigned dir = 0; dir < p.directions(); ++dir) {
    const RingState rs = read_ring_state(p, dir);
    if (!rs.ok) {
      d.error = rs.error;
      return d;
    }
    d.messages = rs.has_message_depth;
    d.value += rs.has_message_depth ? rs.depth_messages : rs.depth_bytes;
  }
  d.ok = true;
  return d;
}

// A sound, ready segment nobody is attached to: what `shmq gc` keeps if it is named.
bool idle(const Probe& p, const Liveness& l) {
  return p.sound() && p.state_name() == "ready" && l.alive == 0 && !l.creator_alive;
}

// Committed messages waiting in every direction: a queue's depth, or a pipe's complete records
// (counted by a walk, up to kMaxCounted); kUncounted if a ring cannot be read.
constexpr std::uint64_t kMaxCounted = 100'000;
constexpr std::uint64_t kUncounted = ~std::uint64_t{0};
std::uint64_t messages_waiting(const Probe& p) {
  std::uint64_t n = 0;
  for (unsigned dir = 0; dir < p.directions(); ++dir) {
    const RingState rs = read_ring_state(p, dir);
    if (!rs.ok) return kUncounted;
    if (rs.has_message_depth) {
      n += rs.depth_messages;
      continue;
    }
    const PeekResult r = peek(p, dir, kMaxCounted, 0);
    if (r.corrupt) return kUncounted;
    n += static_cast<std::uint64_t>(std::count_if(r.messages.begin(), r.messages.end(),
                                                  [](const auto& m) { return m.complete && !m.held; }));
  }
  return n;
}

std::string messages_text(std::uint64_t n) {
  return fmt::format("{}{} message{}", n, n >= kMaxCounted ? "+" : "", n == 1 ? "" : "s");
}

std::string depth_text(const Probe& p, const Depth& d) {
  if (!d.ok) return d.error.empty() ? "-" : "corrupt";
  if (is_arena(p)) return fmt::format("{} obj", objects_of(p).value);
  return d.messages ? std::to_string(d.value) : human_bytes(d.value);
}

json problems_json(const Probe& p) {
  json arr = json::array();
  for (const auto& pr : p.problems()) {
    arr.push_back({{"code", errc_name(pr.code)}, {"warning", pr.warning}, {"what", pr.what}});
  }
  return arr;
}

json stats_json(const StatsView& s) {
  return {{"sent", s.sent},
          {"received", s.received},
          {"depth", s.depth()},
          {"bytes_sent", s.bytes_sent},
          {"bytes_received", s.bytes_received},
          {"full_waits", s.full_waits},
          {"empty_waits", s.empty_waits},
          {"wakes", s.wakes},
          {"abandoned", s.abandoned},
          {"recovered", s.recovered},
          {"fallback_copies", s.fallback_copies},
          {"verify_failures", s.verify_failures},
          {"corrupt_events", s.corrupt_events}};
}

json ls_entry(const Probe& p) {
  const Liveness l = p.liveness();
  const SegmentHeader* h = p.header();
  const bool sound = p.sound();
  const Depth d = depth_of(p);
  const bool is_idle = idle(p, l);
  const std::uint64_t waiting = is_idle ? messages_waiting(p) : kUncounted;
  json j = {{"name", p.name()},
            {"kind", p.kind_name()},
            {"state", d.ok || !sound ? p.state_name() : "corrupt"},
            {"idle", is_idle},
            {"idle_messages", waiting != kUncounted ? json(waiting) : json(nullptr)},
            {"capacity", sound ? json(p.capacity()) : json(nullptr)},
            {"slot_size", sound && p.kind_name() == "queue" ? json(h->params.slot_size) : json(nullptr)},
            {"directions", sound ? json(p.directions()) : json(nullptr)},
            {"depth_messages", d.ok && d.messages ? json(d.value) : json(nullptr)},
            {"depth_bytes", d.ok && !d.messages && !is_arena(p) ? json(d.value) : json(nullptr)},
            {"participants", {{"alive", l.alive}, {"dead", l.dead}}},
            {"owner", user_name(p.file_stat().st_uid)},
            {"owner_uid", p.file_stat().st_uid},
            {"bytes", static_cast<std::uint64_t>(p.file_stat().st_size)},
            {"age_seconds", p.age_seconds()}};
  if (is_arena(p)) {
    j["slot_size"] = sound ? json(h->params.slot_size) : json(nullptr);
    j["objects"] = d.ok ? json(objects_of(p).value) : json(nullptr);
  }
  json problems = problems_json(p);
  if (sound && !d.ok) problems.push_back({{"code", "corrupt"}, {"warning", false}, {"what", d.error}});
  j["problems"] = problems;
  return j;
}

}  // namespace

int cmd_ls(const LsOptions& o) {
  json all = json::array();
  struct Row {
    std::string name, kind, state, capacity, depth, alive, dead, owner, age;
  };
  std::vector<Row> rows;
  for (const auto& name : list_segment_names()) {
    if (!name_matches(o.patterns, name)) continue;
    auto probe = Probe::open(name);
    if (!probe) {
      // Vanished between readdir and open, or unreadable: show it, do not fail the listing.
      if (probe.error().code == Errc::not_found) continue;
      all.push_back({{"name", name}, {"state", "unreadable"}, {"error", probe.error().what}});
      rows.push_back({name, "?", "unreadable", "-", "-", "-", "-", "?", "-"});
      continue;
    }
    const Probe& p = *probe;
    all.push_back(ls_entry(p));
    const json& j = all.back();
    const Depth d = depth_of(p);
    const std::string state = d.ok || !p.sound() ? (j["idle"].get<bool>() ? "idle" : p.state_name())
                                                  : "corrupt";
    rows.push_back({name, p.kind_name(), state,
                    capacity_text(p), depth_text(p, d),
                    std::to_string(j["participants"]["alive"].get<std::uint32_t>()),
                    std::to_string(j["participants"]["dead"].get<std::uint32_t>()),
                    user_name(p.file_stat().st_uid), human_age(p.age_seconds())});
  }
  if (o.json) {
    std::cout << all.dump(2) << "\n";
    return kExitOk;
  }
  if (rows.empty()) {
    std::cout << (o.patterns.empty() ? "no shmq segments in /dev/shm\n"
                                     : "no shmq segments match in /dev/shm\n");
    return kExitOk;
  }
  std::size_t w = 4;
  for (const auto& r : rows) w = std::max(w, r.name.size());
  auto line = [w](const Row& r) {
    return fmt::format("{:<{}}  {:<5}  {:<12}  {:>14}  {:>7}  {:>5}  {:>4}  {:<10}  {:>6}\n", r.name,
                       w, r.kind, r.state, r.capacity, r.depth, r.alive, r.dead, r.owner, r.age);
  };
  std::cout << line({"NAME", "KIND", "STATE", "CAPACITY", "DEPTH", "ALIVE", "DEAD", "OWNER", "AGE"});
  for (const auto& r : rows) std::cout << line(r);
  return kExitOk;
}

int cmd_stat(const StatOptions& o) {
  auto probe = Probe::open(o.name);
  if (!probe) return report("stat " + o.name, probe.error());
  const Probe& p = *probe;
  const SegmentHeader* h = p.header();
  const Liveness l = p.liveness();
  const auto parts = p.participants();
  const bool sound = p.sound();

  json j = {{"name", p.name()},
            {"path", p.path()},
            {"kind", p.kind_name()},
            {"state", p.state_name()},
            {"file",
             {{"bytes", static_cast<std::uint64_t>(p.file_stat().st_size)},
              {"uid", p.file_stat().st_uid},
              {"owner", user_name(p.file_stat().st_uid)},
              {"mode", fmt::format("{:04o}", p.file_stat().st_mode & 07777)}}},
            {"age_seconds", p.age_seconds()}};
  if (h != nullptr) {
    // relaxed: a snapshot copy.
    j["header"] = {{"magic", fmt::format("0x{:016x}", h->magic)},
                   {"layout_version", h->layout_version},
                   {"kind", h->kind},
                   {"state", fmt::format("0x{:08x}", h->state.load(std::memory_order_relaxed))},
                   {"owner_uid", h->owner_uid},
                   {"creator_pid", h->creator_pid},
                   {"header_bytes", h->header_bytes},
                   {"total_bytes", h->total_bytes},
                   {"body_offset", h->body_offset},
                   {"body_bytes", h->body_bytes},
                   {"created_ns", h->created_ns},
                   {"params",
                    {{"capacity", h->params.capacity},
                     {"slot_size", h->params.slot_size},
                     {"maxsize", h->params.maxsize},
                     {"directions", h->params.directions},
                     {"flags", h->params.flags}}}};
    if (std::memchr(h->name, '\0', sizeof h->name) != nullptr) j["header"]["name"] = std::string(h->name);
  } else {
    j["header"] = nullptr;
  }
  j["liveness"] = {{"alive", l.alive}, {"dead", l.dead}, {"creator_alive", l.creator_alive}};
  const bool is_idle = idle(p, l);
  const std::uint64_t waiting = is_idle ? messages_waiting(p) : kUncounted;
  j["idle"] = is_idle;
  j["idle_messages"] = waiting != kUncounted ? json(waiting) : json(nullptr);
  json pj = json::array();
  for (const auto& v : parts) {
    pj.push_back({{"slot", v.index},
                  {"pid", v.pid},
                  {"role", role_name(v.role)},
                  {"generation", v.generation},
                  {"joined_ns", v.joined_ns},
                  {"alive", v.alive}});
  }
  j["participants"] = pj;
  json sj = json::array();
  if (sound && !is_arena(p)) {
    for (unsigned d = 0; d < p.directions(); ++d) sj.push_back(stats_json(p.stats(d)));
  }
  j["stats"] = sj;
  json rj = json::array();
  std::string ring_error;
  ArenaState arena;
  if (sound && is_arena(p)) {
    arena = read_arena_state(p, kStatObjects);
    if (!arena.ok) ring_error = arena.error;
    json objs = json::array();
    for (const ArenaObject& o : arena.objects) {
      json oj = {{"block", o.index}, {"generation", o.generation}, {"type", o.type},
                 {"name", o.name}, {"bytes", o.bytes}, {"holders", o.holders}};
      if (o.type == "mutex" || o.type == "recursive_mutex")
        oj["lock"] = {{"locked", o.locked}, {"holder_pid", o.holder_pid}, {"holder_alive", o.holder_alive}};
      objs.push_back(oj);
    }
    j["arena"] = {{"block_bytes", arena.block_bytes}, {"blocks", arena.blocks},
                  {"in_use", arena.in_use}, {"allocations", arena.allocations},
                  {"by_type", arena.by_type}, {"objects", objs}};
  }
  if (sound && !is_arena(p)) {
    for (unsigned d = 0; d < p.directions(); ++d) {
      const RingState rs = read_ring_state(p, d);
      if (!rs.ok) {
        ring_error = rs.error;
        rj.push_back({{"direction", d}, {"error", rs.error}});
        continue;
      }
      if (rs.has_message_depth) {
        rj.push_back({{"direction", d}, {"dequeue_pos", rs.head}, {"enqueue_pos", rs.tail},
                      {"depth_messages", rs.depth_messages}, {"closed", rs.closed},
                      {"arena", {{"chunks", rs.arena_chunks}, {"chunk_bytes", rs.arena_chunk_bytes},
                                 {"in_use", rs.arena_in_use}}}});
      } else {
        rj.push_back({{"direction", d}, {"head", rs.head}, {"read", rs.read}, {"tail", rs.tail},
                      {"depth_bytes", rs.depth_bytes}, {"writer_closed", rs.writer_closed},
                      {"reader_closed", rs.reader_closed}});
      }
    }
  }
  j["rings"] = rj;
  json problems = problems_json(p);
  if (!ring_error.empty()) problems.push_back({{"code", "corrupt"}, {"warning", false}, {"what", ring_error}});
  j["problems"] = problems;

  if (o.json) {
    std::cout << j.dump(2) << "\n";
  } else {
    std::cout << fmt::format("{}  ({})\n", p.name(), p.path());
    std::cout << fmt::format("  kind        {}\n  state       {}\n", p.kind_name(), p.state_name());
    std::cout << fmt::format("  file        {} bytes, mode {:04o}, owner {}\n",
                             static_cast<std::uint64_t>(p.file_stat().st_size),
                             p.file_stat().st_mode & 07777, user_name(p.file_stat().st_uid));
    if (h != nullptr && h->magic == kSegmentMagic) {
      std::cout << fmt::format("  created     {} ago by pid {}\n", human_age(p.age_seconds()),
                               h->creator_pid);
      if (sound) {
        if (p.kind_name() == "pipe") {
          std::cout << fmt::format("  capacity    {} per direction, {}\n",
                                   human_bytes(h->params.capacity),
                                   p.directions() == 2 ? "duplex" : "one direction");
        } else if (is_arena(p)) {
          std::cout << fmt::format("  blocks      {} of {} bytes\n", h->params.capacity, h->params.slot_size);
        } else {
          std::cout << fmt::format("  slots       {} of {} bytes, maxsize {}\n", h->params.capacity,
                                   h->params.slot_size,
                                   h->params.maxsize == 0 ? std::string("(slots)")
                                                          : std::to_string(h->params.maxsize));
        }
        std::cout << fmt::format("  layout      header {} bytes, body {} bytes, version {}\n",
                                 h->header_bytes, h->body_bytes, h->layout_version);
      }
    }
    std::cout << fmt::format("  participants {} alive, {} dead\n", l.alive, l.dead);
    if (is_idle) {
      std::cout << fmt::format("  idle        nobody attached{}{}\n",
                               waiting != kUncounted ? ", " + messages_text(waiting) + " waiting" : "",
                               generated_segment_name(p.name())
                                   ? ""
                                   : " (named: kept until `shmq rm`, gc never removes it alone)");
    }
    for (const auto& v : parts) {
      std::cout << fmt::format("    slot {:>2}  pid {:<8} {:<8} {}\n", v.index, v.pid,
                               role_name(v.role), v.alive ? "alive" : "dead");
    }
    if (sound && is_arena(p) && arena.ok) {
      std::string types;
      for (const auto& [t, n] : arena.by_type) types += fmt::format("{}{} {}", types.empty() ? "" : ", ", n, t);
      std::cout << fmt::format("  objects     {} in use{}{}, {} allocated since creation\n", arena.in_use,
                               types.empty() ? "" : ": ", types, arena.allocations);
      for (const ArenaObject& o : arena.objects) {
        std::string lock;
        if (o.locked)
          lock = fmt::format("  locked by pid {} ({})", o.holder_pid, o.holder_alive ? "alive" : "dead");
        std::cout << fmt::format("    {}.{:<4} {:<16} {:<12} {} holder{}{}\n", o.index, o.generation,
                                 o.type, o.name.empty() ? "-" : o.name, o.holders,
                                 o.holders == 1 ? "" : "s", lock);
      }
      if (arena.in_use > arena.objects.size())
        std::cout << fmt::format("    ... and {} more (--json lists {} at most)\n",
                                 arena.in_use - arena.objects.size(), kStatObjects);
    }
    if (sound && !is_arena(p)) {
      for (unsigned d = 0; d < p.directions(); ++d) {
        const StatsView s = p.stats(d);
        std::cout << fmt::format("  direction {}: sent {} ({}), received {} ({}), depth {}\n", d,
                                 s.sent, human_bytes(s.bytes_sent), s.received,
                                 human_bytes(s.bytes_received), s.depth());
        std::cout << fmt::format(
            "    full waits {}, empty waits {}, wakes {}, abandoned {}, recovered {}\n",
            s.full_waits, s.empty_waits, s.wakes, s.abandoned, s.recovered);
        std::cout << fmt::format("    fallback copies {}, verify failures {}, corrupt events {}\n",
                                 s.fallback_copies, s.verify_failures, s.corrupt_events);
        const json& r = rj[d];
        if (r.contains("depth_bytes")) {
          const auto head = r["head"].get<std::uint64_t>(), read = r["read"].get<std::uint64_t>();
          const std::string unreturned =
              read != head ? fmt::format(" (read to {}, space not yet returned)", read) : "";
          std::cout << fmt::format("    ring: head {}{}, tail {}, {} waiting{}{}\n", head,
                                   unreturned, r["tail"].get<std::uint64_t>(),
                                   human_bytes(r["depth_bytes"].get<std::uint64_t>()),
                                   r["writer_closed"].get<bool>() ? ", writer closed" : "",
                                   r["reader_closed"].get<bool>() ? ", reader closed" : "");
        } else if (r.contains("depth_messages")) {
          std::cout << fmt::format("    ring: dequeue {}, enqueue {}, {} waiting{}\n",
                                   r["dequeue_pos"].get<std::uint64_t>(),
                                   r["enqueue_pos"].get<std::uint64_t>(),
                                   r["depth_messages"].get<std::uint64_t>(),
                                   r["closed"].get<bool>() ? ", closed" : "");
          const json& a = r["arena"];
          std::cout << fmt::format("    arena: {} chunks of {}, {} in use\n",
                                   a["chunks"].get<std::uint64_t>(),
                                   human_bytes(a["chunk_bytes"].get<std::uint64_t>()),
                                   a["in_use"].get<std::uint64_t>());
        }
      }
    }
    for (const auto& pr : j["problems"]) {
      std::cout << fmt::format("  {}: {}\n", pr["warning"].get<bool>() ? "warning" : "problem",
                               pr["what"].get<std::string>());
    }
  }
  if (!sound) return report("stat " + o.name, p.first_error());
  if (!ring_error.empty()) return report("stat " + o.name, Error(Errc::corrupt, ring_error));
  return kExitOk;
}

namespace {

std::string rate_text(double v) {
  if (v < 1e3) return fmt::format("{:.0f}", v);
  if (v < 1e6) return fmt::format("{:.1f}k", v / 1e3);
  if (v < 1e9) return fmt::format("{:.2f}M", v / 1e6);
  return fmt::format("{:.2f}G", v / 1e9);
}

std::string byte_rate_text(double v) {
  return human_bytes(static_cast<std::uint64_t>(v < 0 ? 0 : v)) + "/s";
}

// Messages waiting for a queue, bytes for a pipe, read from the ring.
std::string ring_depth_text(const Probe& p, unsigned direction) {
  const RingState rs = read_ring_state(p, direction);
  if (!rs.ok) return "?";
  return rs.has_message_depth ? std::to_string(rs.depth_messages) : human_bytes(rs.depth_bytes);
}

double delta(std::uint64_t now, std::uint64_t before, double secs) {
  return now >= before && secs > 0 ? static_cast<double>(now - before) / secs : 0.0;
}

}  // namespace

int cmd_watch(const WatchOptions& o) {
  auto probe = Probe::open(o.name);
  if (!probe) return report("watch " + o.name, probe.error());
  Probe& p = *probe;
  if (!p.sound()) return report("watch " + o.name, p.first_error());
  if (is_arena(p))
    return report("watch " + o.name, "an arena holds synchronization objects, not messages: see `shmq stat " + o.name + "`");
  const bool tty = ::isatty(STDOUT_FILENO) == 1;
  const unsigned dirs = p.directions();
  StatsView before[2] = {p.stats(0), p.stats(1)};
  const auto t_start = std::chrono::steady_clock::now();
  auto t_before = t_start;
  const auto interval = std::chrono::duration<double>(o.interval);
  auto next = t_before;
  unsigned printed_lines = 0;

  const std::string head = fmt::format("{:>8}  {:>3}  {:>9}  {:>9}  {:>12}  {:>12}  {:>8}  {:>8}  {:>9}\n",
                                       "time", "dir", "sent/s", "recv/s", "in", "out", "depth",
                                       "wakes/s", "abandoned");
  if (!tty) std::cout << head;
  for (std::uint64_t n = 0; o.count == 0 || n < o.count; ++n) {
    next += std::chrono::duration_cast<std::chrono::steady_clock::duration>(interval);
    std::this_thread::sleep_until(next);
    if (auto r = p.refresh(); !r) return report("watch " + o.name, r.error());
    if (p.file_stat().st_nlink == 0) return report("watch " + o.name, "the segment was removed");
    if (!p.sound()) return report("watch " + o.name, p.first_error());
    const auto t_now = std::chrono::steady_clock::now();
    const double secs = std::chrono::duration<double>(t_now - t_before).count();
    const Liveness l = p.liveness();
    std::string block;
    for (unsigned d = 0; d < dirs; ++d) {
      const StatsView s = p.stats(d);
      block += fmt::format("{:>7.1f}s  {:>3}  {:>9}  {:>9}  {:>12}  {:>12}  {:>8}  {:>8}  {:>9}\n",
                           std::chrono::duration<double>(t_now - t_start).count(),
                           d, rate_text(delta(s.sent, before[d].sent, secs)),
                           rate_text(delta(s.received, before[d].received, secs)),
                           byte_rate_text(delta(s.bytes_sent, before[d].bytes_sent, secs)),
                           byte_rate_text(delta(s.bytes_received, before[d].bytes_received, secs)),
                           ring_depth_text(p, d), rate_text(delta(s.wakes, before[d].wakes, secs)),
                           s.abandoned);
      before[d] = s;
    }
    if (tty) {
      // Move up over the previous frame and redraw it in place.
      std::string frame;
      if (printed_lines > 0) frame += fmt::format("\x1b[{}A", printed_lines);
      frame += fmt::format("\x1b[K{} ({}, {} alive, {} dead)\n", p.name(), p.kind_name(), l.alive,
                           l.dead);
      frame += "\x1b[K" + head;
      std::size_t pos = 0;
      while (pos < block.size()) {
        const std::size_t end = block.find('\n', pos);
        frame += "\x1b[K" + block.substr(pos, end - pos + 1);
        pos = end + 1;
      }
      printed_lines = 2 + dirs;
      std::cout << frame << std::flush;
    } else {
      std::cout << block << std::flush;
    }
    t_before = t_now;
  }
  return kExitOk;
}

}  // namespace shmq::cli
