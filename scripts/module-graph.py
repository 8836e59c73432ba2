#!/usr/bin/env python3
"""The module graph of the workspace, checked against the layers in scripts/layers.txt.

Reads every `use` tree and inline path (`crate::`, `super::`, `self::`, `enablement::`,
`enablement_actors::`, `enablement_tools::`) outside `#[cfg(test)]` modules and comments, and
builds a graph of components: the top-level modules of each crate (`enablement::db`,
`actors::scim`, `tools::bench`, the binaries). Then:

  --check   exits 1 when a component is missing from the layers file, when two components
            import each other through any chain (a cycle), or when a component imports one
            from a higher layer. Run by scripts/test.sh, so the house stays one-way.
  --self-test  runs the check on a small synthetic workspace holding one upward import and
            one cycle, and fails unless both are reported (so the check cannot rot into
            passing everything).
  --report  prints the measurements quoted in issue notes: components, files, the longest
            import chain (levels), cycles, upward imports, the largest files and functions.

Standard library only (python3), so it runs wherever the tests run.
"""
import os
import re
import sys
from collections import defaultdict

ROOT = os.environ.get("MODULE_GRAPH_ROOT") or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CRATES = {
    # crate name in paths -> (source dir, short name used in the layers file)
    "enablement": ("src", "enablement"),
    "enablement_actors": ("actors/src", "actors"),
    "enablement_tools": ("tools/src", "tools"),
}
SHORT = {v[1]: k for k, v in CRATES.items()}


def rust_files():
    """(crate, module path list, file path) of every library and binary file."""
    out = []
    for crate, (src, _) in CRATES.items():
        base = os.path.join(ROOT, src)
        if not os.path.isdir(base):
            continue
        for dirpath, _, files in os.walk(base):
            for f in sorted(files):
                if not f.endswith(".rs"):
                    continue
                path = os.path.join(dirpath, f)
                rel = os.path.relpath(path, base)
                parts = rel[:-3].split(os.sep)
                if parts[0] == "bin":
                    out.append((crate, ["bin:" + parts[1]], path))
                    continue
                if parts == ["main"]:
                    out.append((crate, ["bin:main"], path))
                    continue
                if parts[-1] in ("mod", "lib"):
                    parts = parts[:-1]
                out.append((crate, parts, path))
    return out


def code_of(path):
    """The file's text without comments, string contents and `#[cfg(test)]` modules."""
    text = open(path, encoding="utf-8").read()
    # Strings first (a "//" inside a URL is not a comment), then comments.
    text = re.sub(r'(?<![A-Za-z0-9_])r#*"(?:.|\n)*?"#*', '""', text)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    text = re.sub(r"/\*(?:.|\n)*?\*/", "", text)
    text = re.sub(r"//[^\n]*", "", text)
    # Drop every `#[cfg(test)] mod x { ... }` (brace-matched) and `#[cfg(test)] mod x;`.
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*(pub(\([a-z]+\))?\s+)?mod\s+\w+\s*([;{])", text):
        if m.start() < i:
            continue
        out.append(text[i:m.start()])
        if m.group(3) == ";":
            i = m.end()
            continue
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j
    out.append(text[i:])
    return "".join(out)


def use_paths(tree):
    """Expands a use tree (`a::{b, c::d}`) into its paths."""
    tree = re.sub(r"\s+", "", tree)
    depth, start, parts = 0, 0, []
    brace = tree.find("{")
    if brace < 0:
        return [tree]
    prefix, inner = tree[:brace], tree[brace + 1:tree.rfind("}")]
    for i, ch in enumerate(inner):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(inner[start:i])
            start = i + 1
    parts.append(inner[start:])
    out = []
    for p in parts:
        if p:
            out.extend(use_paths(prefix + p))
    return out


PATH_RE = re.compile(
    r"(?<![A-Za-z0-9_:])(crate|super|self|enablement|enablement_actors|enablement_tools)"
    r"((?:::[A-Za-z_][A-Za-z0-9_]*)+)"
)


def references(code):
    """Every path this file names that starts at a crate root or a relative root."""
    paths = []
    for m in re.finditer(r"\buse\s+([^;]+);", code):
        paths.extend(use_paths(m.group(1)))
    code_wo_use = re.sub(r"\buse\s+[^;]+;", "", code)
    for m in PATH_RE.finditer(code_wo_use):
        paths.append(m.group(1) + m.group(2))
    return paths


def resolve(crate, module, path, modules):
    """(crate, module path list) a path refers to, or None for std and other crates."""
    segs = [s for s in path.split("::") if s and s != "*"]
    if not segs:
        return None
    head = segs[0]
    if head in ("enablement", "enablement_actors", "enablement_tools"):
        crate, rest = head, segs[1:]
    elif head == "crate":
        rest = segs[1:]
    elif head in ("super", "self"):
        base = list(module) if not module[0].startswith("bin:") else []
        while segs and segs[0] in ("super", "self"):
            if segs[0] == "super" and base:
                base = base[:-1]
            segs = segs[1:]
        rest = base + segs
    else:
        return None
    # `crate::actors::x` in the service is the actors crate (re-exported as `actors`).
    if crate == "enablement" and rest[:1] == ["actors"]:
        crate, rest = "enablement_actors", rest[1:]
    # The longest prefix that is a module of that crate.
    for n in range(len(rest), -1, -1):
        if tuple(rest[:n]) in modules.get(crate, set()):
            return crate, rest[:n]
    return crate, []


def component(crate, module):
    short = CRATES[crate][1]
    if not module:
        return short  # the crate root (lib.rs)
    return f"{short}::{module[0]}"


def load_layers():
    layers = []
    for line in open(os.path.join(ROOT, "scripts", "layers.txt"), encoding="utf-8"):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, _, members = line.partition(":")
        layers.append((name.strip(), members.split()))
    return layers


def sccs(nodes, edges):
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(comp)

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def longest_chain(nodes, edges):
    """Levels of the condensed graph (1 = imports nothing of the workspace)."""
    comps = sccs(nodes, edges)
    of = {v: i for i, c in enumerate(comps) for v in c}
    memo = {}

    def depth(c):
        if c in memo:
            return memo[c]
        memo[c] = 1
        best = 1
        for v in comps[c]:
            for w in edges.get(v, ()):
                if of[w] != c:
                    best = max(best, 1 + depth(of[w]))
        memo[c] = best
        return best

    return max((depth(i) for i in range(len(comps))), default=0)


def blank_strings(text):
    """String and char literals and comments replaced by spaces, newlines kept."""
    keep = lambda m: re.sub(r"[^\n]", " ", m.group(0))
    text = re.sub(r'(?<![A-Za-z0-9_])r#*"(?:.|\n)*?"#*|"(?:\\.|[^"\\])*"', keep, text)
    text = re.sub(r"'(?:\\.|[^'\\])'", keep, text)
    return re.sub(r"//[^\n]*", keep, text)


def functions(path):
    """(lines, name) of every fn in the file, tests included."""
    lines = blank_strings(open(path, encoding="utf-8").read()).split("\n")
    out = []
    for i, line in enumerate(lines):
        m = re.match(r"\s*(pub(\([a-z]+\))?\s+)?(async\s+)?fn\s+(\w+)", line)
        if not m:
            continue
        depth, seen, j = 0, False, i
        while j < len(lines):
            for ch in lines[j]:
                if ch == "{":
                    depth += 1
                    seen = True
                elif ch == "}":
                    depth -= 1
            if seen and depth <= 0:
                break
            if not seen and lines[j].rstrip().endswith(";"):
                break
            j += 1
        if seen:
            out.append((j - i + 1, m.group(4)))
    return out


def test_only(files):
    """Files of modules declared `#[cfg(test)] mod x;` (and everything under them)."""
    out = []
    for crate, module, path in files:
        text = open(path, encoding="utf-8").read()
        for m in re.finditer(r"#\[cfg\(test\)\]\s*(?:pub(?:\([a-z]+\))?\s+)?mod\s+(\w+)\s*;", text):
            base = [] if module and module[0].startswith("bin:") else list(module)
            out.append((crate, tuple(base + [m.group(1)])))
    return out


def self_test():
    import subprocess
    import tempfile
    with tempfile.TemporaryDirectory() as root:
        def write(path, text):
            full = os.path.join(root, path)
            os.makedirs(os.path.dirname(full), exist_ok=True)
            with open(full, "w", encoding="utf-8") as f:
                f.write(text)
        write("scripts/layers.txt", "top: enablement::app\nlow: enablement::base enablement::a enablement::b\n")
        write("src/lib.rs", "pub mod app;\npub mod base;\npub mod a;\npub mod b;\n")
        write("src/app.rs", "use crate::base::X;\n")
        # upward: base (low) uses app (top); cycle: a <-> b.
        write("src/base.rs", "pub struct X;\nfn f() { crate::app::g(); }\n")
        write("src/a.rs", "use crate::b::{B, C};\n")
        write("src/b.rs", "use super::a::A;\n#[cfg(test)]\nmod tests { use crate::app::T; }\n")
        out = subprocess.run([sys.executable, __file__, "--check"], env={**os.environ,
                             "MODULE_GRAPH_ROOT": root}, capture_output=True, text=True)
        expected = ["upward import: enablement::base", "import cycle: enablement::a <-> enablement::b"]
        missing = [e for e in expected if e not in out.stderr]
        unexpected = "enablement::b (low) imports enablement::app" in out.stderr
        if out.returncode != 1 or missing or unexpected:
            print(f"self-test failed: exit {out.returncode}, missing {missing}, "
                  f"test-module import counted: {unexpected}\n{out.stderr}", file=sys.stderr)
            return 1
    print("module graph self-test: an upward import and a cycle are caught")
    return 0


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else "--check"
    if mode == "--self-test":
        return self_test()
    files = rust_files()
    hidden = test_only(files)
    files = [
        (c, m, p) for c, m, p in files
        if not any(c == hc and tuple(m[:len(hm)]) == hm for hc, hm in hidden)
    ]
    modules = defaultdict(set)
    for crate, module, _ in files:
        for n in range(len(module) + 1):
            modules[crate].add(tuple(module[:n]))
    comp_edges = defaultdict(set)
    file_edges = defaultdict(set)
    file_of = {}
    for crate, module, path in files:
        file_of[(crate, tuple(module))] = path
    witnesses = {}
    for crate, module, path in files:
        src = component(crate, module)
        for ref in references(code_of(path)):
            target = resolve(crate, module, ref, modules)
            if target is None:
                continue
            tcrate, tmod = target
            dst = component(tcrate, tmod)
            if dst == CRATES[tcrate][1]:
                continue  # the crate root only re-exports
            tfile = file_of.get((tcrate, tuple(tmod)))
            if tfile and tfile != path:
                file_edges[path].add(tfile)
            if dst != src:
                comp_edges[src].add(dst)
                witnesses.setdefault((src, dst), (os.path.relpath(path, ROOT), ref))
    nodes = {component(c, m) for c, m, _ in files if m}
    layers = load_layers()
    layer_of = {}
    for i, (_, members) in enumerate(layers):
        for member in members:
            layer_of[member] = i
    problems = []
    for n in sorted(nodes):
        if n not in layer_of:
            problems.append(f"{n}: not placed in scripts/layers.txt")
    cycles = [sorted(c) for c in sccs(nodes, comp_edges) if len(c) > 1]
    for c in cycles:
        problems.append("import cycle: " + " <-> ".join(c))
    upward = []
    for src, dsts in sorted(comp_edges.items()):
        for dst in sorted(dsts):
            if src in layer_of and dst in layer_of and layer_of[dst] < layer_of[src]:
                f, ref = witnesses[(src, dst)]
                upward.append(
                    f"{src} ({layers[layer_of[src]][0]}) imports {dst} "
                    f"({layers[layer_of[dst]][0]}), e.g. {f}: {ref}"
                )
    problems.extend("upward import: " + u for u in upward)
    if mode == "--report":
        all_files = [p for _, _, p in files]
        print(f"components: {len(nodes)}; files: {len(all_files)}; "
              f"longest import chain: {longest_chain(set(all_files), file_edges)} files, "
              f"{longest_chain(nodes, comp_edges)} components")
        print(f"import cycles between components: {len(cycles)}")
        for c in cycles:
            print("  " + " <-> ".join(c))
        print(f"upward imports: {len(upward)}")
        for u in upward:
            print("  " + u)
        sizes = sorted(((sum(1 for _ in open(p, encoding='utf-8')), os.path.relpath(p, ROOT))
                        for p in all_files), reverse=True)
        print("largest files: " + ", ".join(f"{p} {n}" for n, p in sizes[:6]))
        fns = sorted(((n, f"{os.path.relpath(p, ROOT)}::{name}") for p in all_files
                      for n, name in functions(p)), reverse=True)
        print("largest functions: " + ", ".join(f"{p} {n}" for n, p in fns[:6]))
        for p in problems:
            if not p.startswith(("import cycle", "upward")):
                print("  " + p)
        return 0
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        print(f"module graph: {len(problems)} problem(s); see scripts/layers.txt", file=sys.stderr)
        return 1
    print(f"module graph: {len(nodes)} components, one-way ({len(layers)} layers, no cycle)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
