#!/usr/bin/python3
"""Check the direction rules of docs/architecture.md on a build.

    tests/arch/layers.py BUILD_DIR [--files DIR ...] [--print]

Two checks, both from what the compiler saw, not from what comments say:

1. Modules (by #include and by linked symbols): core/base <- config <- dkim,
   queue <- delivery <- core/server. A module may include and call only the
   modules to its left; bench/ only core/base and dkim. The includes come
   from the sources, the calls from `nm` on each module's objects: a symbol
   a module's object uses (U) and another module defines (T/D/B/R).

2. Files (by linked symbols): inside each DIR given with --files (default:
   queue), no file calls back into a file that calls it, however far round:
   the file graph has no cycle. A file's static functions are its own, so
   only the calls between files count.

--print lists the file graph of each DIR (file -> the files it calls), the
form docs/architecture.md quotes. Exit status 0 when both rules hold, 1
with the offending includes, calls or cycles on stderr otherwise.
"""
import argparse
import os
import re
import subprocess
import sys

SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# module -> the modules it may use (its own is always allowed)
ALLOWED = {
    "core/base": set(),
    "config": {"core/base"},
    "dkim": {"core/base", "config"},
    "queue": {"core/base", "config"},
    "delivery": {"core/base", "config", "dkim", "queue"},
    "core/server": {"core/base", "config", "dkim", "queue", "delivery"},
    "bench": {"core/base", "dkim"},
}
# module -> the CMake targets whose objects hold it (core/server: the
# daemon's files in a library that both layouts' sluiced link, main.c in
# sluiced itself)
TARGET = {
    "core/base": ("sluice_base",),
    "config": ("sluice_config",),
    "dkim": ("sluice_dkim",),
    "queue": ("sluice_queue",),
    "delivery": ("sluice_delivery",),
    "core/server": ("sluice_server", "sluiced"),
}
# Sources of a module that no target above compiles: separate programs
# (sluicectl links core/base only).
NOT_IN_TARGET = {"core/server/sluicectl.c", "core/server/sluicectl_suppress.c",
                 "core/server/sluicectl_print.c"}
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def module_of(path):
    """The module of a source path relative to SRC, or None."""
    for m in sorted(ALLOWED, key=len, reverse=True):
        if path == m or path.startswith(m + "/"):
            return m
    return None


def sources(directory):
    out = []
    for root, _, names in os.walk(os.path.join(SRC, directory)):
        for n in sorted(names):
            if n.endswith((".c", ".h")) and not n.endswith("_test.c"):
                out.append(os.path.relpath(os.path.join(root, n), SRC))
    return out


def objects(build, module):
    """{source file relative to SRC: object path} of a module's targets."""
    out = {}
    for target in TARGET[module]:
        base = os.path.join(build, "core/server" if module == "core/server" else "",
                            "CMakeFiles", target + ".dir")
        for root, _, names in os.walk(base):
            for n in names:
                if n.endswith(".c.o"):
                    obj = os.path.join(root, n)
                    rel = os.path.relpath(obj, base)[: -len(".o")]
                    if module == "core/server":
                        rel = os.path.join("core/server", rel)
                    if os.path.exists(os.path.join(SRC, rel)):
                        out[rel] = obj
    return out


def check_coverage(build, errors):
    """Every .c file of a module has an object in its targets: a file the
    checks cannot see would pass them unread."""
    for module in TARGET:
        objs = objects(build, module)
        for src in sources(module):
            if src.endswith(".c") and src not in objs and src not in NOT_IN_TARGET:
                if not any(src.startswith(m + "/") for m in TARGET if len(m) > len(module)):
                    errors.append(f"{src}: no object in {', '.join(TARGET[module])} "
                                  f"under {build}: the checks cannot see it")


def symbols(obj):
    """(defined, used) global symbols of an object file."""
    res = subprocess.run(["nm", "-P", obj], capture_output=True, text=True, check=True)
    defined, used = set(), set()
    for line in res.stdout.splitlines():
        parts = line.split()
        if len(parts) < 2:
            continue
        name, kind = parts[0], parts[1]
        if kind == "U":
            used.add(name)
        elif kind in "TDBRGSVW":
            defined.add(name)
    return defined, used


def check_includes(errors):
    for module in ALLOWED:
        for path in sources(module):
            with open(os.path.join(SRC, path), encoding="utf-8", errors="replace") as f:
                text = f.read()
            for inc in INCLUDE.findall(text):
                other = module_of(inc)
                if other is None or other == module:
                    continue
                if other not in ALLOWED[module]:
                    errors.append(f"{path}: includes {inc} ({module} may not use {other})")


def check_module_calls(build, errors):
    defs, uses = {}, {}
    for module in TARGET:
        for src, obj in objects(build, module).items():
            d, u = symbols(obj)
            defs.setdefault(module, {}).update({s: src for s in d})
            uses.setdefault(module, {})[src] = u
    for module, files in uses.items():
        for src, used in files.items():
            for other, table in defs.items():
                if other == module or other in ALLOWED[module]:
                    continue
                for sym in sorted(used & table.keys()):
                    errors.append(f"{src}: calls {sym} ({table[sym]}): "
                                  f"{module} may not use {other}")


def file_graph(build, directory):
    """{file: set of files it calls} for the files of one directory."""
    module = module_of(directory)
    objs = {s: o for s, o in objects(build, module).items()
            if os.path.dirname(s) == directory}
    defs, uses = {}, {}
    for src, obj in objs.items():
        d, u = symbols(obj)
        uses[src] = u
        for s in d:
            defs[s] = src
    graph = {}
    for src, used in uses.items():
        graph[src] = {defs[s] for s in used if s in defs and defs[s] != src}
    return graph


def cycles(graph):
    """The strongly connected components with more than one file (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
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
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("build", help="a configured and built build directory (build-san, build)")
    ap.add_argument("--files", nargs="*", default=["queue"],
                    help="directories whose files must not call each other in a circle")
    ap.add_argument("--print", action="store_true", help="print each directory's file graph")
    args = ap.parse_args()
    errors = []
    check_includes(errors)
    check_module_calls(args.build, errors)
    check_coverage(args.build, errors)
    for directory in args.files:
        graph = file_graph(args.build, directory)
        if not graph:
            errors.append(f"{directory}: no objects found under {args.build}")
        if args.print:
            print(f"{directory}:")
            for f in sorted(graph):
                calls = ", ".join(os.path.basename(g) for g in sorted(graph[f])) or "-"
                print(f"  {os.path.basename(f)} -> {calls}")
        for comp in cycles(graph):
            errors.append(f"{directory}: files call each other in a circle: "
                          + " <-> ".join(os.path.basename(c) for c in comp))
    for e in errors:
        print(e, file=sys.stderr)
    if not errors:
        print("layers: ok (modules: " + " <- ".join(
            ["core/base", "config", "dkim, queue", "delivery", "core/server"])
            + "; no file cycle in " + ", ".join(args.files) + ")")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
