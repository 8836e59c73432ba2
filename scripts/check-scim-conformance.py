#!/usr/bin/env python3
"""Compares the findings of scim2-tester (the output of `scim test`) with the deliberate
deviations listed in scripts/scim-conformance-deviations.txt: exits non-zero on a finding not
listed, on a listed deviation that no longer appears, or when too few checks ran."""
import sys

def main(out_path: str, deviations_path: str, min_success: int) -> int:
    lines = open(out_path, encoding="utf-8").read().splitlines()
    found, successes = [], 0
    for i, line in enumerate(lines):
        if line.startswith("SUCCESS "):
            successes += 1
        elif line.startswith("ERROR "):
            message = lines[i + 1].strip() if i + 1 < len(lines) else ""
            found.append((line[len("ERROR "):].strip(), message))
    allowed = []
    for raw in open(deviations_path, encoding="utf-8"):
        raw = raw.strip()
        if raw and not raw.startswith("#"):
            check, _, prefix = raw.partition(": ")
            allowed.append((check, prefix))
    unexpected = [f for f in found if not any(f[0] == c and f[1].startswith(p) for c, p in allowed)]
    stale = [a for a in allowed if not any(f[0] == a[0] and f[1].startswith(a[1]) for f in found)]
    print(f"scim2-tester: {successes} checks passed, {len(found)} findings "
          f"({len(found) - len(unexpected)} listed deviations)")
    for check, message in unexpected:
        print(f"  UNEXPECTED {check}: {message}")
    for check, prefix in stale:
        print(f"  NO LONGER SEEN (remove from the list) {check}: {prefix}")
    if successes < min_success:
        print(f"  only {successes} checks passed; expected at least {min_success}")
    return 1 if unexpected or stale or successes < min_success else 0

if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 100))
