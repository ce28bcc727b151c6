// shmq::fb::DynWriter: sends tables of a run-time type (a schema loaded with Schema::load_*),
// built by DynBuilder from any Source (dyn_build.hpp) in place in the channel, with AnyWriter's
// machinery (writer.hpp): the claim, the in-place build, the prefix, the fallback copy.
//
//   shmq::fb::Value tick = shmq::fb::Value::map({{"sequence", 7}, {"bid", Value::map({{"price", 1.5}})}});
//   shmq::fb::ValueSource src;
//   shmq::fb::DynWriter w(tx);                                   // a PipeWriter or QueueWriter
//   auto sent = w.try_send(*schema.find("Tick"), src, &tick, scratch);
//   if (!sent.error.ok()) log(sent.error.text());               // nothing was sent
//
// A build error aborts the claim: nothing reaches the channel, the channel is untouched.
//
// Thread roles and synchronization: those of AnyWriter (one thread at a time; the channel's
// commit publishes the buffer).
#pragma once

#include <cstddef>
#include <utility>

#include "shmq/serialize/dyn_build.hpp"
#include "shmq/serialize/writer.hpp"

namespace shmq::fb {

// What a DynWriter send did: the channel's status, or the build error (then status is ok and
// nothing was sent).
struct DynSent {
  Status status = Status::ok;
  BuildError error;
  bool ok() const noexcept { return status == Status::ok && error.ok(); }
};

namespace detail {
struct BuildAborted {};  // thrown out of a build to make AnyWriter abort the claim
}  // namespace detail

template <class W = PipeWriter>
class DynWriter {
 public:
  explicit DynWriter(W& writer, WriterOptions options = {}) noexcept : w_(writer, options) {}

  // Never blocks: ok | full | too_big | closed, or a build error.
  template <class Source>
  DynSent try_send(const TypeInfo& type, Source& src, typename Source::Node node,
                   BuildScratch& scratch, std::size_t size_hint = 0) {
    return send_via(type, src, node, scratch, size_hint,
                    [&](RootId id, auto& build) { return w_.try_send(id, build, size_hint); });
  }

  // Waits for space until `deadline`: ok | timeout | interrupted | closed | too_big, or a build
  // error.
  template <class Source>
  DynSent send(const TypeInfo& type, Source& src, typename Source::Node node, BuildScratch& scratch,
               Deadline deadline, std::size_t size_hint = 0) {
    return send_via(type, src, node, scratch, size_hint, [&](RootId id, auto& build) {
      return w_.send(id, build, deadline, size_hint);
    });
  }

  // The general form: `send(RootId, build)` calls one of AnyWriter's sends (any(), below), e.g.
  // one with a claim function of the caller's (the Python binding waits for space with its lock
  // released). The build runs once, after the claim.
  template <class Source, class Send>
  DynSent send_via(const TypeInfo& type, Source& src, typename Source::Node node,
                   BuildScratch& scratch, std::size_t /*size_hint*/, Send&& send) {
    DynSent out;
    if (type.is_struct) {
      out.error.code = BuildErrc::type_error;
      out.error.message = "struct " + type.short_name + " cannot be a message: FlatBuffers roots are tables";
      return out;
    }
    const RootId id{type.type_id, type.identifier.empty() ? nullptr : type.identifier.c_str()};
    auto build = [&](flatbuffers::FlatBufferBuilder& b) -> flatbuffers::uoffset_t {
      DynBuilder<Source> db(b, src, scratch);
      const flatbuffers::uoffset_t root = db.table(type, node);
      if (root == 0) {
        out.error = db.take_error();
        throw detail::BuildAborted{};
      }
      return root;
    };
    try {
      out.status = send(id, build);
    } catch (const detail::BuildAborted&) {
      out.status = Status::ok;  // nothing sent; out.error says why
    }
    return out;
  }

  AnyWriter<W>& any() noexcept { return w_; }
  const AnyWriter<W>& any() const noexcept { return w_; }

 private:
  AnyWriter<W> w_;
};

}  // namespace shmq::fb
