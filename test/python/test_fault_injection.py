"""Fault injection: the sidecar SIGKILLed at a random step of real training, then restarted.

Twenty short load_digits runs share one port and one log directory. In each, the sidecar is
SIGKILLed at a seeded random moment (after its first logged step) and a new one started on the same port while training goes on;
the hook reconnects and the new sidecar resumes the run from its log. Every run must finish
with parameters bitwise identical to the same run without noisescope, and its log must replay
(`noisescope replay --json`) with every step once, in order, the step count continuing.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
import torch
import torch.nn.functional as F

import noisescope
from conftest import CLI, ROOT, Sidecar
from noisescope import _sender
from noisescope.demo import make_data, make_model, make_optimizer

RUNS = int(os.environ.get("NOISESCOPE_FAULT_RUNS", "20"))  # more for a longer soak: NOISESCOPE_FAULT_RUNS=200
MICRO, ACCUMULATION = 8, 4
MIN_STEPS = 24
STEP_PAUSE_S = 0.01  # so the restart happens while the run is still training
STEPS_AFTER_RESUME = 4  # steps the new sidecar must see before a run may finish
MAX_STEPS = 1000  # a run that never reaches the new sidecar fails instead of hanging


DATA = make_data()


def train(seed: int, keep_going: Callable[[int], bool], watch: Callable | None = None, on_step: Callable[[int], None] | None = None):
    """The same seeded run, hooked (watch(model, optimizer) → handle) or not: the model and its step count."""
    model = make_model(seed, hidden=32)
    optimizer = make_optimizer(model)
    handle = watch(model, optimizer) if watch is not None else None
    order = torch.Generator().manual_seed(seed)
    step = 0
    while keep_going(step):
        if on_step is not None:
            on_step(step)
        optimizer.zero_grad()
        for _ in range(ACCUMULATION):
            idx = torch.randint(0, len(DATA), (MICRO,), generator=order)
            x, y = DATA[idx]
            (F.cross_entropy(model(x), y) / ACCUMULATION).backward()
        optimizer.step()
        step += 1
    if handle is not None:
        handle.remove()
    return model, step


def logged_steps(path: Path) -> list[int]:
    """Step numbers in a log as the crash left it (a torn line is skipped, as the reader does)."""
    steps = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("type") == "step":
            steps.append(record["stats"]["step"])
    return steps


@pytest.fixture
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # The hook's own reconnect loop with a shorter first wait, so twenty restarts fit the CI budget;
    # one training thread leaves the other core to the sidecar (hooked and reference runs alike).
    monkeypatch.setattr(_sender, "BACKOFF_FIRST_S", 0.1)
    monkeypatch.setattr(_sender, "BACKOFF_MAX_S", 0.4)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_sidecar_killed_at_random_points_of_training(tmp_path: Path, fast_backoff: None) -> None:
    log_dir = tmp_path / "runs"
    rng = random.Random(8)
    # Norms mode reduces no dense shards: a forced backend skips the start-up probe (about 1 s a start).
    serve = ("--log-dir", str(log_dir), "--backend", "js-unrolled")
    sidecars = [Sidecar(*serve)]
    port = sidecars[0].address.rsplit(":", 1)[1]
    summary = []
    try:
        for i in range(RUNS):
            run = f"fault-{i}"
            log = log_dir / f"{run}.ndjson"
            kill_after_s = rng.uniform(0.0, 0.25)
            killed: dict = {}

            def kill_and_restart() -> None:
                old = sidecars[-1]
                # At least one step is in the log (so there is something to resume), then a random moment.
                deadline = time.monotonic() + 30
                while not logged_steps(log) and time.monotonic() < deadline:
                    time.sleep(0.005)
                time.sleep(kill_after_s)
                os.kill(old.proc.pid, signal.SIGKILL)
                old.proc.wait()
                killed["logged"] = logged_steps(log)
                # The new sidecar starts while training goes on, as an operator's restart would.
                sidecars.append(Sidecar("--port", port, *serve))

            def on_step(step: int) -> None:
                if step == 0:
                    killed["restart"] = threading.Thread(target=kill_and_restart)
                    killed["restart"].start()

            def keep_going(step: int) -> bool:
                if step < MIN_STEPS:
                    return True
                if killed["restart"].is_alive() or step >= MAX_STEPS:
                    return step < MAX_STEPS
                return sum(1 for e in sidecars[-1].of_type("step") if e["run"] == run) < STEPS_AFTER_RESUME

            def paced(step: int) -> bool:
                time.sleep(STEP_PAUSE_S)
                return keep_going(step)

            model, steps = train(i, paced, lambda m, o: noisescope.watch(m, o, address=f"127.0.0.1:{port}", run=run), on_step)
            reference, _ = train(i, lambda step: step < steps)
            assert all(torch.equal(a, b) for a, b in zip(model.parameters(), reference.parameters())), f"{run}: parameters differ"

            new = sidecars[-1]
            before = killed["logged"]
            assert before == sorted(set(before)) and before, f"{run}: the log before the crash: {before}"
            new.wait_for(lambda e: e["type"] == "run" and e["run"] == run and e["ended"])
            assert f"resumed run {run} from {log} at step {before[-1]}" in new.stderr
            printed = [e["step"] for e in new.of_type("step") if e["run"] == run]
            assert printed and printed[0] > before[-1], f"{run}: the new sidecar estimated step {printed[0]} again"

            replay = subprocess.run(["node", str(CLI), "replay", str(log), "--json"], capture_output=True, text=True, cwd=ROOT, timeout=60)
            assert replay.returncode == 0, replay.stderr
            events = [json.loads(line) for line in replay.stdout.splitlines()]
            logged = [e for e in events if e["type"] == "step"]
            numbers = [s["step"] for s in logged]
            assert numbers == sorted(set(numbers)), f"{run}: steps duplicated or out of order: {numbers}"
            assert set(before) <= set(numbers) and numbers[-1] < steps and set(printed) <= set(numbers)
            measured = [s["stepsMeasured"] for s in logged]
            assert measured == sorted(set(measured)), f"{run}: the step count went back: {measured}"
            assert "logged after" not in replay.stderr
            assert [e["ended"] for e in events if e["type"] == "run"][-1]
            summary.append((run, kill_after_s, before[-1], steps, "torn" in replay.stderr))
    finally:
        for sidecar in sidecars:
            sidecar.stop()
    print("\n".join(f"{run}: killed {k:.3f} s after its first logged step (log up to step {last}), {n} steps, torn line: {torn}" for run, k, last, n, torn in summary))
