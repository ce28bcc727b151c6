#!/usr/bin/env python3
"""Runs `flatc --python` and lays its modules out flat in one directory.

flatc writes one module per type under <out>/<namespace path>/; meson wants every output named up
front and placed in the target's own directory. This script runs flatc in a scratch directory,
checks that it produced exactly the expected modules (so a schema change that adds a type fails
the build here instead of shipping an incomplete package), and copies them to --outdir.

usage: flatc_python.py --flatc FLATC --namespace shmq.schema --outdir DIR --expect A.py,B.py SCHEMA...
"""
import argparse
import pathlib
import shutil
import subprocess
import sys
import tempfile


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--flatc", required=True)
    ap.add_argument("--namespace", required=True)
    ap.add_argument("--outdir", required=True)
    ap.add_argument("--expect", required=True)
    ap.add_argument("schemas", nargs="+")
    args = ap.parse_args()

    expected = set(args.expect.split(","))
    out = pathlib.Path(args.outdir)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([args.flatc, "--python", "-o", tmp, *args.schemas], check=True)
        gen = pathlib.Path(tmp).joinpath(*args.namespace.split("."))
        produced = {p.name for p in gen.glob("*.py")}
        if produced != expected:
            print("flatc_python: flatc produced %s, meson expects %s; update the list in "
                  "serialize/schemas/meson.build" % (sorted(produced), sorted(expected)),
                  file=sys.stderr)
            return 1
        out.mkdir(parents=True, exist_ok=True)
        for name in sorted(produced):
            shutil.copyfile(gen / name, out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
