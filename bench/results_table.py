#!/usr/bin/env python3
"""Prints bench-results/results.json (written by bench/run.py) as a Markdown table, and with
--update README.md replaces the table between the README's results markers."""
import argparse
import json
import re
import sys

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def fmt(v):
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"


def table(d):
    m = d["machine"]
    out = [f"Machine: {m.get('cpu_model', '?')}, {m.get('cores_usable', '?')} cores, "
           f"Linux {m.get('kernel', '?')}, {m.get('compiler', '?')}; commit "
           f"{str(m.get('git_commit', '?'))[:12]}; `bench/run.py --{d.get('mode', 'quick')}`, "
           f"{d.get('elapsed_s', 0):.0f} s.",
           "",
           "| id | what | target | min | median | max | verdict |",
           "|---|---|---|---|---|---|---|"]
    for r in d["targets"]:
        if r["verdict"] == "not run":
            out.append(f"| {r['id']} | {r['what']} | {r['target']} | | | | not run: {r.get('reason', '')} |")
        else:
            out.append(f"| {r['id']} | {r['what']} | {r['target']} | {fmt(r['min'])} | "
                       f"{fmt(r['median'])} | {fmt(r['max'])} | {r['verdict']} |")
    met = sum(r["verdict"] == "met" for r in d["targets"])
    missed = sum(r["verdict"] == "MISSED" for r in d["targets"])
    notrun = sum(r["verdict"] == "not run" for r in d["targets"])
    out += ["", f"{met} met, {missed} missed, {notrun} not run."]
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("results", nargs="?", default="bench-results/results.json")
    ap.add_argument("--update", metavar="README")
    a = ap.parse_args()
    with open(a.results) as f:
        t = table(json.load(f))
    if not a.update:
        print(t)
        return 0
    with open(a.update) as f:
        text = f.read()
    if BEGIN not in text or END not in text:
        print(f"{a.update} has no {BEGIN} ... {END} markers", file=sys.stderr)
        return 1
    text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END),
                  lambda _: f"{BEGIN}\n{t}\n{END}", text, flags=re.S)
    with open(a.update, "w") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
