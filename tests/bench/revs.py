"""One ollana server hop, this tree against an earlier revision, measured in the same run.

    python -m tests.bench.revs [--baseline REV] [--rounds 6] [--requests 20000] [--connections 16]

The baseline's source is exported with ``git archive`` into the run's temp dir and run with the
same Python and packages as this tree. One static nginx upstream (``GET /api/version``, as the
bench's "small" part) serves both. Rounds alternate between the two revisions, each starting its
own ``ollana serve --mode server --trust open --no-discovery`` on 127.0.0.1, warming it with
2,000 requests, then timing ``hey -n N -c C``. Two figures per round: requests per second, and the
server process's CPU time per request (utime + stime from /proc; steadier than throughput on a
shared machine). The report gives each revision's median and the ratios this / baseline, and the
median and range of the per-round ratios (each round runs both, so a slow minute hits both).

Noise control: the first revision to run alternates round by round (ABBA), and with two or more
CPUs (``--pin``, the default) the ollana under test gets one CPU to itself while hey, nginx and
this script share the others, so the figure is ollana's cost rather than the scheduler's mood.

Everything binds 127.0.0.1; every process is stopped by its process group at the end.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

if __package__ in (None, ""):  # run as a script: make `tests.bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench.procs import HOST, REPO, Procs, cpu_seconds, free_port, http_get

# The commit before issue 9's hardening (connection guard, metrics) landed.
DEFAULT_BASELINE: Final = "5abd19d"
HEY: Final = shutil.which("hey") or "/usr/bin/hey"


@dataclass
class Figures:
    rps: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)
    failed: int = 0


def pin_cpus() -> int | None:
    """Keep this script and what it starts (hey, nginx) off one CPU, kept for the ollana under
    test; that CPU's number, or None when there is only one CPU or no taskset."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2 or shutil.which("taskset") is None:
        return None
    os.sched_setaffinity(0, cpus[1:])
    return cpus[0]


def export(rev: str, into: Path) -> Path:
    tree = into / f"rev-{rev}"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def one_round(procs: Procs, name: str, tree: Path, upstream: int, args: argparse.Namespace) -> tuple[float, float, int]:
    port = free_port()
    state = procs.workdir / f"{name}-state-{port}"
    state.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("OLLAMA_HOST", "OLLANA_HOME")}
    env["PYTHONPATH"] = str(tree)  # with cwd=tree, that tree's `ollana` is the one imported
    pin = ["taskset", "-c", str(args.server_cpu)] if args.server_cpu is not None else []
    proc = procs.start(name, [
        *pin, sys.executable, "-m", "ollana", "serve", "--mode", "server", "--ollama", f"http://{HOST}:{upstream}",
        "--trust", "open", "--no-discovery", "--listen", f"{HOST}:{port}", "--state-dir", str(state),
        "--log-format", "json",
    ], env, cwd=tree)
    url = f"http://{HOST}:{port}/api/version"
    try:
        procs.wait_until(proc, f"GET {url}", lambda: http_get(url)[0] == 200)
        subprocess.run([HEY, "-n", "2000", "-c", str(args.connections), url], capture_output=True, check=True)
        before = cpu_seconds(proc.pid)
        out = subprocess.run([HEY, "-n", str(args.requests), "-c", str(args.connections), url],
                             capture_output=True, text=True, check=True).stdout
        used = cpu_seconds(proc.pid) - before
    finally:
        procs.stop(proc)
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if found is None:
        raise SystemExit(f"hey printed no throughput:\n{out}")
    codes = {code: int(n) for code, n in re.findall(r"\[(\d+)\]\s+(\d+) responses", out)}
    answered = sum(codes.values())
    sent = args.requests // args.connections * args.connections  # hey sends a multiple of -c
    return float(found.group(1)), used / max(answered, 1) * 1e6, sent - codes.get("200", 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default=DEFAULT_BASELINE, help="git revision to compare with")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True,
                        help="give the ollana under test a CPU of its own (needs 2+ CPUs and taskset)")
    args = parser.parse_args()
    args.server_cpu = pin_cpus() if args.pin else None
    print("command: python -m tests.bench.revs " + " ".join(sys.argv[1:]), flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="ollana-revs-"))
    procs = Procs(workdir)
    results = {"baseline": Figures(), "this tree": Figures()}
    try:
        trees = {"baseline": export(args.baseline, workdir), "this tree": REPO}
        upstream = free_port()
        procs.nginx("nginx-static-upstream", upstream)
        for i in range(args.rounds):
            order = list(trees.items()) if i % 2 == 0 else list(reversed(trees.items()))
            for name, tree in order:
                rps, cpu_us, failed = one_round(procs, name.replace(" ", "-"), tree, upstream, args)
                fig = results[name]
                fig.rps.append(rps)
                fig.cpu_us.append(cpu_us)
                fig.failed += failed
                print(f"round {i + 1}/{args.rounds} {name:10s} {rps:8.0f} req/s {cpu_us:7.1f} µs CPU/request"
                      f"{f'  ({failed} failed)' if failed else ''}", flush=True)
    finally:
        procs.close()
        shutil.rmtree(workdir, ignore_errors=True)
    base, this = results["baseline"], results["this tree"]
    pinned = f", ollana pinned to CPU {args.server_cpu}" if args.server_cpu is not None else ", not pinned"
    print(f"\nollana 1 hop, hey -n {args.requests} -c {args.connections}, {args.rounds} rounds in turn{pinned} (median)")
    print("| revision | req/s | server CPU µs/request | failed |\n|---|---|---|---|")
    for name, fig in results.items():
        label = f"{name} ({args.baseline})" if name == "baseline" else name
        print(f"| {label} | {statistics.median(fig.rps):.0f} | {statistics.median(fig.cpu_us):.1f} | {fig.failed} |")
    print(f"| this / baseline | {statistics.median(this.rps) / statistics.median(base.rps):.3f} x "
          f"| {statistics.median(this.cpu_us) / statistics.median(base.cpu_us):.3f} x | |")
    rps_r = [t / b for t, b in zip(this.rps, base.rps, strict=True)]
    cpu_r = [t / b for t, b in zip(this.cpu_us, base.cpu_us, strict=True)]
    print(f"| per-round ratios: median (min-max) | {statistics.median(rps_r):.3f} x ({min(rps_r):.2f}-{max(rps_r):.2f}) "
          f"| {statistics.median(cpu_r):.3f} x ({min(cpu_r):.2f}-{max(cpu_r):.2f}) | |")
    return 1 if base.failed or this.failed else 0


if __name__ == "__main__":
    sys.exit(main())
