"""Benchmark: the hook's fixed cost per measured step, by thread, steps sent one per message vs coalesced.

Run: .venv/bin/python test/python/bench_step_cost.py [--quick] [--steps N] [--rounds R] [--baseline REV] [--phases] [--exact] [configs]

--baseline REV: the hook as it was at git revision REV (`git archive` of python-shim/noisescope, imported beside
the working tree's as its own package; or REV is a directory holding such a package) runs every chosen configuration too, interleaved in the same rounds and
process, labelled "@REV" ("@dir"): a before/after comparison that the machine's load hits alike.

The 784-512-512-10 MLP at b=64 (one micro-batch per step, torch on 1 thread, the real sidecar in its own
process): its step is short enough (~2.5 ms) that the hook's fixed per-step cost, not the arithmetic, is
its overhead. Configurations, interleaved per round: no hook; norms every=1 and per-example every=10 and
every=1, with the sender as it is (steps coalesced: woken and sent STEPS_PER_MESSAGE at a time or every
FLUSH_S) and with each step woken and sent on its own ("one/msg": the sender before coalescing) or a 50 ms
flush interval. Per configuration:
the median over rounds of the wall-time ratio to no hook, and CPU per step in µs, medians over rounds, of the
training thread (time.thread_time), of the process's other threads (/proc/self/task/*/schedstat: grpcio's,
Python's and C's, and our link thread apart), and of the sidecar process (/proc/<pid>/stat, 10 ms ticks: summed
over all of a configuration's steps). CPU is the figure to trust on a shared machine; the load averages are printed.

--phases: where an isolated measured step's cost falls (every ≥ 4; at every=1, that of every step): the training thread's CPU in µs, medians, of
zero_grad+forward, backward and optimizer.step, at the step before a measured one (its optimizer.step arms the
hooks), the measured step, the one after (what the sender's wake-up and the measured step's cold caches leave) and
the others, each minus no hook's. Measured by engineer B2 (idle-ish, load ~1.5): norms every=10 adds ≈ +75 µs
before (arming ≈ 50 µs), +50/+290/+100 at the measured step (its backward-end read of .grad ≈ 230 µs; close 30,
queue put and wake 8, disarm 17), +50/+30/+20 after; every=1 adds +45/+270/+23 per step. Without the wake-up
(everything held until remove()) the measured step's optimizer.step and the next step cost ≈ 110 µs less: the
wake-up of grpcio's thread (≈ 290 µs of its CPU per message, ≈ 70 µs of that our step → message building) is
the part an isolated step pays alone; at every=1 up to 32 steps share it. One interleaved run, 7 rounds, load
~2.3 (`--phases --rounds 7 =10`): norms every=10 measured step's optimizer.step +90 µs and the next step +109 µs
with a 25 ms flush (every measured step wakes), +48 and +36 with 50 ms (every other one does); wall ratios within
the load's noise.

Engineer A (issue 5), against the tree with _meter/_sender/_wire at 2eeb2ea (`--baseline DIR --phases --rounds 5
=10`, load ~1.8): arming by setting our own dicts instead of register_hook/register_forward_pre_hook takes the step
before a measured one's optimizer.step from +65–73 to +25–33 µs; a fresh step's norms taken in the gradient hooks
(the same kernel on the tensor .grad adopts) the measured backward from +274–299 to +250–290 µs (norms) and
+348–366 to +318–349 µs (per-example); training thread per step, norms=10 2562 → 2529 µs, per-ex=10 2585 → 2534 µs
(no hook 2407); wall ratios within the load's noise (±2%). Timed in place (thread CPU, medians): arm 52 → 14 µs,
disarm 21 → 10 µs, an unmeasured step's hook 7.8 → 3.6 µs.
What is left of a measured step (~0.9 ms of training-thread CPU at every=10): the cold read of 2.65 MB of gradients
(~190 µs in the hooks, memory-bound: torch.dot on the just-made weight gradient runs at ~20 GB/s, 80 GB/s when in
L2, and the fixed kernel is what keeps the norms bitwise), and the sender's wake-up aftermath (~150 µs: the measured
step's optimizer.step and the next step; the request iterator thread spends ~230 µs CPU a message, grpcio's channel
thread ~55 µs, the sidecar ~0.5 ms). Tried and dropped: taking the step's norms in its hooks on large gradients
only (no gain: the gemm's output is not in cache either way); waking the sender from an optimizer step post-hook
instead of the pre-hook (no change); sleeping the request iterator until a put instead of to the flush interval's
end after a lone step (one wake fewer a message for it, none for the training thread; it changes which steps wait);
writing a norms step's StepBundle bytes directly instead of through protobuf objects (byte-exact, 7 vs 17 µs hot on
the request iterator's thread; no training-thread gain beyond the noise; reverted in 3c8052d, see there).

Engineer D (issue 5, norms every=1, `--phases --exact "norms=1"`): where a measured step's cost goes, from copies
of the package in one process with one piece patched out each, cycling blocks of 30 steps per configuration (30
cycles; training-thread CPU over no hook, medians of per-cycle differences; load 2-3; a one-off script, not kept): in full
+275 to +343 µs; the gradient reads patched out +119 to +179, so the reads are ~140 µs, all in the backward (perf
puts MKL's sdot at ~60 µs of it for the 2.65 MB; the rest is dispatch on cold caches: just after a backward the
first torch op costs ~18 µs and its .item() ~6, the next ones ~4 and 1: 3 dots and 4 vector_norms a step); the
step's close patched out too (nothing built or sent) +38 to +97; gradient hooks that return at once -8 to +67.
The same configuration moves by 30-40 µs between runs (each model's memory placement), more than any piece but
the reads: the C++→Python hook calls, the forward pre-hook and the sender's wake-ups (FLUSH_S 0.1 or 0.2 s, or
nothing submitted) stay within it. Timed in place (thread CPU, wrapped, so a few µs high): a large gradient's read
58-67 µs, the first hook's micro-batch bookkeeping 16, the backward-end callback 11, optimizer.step's hook 34 (the
close 23), the forward pre-hook 10. Tried and dropped: leaving a fresh step's 4 small gradients to the
backward end's read (one cold episode instead of four): backward +198 vs +193 µs, no gain: their hooks run beside
the large gradients' warm reads.
"""
from __future__ import annotations

import argparse
import importlib.util
import io
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import noisescope
import noisescope._sender as sender
from bench_overhead import QuietSidecar, load_line

# label → the watch's source (None: no hook) and every, and the sender's private switches: steps per message
# (1: each step woken and sent on its own, as before coalescing) and its flush interval
DEFAULT = {"per_message": sender.STEPS_PER_MESSAGE, "flush": sender.FLUSH_S}
CONFIGS: dict[str, dict[str, Any]] = {
    "no hook": {"source": None, "every": 1},
    "norms=1 one/msg": {"source": "accumulation", "every": 1, "per_message": 1},
    "norms=1 50 ms": {"source": "accumulation", "every": 1, "flush": 0.05},
    "norms=1": {"source": "accumulation", "every": 1},
    "norms=10 one/msg": {"source": "accumulation", "every": 10, "per_message": 1},
    "norms=10 50 ms": {"source": "accumulation", "every": 10, "flush": 0.05},
    "norms=10": {"source": "accumulation", "every": 10},
    "per-ex=10 one/msg": {"source": "per-example", "every": 10, "per_message": 1},
    "per-ex=10 50 ms": {"source": "per-example", "every": 10, "flush": 0.05},
    "per-ex=10": {"source": "per-example", "every": 10},
    "per-ex=1 one/msg": {"source": "per-example", "every": 1, "per_message": 1},
    "per-ex=1": {"source": "per-example", "every": 1},
}
TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parents[2]


def baseline_package(rev: str, into: Path) -> ModuleType:
    """python-shim/noisescope at git revision `rev` (or the package in directory `rev`), imported as the package
    `noisescope_baseline` (its generated v1 code, which git ignores, copied from the working tree's package)."""
    if (Path(rev) / "__init__.py").is_file():
        package = Path(rev)
    else:
        archive = subprocess.run(
            ["git", "archive", rev, "python-shim/noisescope"], cwd=ROOT, check=True, capture_output=True
        ).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(into, filter="data")
        package = into / "python-shim" / "noisescope"
    if not (package / "v1").exists():
        shutil.copytree(Path(noisescope.__file__).parent / "v1", package / "v1")
    spec = importlib.util.spec_from_file_location(
        "noisescope_baseline", package / "__init__.py", submodule_search_locations=[str(package)]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["noisescope_baseline"] = module
    spec.loader.exec_module(module)
    importlib.import_module("noisescope_baseline._sender")
    return module


def sidecar_cpu_s(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * TICK_S  # utime, stime


def thread_cpu_s() -> dict[str, float]:
    """CPU seconds so far of each of this process's threads, by native thread id and name."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            ns = int(open(f"/proc/self/task/{tid}/schedstat").read().split()[0])
            name = names.get(int(tid)) or open(f"/proc/self/task/{tid}/comm").read().strip()
        except OSError:
            continue  # ended meanwhile
        out[f"{tid}:{name}"] = ns / 1e9
    return out


def split_other(before: dict[str, float], after: dict[str, float]) -> tuple[float, float]:
    """CPU seconds between the two readings of our link thread and of every other thread but the main one."""
    link = grpc = 0.0
    for key, seconds in after.items():
        spent = seconds - before.get(key, 0.0)
        if key.endswith(":MainThread"):
            continue
        if key.endswith(":noisescope-link"):
            link += spent
        else:
            grpc += spent
    return link, grpc


def run(
    model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, steps: int,
    phases: list[tuple[int, int, int]] | None = None,
) -> None:
    if phases is None:
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        return
    clock = time.thread_time_ns
    for _ in range(steps):
        t0 = clock()
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        t1 = clock()
        loss.backward()
        t2 = clock()
        opt.step()
        phases.append((t1 - t0, clock() - t2, t2 - t1))  # forward, step, backward: reordered in print_phases


PHASE_NAMES = ("before", "measured", "after", "others")


def phase_of(index: int, every: int) -> str:
    """Steps are numbered from the warm-up's start: step 20 + index; step n is measured when n % every == 0."""
    position = (20 + index) % every
    return "measured" if position == 0 else "before" if position == every - 1 else "after" if position == 1 else "others"


def print_phases(chosen: dict[str, dict[str, Any]], phases: dict[str, list[tuple[int, int, int]]], steps: int) -> None:
    base = [statistics.median(t[j] for t in phases["no hook"]) for j in (0, 2, 1)]
    base_mean = statistics.mean(sum(t) for t in phases["no hook"])
    print("training thread CPU vs no hook, µs (zero_grad+forward / backward / optimizer.step), medians over steps;")
    print("mean: of a whole step, over every step (what the medians leave out: rare slow steps)")
    print(f"{'config':<24} " + " ".join(f"{name:>17}" for name in PHASE_NAMES) + f" {'mean':>6}")
    for label, config in chosen.items():
        if config["source"] is None or 1 < config["every"] < 4:
            continue
        cells = []
        for name in PHASE_NAMES:
            rows = [t for i, t in enumerate(phases[label]) if phase_of(i % steps, config["every"]) == name]
            if not rows:  # every=1: every step is a measured one
                cells.append("-")
                continue
            extra = [statistics.median(t[j] for t in rows) - b for j, b in zip((0, 2, 1), base)]
            cells.append("/".join(f"{e / 1e3:+.0f}" for e in extra))
        mean = statistics.mean(sum(t) for t in phases[label]) - base_mean
        print(f"{label:<24} " + " ".join(f"{c:>17}" for c in cells) + f" {mean / 1e3:>+6.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds of 100 steps (a smoke run)")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--phases", action="store_true", help="where an isolated measured step's cost falls (see above)")
    parser.add_argument("--baseline", metavar="REV", help="also run each configuration with the hook at git revision REV (or a package directory)")
    parser.add_argument("--exact", action="store_true", help="configs are whole labels, not substrings")
    parser.add_argument("configs", nargs="*", help="substrings of the configurations to run besides no hook (default: all)")
    args = parser.parse_args()
    picked = (lambda label: label in args.configs) if args.exact else (lambda label: any(s in label for s in args.configs))
    chosen = {label: c for label, c in CONFIGS.items() if c["source"] is None or not args.configs or picked(label)}
    packages: dict[str, ModuleType] = {"": noisescope}
    if args.baseline:
        tag = "dir" if Path(args.baseline).is_dir() else args.baseline
        packages[tag] = baseline_package(args.baseline, Path(tempfile.mkdtemp(prefix="noisescope-baseline-")))
        chosen = {
            **{label: {**c, "package": ""} for label, c in chosen.items()},
            **{f"{label} @{tag}": {**c, "package": tag} for label, c in chosen.items() if c["source"] is not None},
        }
    steps, rounds = (100, 3) if args.quick else (args.steps, args.rounds)
    logging.getLogger("noisescope").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 784, generator=g), torch.randint(0, 10, (64,), generator=g)
    wall: dict[str, list[float]] = {label: [] for label in chosen}
    train: dict[str, list[float]] = {label: [] for label in chosen}
    link: dict[str, list[float]] = {label: [] for label in chosen}
    grpc: dict[str, list[float]] = {label: [] for label in chosen}
    phases: dict[str, list[tuple[int, int, int]]] = {label: [] for label in chosen}
    side: dict[str, float] = {label: 0.0 for label in chosen}
    load = os.getloadavg()
    sidecar = QuietSidecar()
    try:
        for r in range(rounds):
            for label, config in chosen.items():
                config = {**DEFAULT, **config}
                package = packages[config.get("package", "")]
                package._sender.FLUSH_S = config["flush"]  # private switch
                torch.manual_seed(0)
                model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
                opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
                ns = None
                if config["source"] is not None:
                    ns = package.watch(
                        model, opt, address=sidecar.address, every=config["every"], source=config["source"], run=f"cost-{label}-{r}"
                    )
                    ns._sender.steps_per_message = config["per_message"]
                run(model, opt, x, y, 20)  # warm-up (connected by the end of it)
                time.sleep(0.1)
                c0 = thread_cpu_s()
                t0, w0, s0 = time.thread_time(), time.perf_counter(), sidecar_cpu_s(sidecar.proc.pid)
                run(model, opt, x, y, steps, phases[label] if args.phases else None)
                t1, w1 = time.thread_time(), time.perf_counter()
                c1 = thread_cpu_s()
                if ns is not None:
                    ns.remove()  # flushes: the sidecar's CPU for these steps is in before the next reading
                    time.sleep(0.05)
                s1 = sidecar_cpu_s(sidecar.proc.pid)
                wall[label].append((w1 - w0) / steps)
                train[label].append((t1 - t0) / steps)
                link_s, grpc_s = split_other(c0, c1)
                link[label].append(link_s / steps)
                grpc[label].append(grpc_s / steps)
                side[label] += s1 - s0
        base = statistics.median(wall["no hook"])
        print(f"MLP 784-512-512-10 b=64, torch {torch.__version__} on 1 thread, {rounds} rounds × {steps} steps; "
              f"no hook {base * 1e3:.2f} ms/step")
        print(f"{'config':<24} {'wall vs no hook':>16} {'train thread µs':>16} {'grpc threads µs':>16} {'link µs':>8} "
              f"{'sidecar µs':>11}")
        for label in chosen:
            ratio = statistics.median(h / b for h, b in zip(wall[label], wall["no hook"]))
            print(f"{label:<24} {(ratio - 1) * 100:>+15.1f}% {statistics.median(train[label]) * 1e6:>16.0f} "
                  f"{statistics.median(grpc[label]) * 1e6:>16.0f} {statistics.median(link[label]) * 1e6:>8.0f} "
                  f"{side[label] / (rounds * steps) * 1e6:>11.0f}")
        if args.phases:
            print_phases(chosen, phases, steps)
        print(load_line(load))
    finally:
        sidecar.stop()


if __name__ == "__main__":
    main()
