#!/usr/bin/env python3
"""Checks the Grafana dashboard and the Prometheus rules against PromQL and the service.

- every panel query (and the tenant variable's query) compiles: each is written as a
  recording rule into a temporary rules file checked by `promtool check rules`;
- every metric a panel reads, directly or through a recording rule of
  deploy/prometheus/recording.yml, is in a live /metrics scrape of the service (--metrics,
  taken after the quick-start workload), and every recording rule it names exists;
- every metric the alert and recording rules name is one the service declares
  (actors/src/metric_names.rs), so a renamed metric cannot leave an alert silently empty;
- every alert's runbook link names a paragraph of docs/runbook.md;
- every enablement_* family of the scrape has HELP text.

Exit status 1 with one line per finding; 0 with a summary.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
HIST_SUFFIXES = ("_bucket", "_sum", "_count")


def panel_queries(dashboard):
    out = []

    def walk(panels):
        for p in panels:
            walk(p.get("panels", []))
            for t in p.get("targets", []):
                if t.get("expr", "").strip():
                    out.append((f"panel {p.get('id')} '{p.get('title')}' {t.get('refId')}", t["expr"]))
                else:
                    out.append((f"panel {p.get('id')} '{p.get('title')}' {t.get('refId')}", ""))

    walk(dashboard.get("panels", []))
    for v in dashboard.get("templating", {}).get("list", []):
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        m = re.match(r"label_values\((\w+),\s*\w+\)", q or "")
        if m:
            out.append((f"variable {v['name']}", m.group(1)))
    return out


def metric_names(expr):
    """Metric and recording-rule names in a PromQL expression (not functions, labels or
    keywords: only names that start with enablement_ or contain ':' and name it)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values
    expr = re.sub(r"\{[^}]*\}", "", expr)  # matchers
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    return {n for n in NAME.findall(expr) if n.startswith("enablement_") or ("enablement_" in n and ":" in n)}


def rules(path):
    text = open(path).read()
    records = {}
    for m in re.finditer(r"-\s*record:\s*(\S+)\s*\n\s*expr:\s*(.+)", text):
        records[m.group(1)] = m.group(2)
    exprs = re.findall(r"expr:\s*(\|\s*\n(?:\s{10,}.*\n)+|.+)", text)
    return records, exprs


def scrape(path):
    types, helps, samples = {}, set(), set()
    for line in open(path):
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()[:4]
            types[name] = kind
        elif line.startswith("# HELP "):
            helps.add(line.split()[2])
        elif line.strip() and not line.startswith("#"):
            samples.add(re.split(r"[{ ]", line, 1)[0])
    return types, helps, samples


def exported(name, types, samples):
    if name in types or name in samples:
        return True
    for s in HIST_SUFFIXES:
        if name.endswith(s) and types.get(name[: -len(s)]) in ("histogram", "summary"):
            return True
    return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dashboard", default="deploy/grafana/enablement.json")
    ap.add_argument("--rules", nargs="+", default=["deploy/prometheus/recording.yml", "deploy/prometheus/alerts.yml"])
    ap.add_argument("--declared", default="actors/src/metric_names.rs")
    ap.add_argument("--metrics", required=True, help="a /metrics scrape of the running service")
    ap.add_argument("--promtool", default="promtool")
    ap.add_argument("--runbook", default="docs/runbook.md")
    a = ap.parse_args()

    problems = []
    dashboard = json.load(open(a.dashboard))
    queries = panel_queries(dashboard)
    records, rule_exprs = {}, []
    for path in a.rules:
        r, e = rules(path)
        records.update(r)
        rule_exprs += e
    declared = set(re.findall(r'"(enablement_[a-z0-9_]+)"', open(a.declared).read()))
    types, helps, samples = scrape(a.metrics)

    # 1. Every panel query compiles.
    group = {"groups": [{"name": "dashboard", "rules": []}]}
    for i, (where, expr) in enumerate(queries):
        if not expr:
            problems.append(f"{where}: empty query")
            continue
        group["groups"][0]["rules"].append({"record": f"dashboard:query_{i}", "expr": expr})
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
        json.dump(group, f)  # JSON is YAML
        tmp = f.name
    try:
        out = subprocess.run([a.promtool, "check", "rules", tmp], capture_output=True, text=True)
        if out.returncode != 0:
            problems.append("promtool check rules (dashboard queries) failed:\n" + out.stdout + out.stderr)
    finally:
        os.unlink(tmp)

    # 2. Every metric a panel reads is exported; recording rules it names exist.
    def check_names(where, expr, seen=()):
        for n in metric_names(expr):
            if ":" in n:
                if n not in records:
                    problems.append(f"{where}: recording rule {n} is not defined in {', '.join(a.rules)}")
                elif n not in seen:
                    check_names(f"{where} via {n}", records[n], seen + (n,))
            elif not exported(n, types, samples):
                problems.append(f"{where}: {n} is not in the /metrics scrape ({a.metrics})")

    for where, expr in queries:
        check_names(where, expr)

    # 3. Every metric the rules name is declared by the service.
    for expr in rule_exprs:
        for n in metric_names(expr):
            if ":" in n:
                continue
            base = n
            for s in HIST_SUFFIXES:
                if n.endswith(s) and n[: -len(s)] in declared:
                    base = n[: -len(s)]
            if base not in declared:
                problems.append(f"rules: {n} is not a metric the service declares ({a.declared})")

    # 4. Every alert names a runbook paragraph that exists.
    anchors = {h.strip().lower() for h in re.findall(r"^## (\S+)", open(a.runbook).read(), re.M)}
    for path in a.rules:
        for alert, link in re.findall(r"-\s*alert:\s*(\S+)(?:.|\n)*?runbook:\s*(\S+)", open(path).read()):
            if link.split("#")[-1] not in anchors:
                problems.append(f"{path}: {alert} links {link}, not a paragraph of {a.runbook}")

    # 5. HELP text for every enablement_* family.
    for name in sorted(types):
        if name.startswith("enablement_") and name not in helps:
            problems.append(f"/metrics: {name} has no HELP text")

    for p in problems:
        print(p)
    if problems:
        print(f"{len(problems)} problem(s)")
        return 1
    print(f"dashboard: {len(queries)} queries compile and read only exported metrics; "
          f"rules: {len(rule_exprs)} expressions name only declared metrics; "
          f"{sum(1 for n in types if n.startswith('enablement_'))} metric families have HELP text")
    return 0


if __name__ == "__main__":
    sys.exit(main())
