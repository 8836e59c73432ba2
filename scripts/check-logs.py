#!/usr/bin/env python3
"""Checks a service log written with `log.format = "json"` (README, "Operating"):

- every line is one JSON object with `timestamp`, `level`, `target` and `message`;
- the documented lines carry their stable fields: `batch committed` (tenant, batch,
  offset, records, events, duration_ms) and `record dead-lettered` (tenant, offset,
  reason), and at least one of each is present;
- no line holds a secret given on the command line, an e-mail address, or a SCIM payload
  (its schema URN or user fields).

usage: check-logs.py LOG [SECRET ...]
"""
import json
import re
import sys

EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
PAYLOAD = re.compile(r"urn:ietf:params:scim|\"userName\"|\"emails\"|\"displayName\"")
REQUIRED = {
    "batch committed": {"tenant", "batch", "offset", "records", "events", "duration_ms"},
    "record dead-lettered": {"tenant", "offset", "reason"},
}


def main():
    path, secrets = sys.argv[1], [s for s in sys.argv[2:] if len(s) >= 6]
    problems, seen = [], {k: 0 for k in REQUIRED}
    lines = open(path, encoding="utf-8", errors="replace").read().splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            problems.append(f"line {n}: not JSON: {line[:120]}")
            continue
        missing = {"timestamp", "level", "target", "message"} - rec.keys()
        if missing:
            problems.append(f"line {n}: missing {sorted(missing)}")
        want = REQUIRED.get(rec.get("message"))
        if want is not None:
            seen[rec["message"]] += 1
            if want - rec.keys():
                problems.append(f"line {n}: '{rec['message']}' lacks {sorted(want - rec.keys())}")
        for s in secrets:
            if s in line:
                problems.append(f"line {n}: holds a secret ({s[:3]}...)")
        if EMAIL.search(line):
            problems.append(f"line {n}: holds an e-mail address")
        if PAYLOAD.search(line):
            problems.append(f"line {n}: holds a SCIM payload")
    for message, count in seen.items():
        if count == 0:
            problems.append(f"no '{message}' line in the log")
    for p in problems[:50]:
        print(p)
    if problems:
        print(f"{len(problems)} problem(s) in {path}")
        return 1
    print(f"{path}: {len(lines)} JSON lines, stable fields present, no secret, e-mail or payload")
    return 0


if __name__ == "__main__":
    sys.exit(main())
