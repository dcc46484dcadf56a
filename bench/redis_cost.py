#!/usr/bin/env python3
"""What a bench run costs Redis, phase by phase.

    bench/redis_cost.py --redis URL [--per N] [--out FILE] -- COMMAND...

Runs COMMAND (a `bench ... --queue redis --redis URL` run, say) while it reads `INFO` from
every primary of URL (`redis://host:port`, or `redis+cluster://h1:p1,h2:p2,...` naming the
nodes) every --interval seconds. The run's busy stretches (samples with more than --idle
commands a second), separated by quiet ones (a bench's hold), are its phases: for each, the
commands (Redis counts a script's calls as commands too; `evalsha` is the scripts), by name,
bytes in and out, the primaries' CPU seconds and the change of their memory, in all and per
--per units (connections, messages). Needs redis-cli.
"""

import argparse
import json
import subprocess
import sys
import threading
import time


def nodes_of(url):
    """The redis:// URL of each node URL names."""
    if url.startswith("redis+cluster://"):
        rest = url[len("redis+cluster://"):].rstrip("/")
        auth, _, hosts = rest.rpartition("@")
        auth = auth + "@" if auth else ""
        return ["redis://" + auth + h for h in hosts.split(",") if h]
    return [u.strip() for u in url.split(",") if u.strip()]


def info(node):
    """INFO of one node as a dict (None when it does not answer)."""
    try:
        out = subprocess.run(["redis-cli", "-u", node, "INFO", "all"], capture_output=True, text=True, timeout=5)
    except subprocess.TimeoutExpired:
        return None
    if out.returncode != 0 or "redis_version" not in out.stdout:
        return None
    fields = {}
    for line in out.stdout.splitlines():
        if ":" in line and not line.startswith("#"):
            k, v = line.split(":", 1)
            fields[k] = v.strip()
    return fields


def sample(nodes):
    """Totals over the primaries: top-level commands, every command by name, bytes, CPU."""
    total = {"commands": 0, "calls": {}, "in": 0, "out": 0, "cpu": 0.0, "memory": 0, "primaries": 0}
    for node in nodes:
        f = info(node)
        if not f or f.get("role") != "master":
            continue
        total["primaries"] += 1
        total["commands"] += int(f["total_commands_processed"])
        total["in"] += int(f["total_net_input_bytes"])
        total["out"] += int(f["total_net_output_bytes"])
        total["cpu"] += float(f["used_cpu_user"]) + float(f["used_cpu_sys"])
        total["memory"] += int(f["used_memory"])
        for k, v in f.items():
            if k.startswith("cmdstat_"):
                calls = int(dict(kv.split("=") for kv in v.split(","))["calls"])
                name = k[len("cmdstat_"):]
                total["calls"][name] = total["calls"].get(name, 0) + calls
    return total


def diff(a, b):
    names = set(a["calls"]) | set(b["calls"])
    calls = {n: b["calls"].get(n, 0) - a["calls"].get(n, 0) for n in names}
    return {
        "commands": b["commands"] - a["commands"],
        "calls": {n: c for n, c in sorted(calls.items(), key=lambda kv: -kv[1]) if c > 0},
        "in": b["in"] - a["in"],
        "out": b["out"] - a["out"],
        "cpu": b["cpu"] - a["cpu"],
        "memory": b["memory"] - a["memory"],
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--redis", required=True)
    p.add_argument("--interval", type=float, default=0.5)
    p.add_argument("--idle", type=float, default=200, help="commands a second below which a sample is quiet")
    p.add_argument("--per", type=float, default=0, help="units (connections, messages) to divide each phase by")
    p.add_argument("--out", help="write the phases as JSON here")
    p.add_argument("command", nargs=argparse.REMAINDER)
    args = p.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        p.error("no command to run (after --)")
    nodes = nodes_of(args.redis)
    samples = [(time.monotonic(), sample(nodes))]
    done = threading.Event()

    def poll():
        while not done.wait(args.interval):
            samples.append((time.monotonic(), sample(nodes)))

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    rc = subprocess.call(command)
    done.set()
    poller.join()
    samples.append((time.monotonic(), sample(nodes)))

    # Phases: runs of busy intervals, each from the sample before its first busy one.
    phases, start = [], None
    for i in range(1, len(samples)):
        (t0, a), (t1, b) = samples[i - 1], samples[i]
        busy = (b["commands"] - a["commands"]) / max(t1 - t0, 1e-9) > args.idle
        if busy and start is None:
            start = i - 1
        if not busy and start is not None:
            phases.append((start, i - 1))
            start = None
    if start is not None:
        phases.append((start, len(samples) - 1))
    report = []
    for n, (i, j) in enumerate(phases, 1):
        d = diff(samples[i][1], samples[j][1])
        d["seconds"] = round(samples[j][0] - samples[i][0], 2)
        d["from_s"] = round(samples[i][0] - samples[0][0], 2)
        report.append(d)
        print(
            f"phase {n}: from {d['from_s']} s, {d['seconds']} s: {d['commands']:,} commands, "
            f"{d['in']:,} B in, {d['out']:,} B out, {d['cpu']:.3f} s of Redis CPU, memory {d['memory']:+,} B"
        )
        if args.per:
            per = args.per
            print(
                f"  per unit ({per:g}): {d['commands'] / per:.2f} commands, {d['in'] / per:,.0f} B in, "
                f"{d['out'] / per:,.0f} B out, {d['cpu'] * 1e6 / per:,.1f} µs of Redis CPU, "
                f"memory {d['memory'] / per:+,.0f} B"
            )
        per = args.per or 1
        top = ", ".join(f"{k} {v / per:.2f}" for k, v in list(d["calls"].items())[:14])
        print(f"  every command{' per unit' if args.per else ''}, scripts' calls included: {top}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"command": command, "redis": args.redis, "per": args.per, "phases": report}, f, indent=1)
    sys.exit(rc)


if __name__ == "__main__":
    main()
