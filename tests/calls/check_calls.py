#!/usr/bin/python3
"""tests/calls/check_calls.py - who calls whom between the files of a module.

    check_calls.py LIB.a [--allow a.c:b.c ...] [--edges]

Reads the symbol tables of the objects in a module's static library
(`nm` on build-san/libsluice_delivery.a, say): a file calls another when
one of its undefined symbols is defined by the other. Prints every
cross-file edge with the functions it uses (--edges), then the circles:
groups of files that call each other (the strongly connected components
of the call graph, Tarjan's algorithm). A circle that is not one of the
allowed pairs (--allow dest.c:session.c) makes the exit status 1.

Calls through function pointers (a callback a caller hands over) are not
links and are not counted: that is how a lower file reports to a higher
one without calling it. Static and inline functions have no symbol.

Run by ctest (calls.delivery) on the sanitizer build; by hand:
    /usr/bin/python3 tests/calls/check_calls.py build-san/libsluice_delivery.a \\
        --allow dest.c:session.c --edges
"""
import argparse
import os
import collections
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "arch"))
from layers import cycles  # noqa: E402


def objects(lib):
    """{member: (defined symbols, undefined symbols)} from `nm -A`."""
    out = subprocess.run(["nm", "-A", lib], check=True, capture_output=True, text=True).stdout
    defs = collections.defaultdict(set)
    undefs = collections.defaultdict(set)
    for line in out.splitlines():
        # "lib.a:dest.c.o:0000000000000000 T dlv_dest_kick" or "lib.a:dest.c.o:  U foo"
        head, _, rest = line.rpartition(":")
        member = head.rsplit(":", 1)[-1]
        parts = rest.split()
        if len(parts) == 2 and parts[0] == "U":
            undefs[member].add(parts[1])
        elif len(parts) == 3 and parts[1] in "TDBRCGSV":
            defs[member].add(parts[2])
    members = sorted(set(defs) | set(undefs))
    return {m: (defs[m], undefs[m]) for m in members}


def name(member):
    return member[:-2] if member.endswith(".o") else member


def edges(objs):
    """{(a, b): [symbols]}: a uses symbols b defines."""
    owner = {}
    for m, (d, _) in objs.items():
        for s in d:
            owner[s] = m
    out = collections.defaultdict(list)
    for m, (_, u) in objs.items():
        for s in sorted(u):
            o = owner.get(s)
            if o is not None and o != m:
                out[(name(m), name(o))].append(s)
    return out


def circles(nodes, graph):
    """Strongly connected components of more than one node: Tarjan's, the
    same function tests/arch/layers.py checks the other directories with."""
    full = {v: set(graph.get(v, ())) for v in nodes}
    return cycles(full)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("lib")
    ap.add_argument("--allow", action="append", default=[],
                    help="a pair of files that may call each other, a.c:b.c")
    ap.add_argument("--edges", action="store_true", help="print every cross-file call")
    a = ap.parse_args()
    objs = objects(a.lib)
    e = edges(objs)
    nodes = {name(m) for m in objs}
    graph = collections.defaultdict(set)
    for (x, y) in e:
        graph[x].add(y)
    if a.edges:
        for (x, y), syms in sorted(e.items()):
            shown = ", ".join(syms[:6]) + (", ... (%d)" % len(syms) if len(syms) > 6 else "")
            print("%-16s -> %-16s %s" % (x, y, shown))
    allowed = {tuple(sorted(p.split(":"))) for p in a.allow}
    bad = 0
    for comp in circles(nodes, graph):
        ok = len(comp) == 2 and tuple(comp) in allowed
        print("%s: %s" % ("allowed pair" if ok else "CIRCLE", " <-> ".join(comp)))
        bad += 0 if ok else 1
    print("%d files, %d cross-file edges, %d circle(s) not allowed" % (len(nodes), len(e), bad))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
