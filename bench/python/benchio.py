"""What the Python benchmark scripts share: running worker processes, writing the result
document for bench/run.py."""
from __future__ import annotations

import json
import time
from typing import Any, Dict, List, Optional


def write_doc(doc: Dict[str, Any], out: str) -> None:
    """Writes `doc` as JSON to the file `out`, or to stdout when `out` is "-"."""
    text = json.dumps(doc, indent=1)
    if out == "-":
        print(text)
    else:
        with open(out, "w") as f:
            f.write(text)


def run_children(procs: List[Any], timeout: float) -> Optional[str]:
    """Starts `procs` and joins them within `timeout` seconds in all; kills any still running.
    Returns None if every one exited 0, else what went wrong."""
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.kill()
        p.join()
    if hung:
        return f"timeout after {timeout:.0f} s"
    bad = [p.exitcode for p in procs if p.exitcode != 0]
    return f"worker exit codes {bad}" if bad else None
