"""What every Python benchmark script shares: writing its result document for bench/run.py."""
from __future__ import annotations

import json
from typing import Any, Dict


def write_doc(doc: Dict[str, Any], out: str) -> None:
    """Writes `doc` as JSON to the file `out`, or to stdout when `out` is "-"."""
    text = json.dumps(doc, indent=1)
    if out == "-":
        print(text)
    else:
        with open(out, "w") as f:
            f.write(text)
