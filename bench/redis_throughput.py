#!/usr/bin/env python3
"""How many connection opens one Redis primary takes: control's open steps under redis-benchmark.

    bench/redis_throughput.py --node HOST:PORT [--requests N] [--clients C] [--pipeline P]

Loads the scripts of a connection's open (control/src/state/redis.rs: the gateway's record,
the user's and the room's steps, the check after) into the Redis at --node, then runs each
under redis-benchmark against that one node: keys of one gateway, user and room (their hash
tags chosen in slots the node serves when it is a Redis Cluster primary), a new connection id
per call. Prints each step's calls per second and, as they run one after the other on one
thread, the opens per second the node sustains: 1 / (sum of 1/rate). A node of a cluster also
feeds its replicas, as in production. Needs redis-cli and redis-benchmark.
"""

import argparse
import csv
import re
import subprocess
import sys
from pathlib import Path

STATE = Path(__file__).resolve().parent.parent / "control/src/state/redis.rs"


def scripts():
    """The Lua of each state script, as control sends it (`RECORD_LIB` before the gateway's)."""
    consts = dict(re.findall(r'const ([A-Z_]+): &str = r"(.*?)";\n', STATE.read_text(), re.S))
    if "RECORD_LIB" not in consts:
        sys.exit(f"no scripts found in {STATE}")
    lib = consts["RECORD_LIB"]
    uses_lib = re.compile(r"\b(live|parse|record)\(")
    return {name: (lib + body if uses_lib.search(body) else body) for name, body in consts.items() if name != "RECORD_LIB"}


def cli(node, *args):
    host, port = node.rsplit(":", 1)
    out = subprocess.run(["redis-cli", "-h", host, "-p", port, *args], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"redis-cli {' '.join(args[:2])}: {out.stderr.strip()}")
    return out.stdout.strip()


def tag_for(node, kind):
    """A hash tag `{kind:N}` whose slot this node serves (any, on a node outside a cluster)."""
    nodes = cli(node, "CLUSTER", "NODES") if "cluster_enabled:1" in cli(node, "INFO", "cluster") else ""
    if not nodes:
        return f"{{{kind}:1}}"
    mine = next(line for line in nodes.splitlines() if "myself" in line)
    ranges = []
    for part in mine.split()[8:]:
        lo, _, hi = part.partition("-")
        if lo.isdigit():
            ranges.append((int(lo), int(hi or lo)))
    for n in range(1, 100000):
        slot = int(cli(node, "CLUSTER", "KEYSLOT", f"{{{kind}:{n}}}"))
        if any(lo <= slot <= hi for lo, hi in ranges):
            return f"{{{kind}:{n}}}"
    sys.exit(f"no {kind} tag found for {node}")


def bench(node, requests, clients, pipeline, sha, keys, args):
    host, port = node.rsplit(":", 1)
    cmd = ["redis-benchmark", "-h", host, "-p", port, "-n", str(requests), "-c", str(clients), "-P", str(pipeline),
           "-r", "1000000000", "--csv", "EVALSHA", sha, str(len(keys)), *keys, *args]
    out = subprocess.run(cmd, capture_output=True, text=True)
    rows = [row for row in csv.reader(out.stdout.splitlines()) if row and row[0].startswith("EVALSHA")]
    if out.returncode != 0 or not rows:
        sys.exit(f"redis-benchmark: {out.stderr.strip() or out.stdout.strip()}")
    return float(rows[-1][1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--node", required=True, help="HOST:PORT of one Redis (a cluster's primary)")
    p.add_argument("--prefix", default="gochat-throughput")
    p.add_argument("--requests", type=int, default=200000)
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--pipeline", type=int, default=16)
    a = p.parse_args()
    lua = scripts()
    sha = {name: cli(a.node, "SCRIPT", "LOAD", body) for name, body in lua.items()}
    g, u, r = (f"{a.prefix}:{tag_for(a.node, k)}" for k in ("g", "u", "r"))
    conn = "__rand_int__"
    steps = [
        ("GW_OPEN", [f"{g}:conns", f"{g}:closed:{conn}"], [conn, "7,5,0"]),
        ("USER_OPEN", [f"{u}:conns", f"{u}:routes", f"{u}:acking"], ["gw", conn, "0", "1", "0"]),
        ("ROOM_ENTER", [f"{r}:conns", f"{r}:members", f"{r}:names", f"{r}:gws"], ["gw", conn, conn, "name"]),
        ("GW_CHECK", [f"{g}:conns"], [conn, ""]),
    ]
    total = 0.0
    for name, keys, args in steps:
        rate = bench(a.node, a.requests, a.clients, a.pipeline, sha[name], keys, args)
        total += 1 / rate
        print(f"{name:<11} {rate:>12,.0f} calls/s")
    print(f"opens/s on this node (the four steps in turn): {1 / total:,.0f}")
    for key in (f"{g}:conns", f"{u}:conns", f"{u}:routes", f"{u}:acking", f"{r}:conns", f"{r}:members", f"{r}:names", f"{r}:gws"):
        cli(a.node, "DEL", key)


if __name__ == "__main__":
    main()
