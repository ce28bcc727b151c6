// Pickling as multiprocessing does it: with ForkingPickler's reducers, so that multiprocessing's
// Connections, sockets and other handles sent through a shmq channel arrive working (their fds
// travel the way multiprocessing sends them: reduction.DupFd, through the spawning Popen or the
// resource sharer).
#pragma once

#include <Python.h>

namespace shmq::py {

// Returns a new reference to the pickle (protocol 5) of `obj`, made with the union of
// copyreg.dispatch_table and multiprocessing.reduction.ForkingPickler's registered reducers
// (ForkingPickler's own table, looked up afresh for every object, so a later
// ForkingPickler.register() applies at once). Out-of-band buffers go to g.collector
// (support.hpp). nullptr with a Python error set on failure. GIL held.
PyObject* forking_dumps(PyObject* obj);

// Called once at import, after init_codec().
void init_pickler();

}  // namespace shmq::py
