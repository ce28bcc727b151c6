"""The multiprocessing documentation's Queue, Pipe and JoinableQueue examples, unchanged but for
the import (shmq instead of multiprocessing for the queue and pipe)."""

from multiprocessing import Process

from shmq import JoinableQueue, Pipe, Queue


# ---- "Exchanging objects between processes: Queues"
def f_queue(q):
    q.put([42, None, 'hello'])


def example_queue():
    q = Queue()
    p = Process(target=f_queue, args=(q,))
    p.start()
    print(q.get())    # prints "[42, None, 'hello']"
    p.join()


# ---- "Exchanging objects between processes: Pipes"
def f_pipe(conn):
    conn.send([42, None, 'hello'])
    conn.close()


def example_pipe():
    parent_conn, child_conn = Pipe()
    p = Process(target=f_pipe, args=(child_conn,))
    p.start()
    print(parent_conn.recv())   # prints "[42, None, 'hello']"
    p.join()


# ---- JoinableQueue: the queue module's task_done()/join() example, with processes as workers
def worker(q):
    while True:
        item = q.get()
        print(f'Working on {item}')
        print(f'Finished {item}')
        q.task_done()


def example_joinable():
    q = JoinableQueue()
    p = Process(target=worker, args=(q,), daemon=True)
    p.start()

    # Send thirty task requests to the worker.
    for item in range(30):
        q.put(item)

    # Block until all tasks are done.
    q.join()
    print('All work completed')
    p.terminate()
    p.join()


def test_queue_example(capfd):
    example_queue()
    assert capfd.readouterr().out == "[42, None, 'hello']\n"


def test_pipe_example(capfd):
    example_pipe()
    assert capfd.readouterr().out == "[42, None, 'hello']\n"


def test_joinable_example(capfd):
    example_joinable()
    out = capfd.readouterr().out.splitlines()
    assert out[-1] == "All work completed"
    assert sum(1 for line in out if line.startswith("Finished")) == 30
