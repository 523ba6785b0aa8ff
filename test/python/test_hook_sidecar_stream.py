"""What the real TypeScript sidecar receives from the hook: runs, steps, health, sessions, the final flush."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import noisescope
from conftest import Sidecar
from test_hook_support import Loop, make_model, make_optimizer, wait_connected, wait_for_events


@pytest.mark.parametrize("every", [1, 3])
def test_sidecar_reports_every_measured_step_of_an_accumulation_run(sidecar: Sidecar, every: int) -> None:
    loop = Loop(steps=7, sizes=(6, 6, 6, 6))
    model = make_model()
    optimizer = make_optimizer(model)
    run = f"hook-e2e-every-{every}"
    with noisescope.watch(model, optimizer, address=sidecar.address, run=run, every=every, dataset_size=4096) as ns:
        loop.run(model, optimizer)
    measured = list(range(0, loop.steps, every))
    steps = wait_for_events(sidecar, "step", run, len(measured))
    assert [e["step"] for e in steps] == measured
    for event in steps:
        assert event["microBatches"] == 4
        assert event["globalBatch"] == 4 * 6
        assert not event.get("skipped")
    stats = ns.stats
    assert (stats.dropped, stats.refusals) == (0, 0)
    assert stats.steps_measured == len(measured)


def test_the_run_its_steps_and_the_health_counts_match_what_the_hook_sent(sidecar: Sidecar) -> None:
    model = make_model()
    optimizer = make_optimizer(model)
    ns = noisescope.watch(
        model, optimizer, address=sidecar.address, run="wire", every=2, dataset_size=1797, source="accumulation"
    )
    wait_connected(ns)
    Loop(steps=3, sizes=(3, 5, 3, 5)).run(model, optimizer)
    ns.remove()

    ended = sidecar.wait_for(lambda e: e["type"] == "run" and e["run"] == "wire" and e["ended"])
    kinds = [type(m).__name__ for m in model.modules() if next(m.parameters(recurse=False), None) is not None]
    layers = [
        {"name": name, "numel": p.numel(), "kind": kind}
        for (name, p), kind in zip(model.named_parameters(), [k for k in kinds for _ in range(2)])
    ]
    assert ended["layers"] == layers
    assert ended["parameters"] == sum(p.numel() for p in model.parameters())
    assert (ended["worldSize"], ended["every"], ended["datasetSize"]) == (1, 2, 1797)
    assert (ended["mode"], ended["source"]) == ("norms", "accumulation")

    steps = wait_for_events(sidecar, "step", "wire", 2)
    assert [e["step"] for e in steps] == [0, 2]
    for event in steps:
        assert (event["microBatches"], event["globalBatch"], event["ranks"]) == (4, 16, 1)
        assert event["lr"] == pytest.approx(0.05) and event["loss"] is None and not event["skipped"]
        assert abs(event["unixMs"] - time.time() * 1000) < 60_000

    # Hello, 2 StepBundles (4 shards + StepEnd each; coalesced into 1 or 2 messages), Goodbye: every one received
    # and none refused.
    stats = ns.stats
    assert 1 + 1 + 1 <= stats.messages_sent <= 1 + 2 + 1
    health = sidecar.wait_for(lambda e: e["type"] == "health" and e["messages"] == stats.messages_sent)
    assert (health["stepsCompleted"], health["stepsIncomplete"], health["refused"], health["droppedByHooks"]) == (
        2,
        0,
        0,
        0,
    )
    assert health["bytes"] == 2 * 4 * len(layers) * 8  # the shards' squared norms, 8 bytes each


def test_two_watches_of_one_run_name_are_two_sessions_and_both_are_accepted(sidecar: Sidecar) -> None:
    stats = []
    for _ in range(2):  # e.g. a script run twice with the same run= name against one sidecar
        model = make_model()
        optimizer = make_optimizer(model)
        with noisescope.watch(model, optimizer, address=sidecar.address, run="again") as ns:
            Loop(steps=3).run(model, optimizer)
        stats.append(ns.stats)
    assert [(s.refusals, s.dropped) for s in stats] == [(0, 0), (0, 0)]  # remove() read every reply
    steps = wait_for_events(sidecar, "step", "again", 6)
    assert [e["step"] for e in steps] == [0, 1, 2, 0, 1, 2]
    assert all(not e["skipped"] for e in steps)
    health = sidecar.wait_for(lambda e: e["type"] == "health" and e["stepsCompleted"] == 6)
    assert (health["refused"], health["stepsIncomplete"]) == (0, 0)


def test_interpreter_exit_without_remove_flushes_and_returns_promptly(sidecar: Sidecar, tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(
        "import sys, torch, noisescope\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_hook_support import Loop, make_model, make_optimizer\n"
        "model = make_model(); optimizer = make_optimizer(model)\n"
        f"ns = noisescope.watch(model, optimizer, address={sidecar.address!r}, run='exit')\n"
        "Loop(steps=3).run(model, optimizer)\n"  # and exit without ns.remove()
    )
    started = time.monotonic()
    subprocess.run([sys.executable, str(script)], check=True, timeout=60)
    assert time.monotonic() - started < 30
    # Goodbye arrived (the run ended) after every step.
    sidecar.wait_for(lambda e: e["type"] == "run" and e["run"] == "exit" and e["ended"], timeout=5)
    assert [e["step"] for e in sidecar.of_type("step") if e["run"] == "exit"] == [0, 1, 2]


def test_hello_names_the_hook_and_a_session_per_watch(free_address: str) -> None:
    """Hello fields the sidecar keeps to itself, read off the message the sender sends on each (re)connection."""
    from noisescope import _wire
    from noisescope.v1 import noisescope_pb2 as pb

    first, second = make_model(), make_model()
    with noisescope.watch(first, make_optimizer(first), address=free_address, run="fields") as ns:
        with noisescope.watch(second, make_optimizer(second), address=free_address, run="fields") as other:
            hello = _wire.hello(ns._sender._info, dropped=3).hello
            assert hello.protocol_version == pb.PROTOCOL_VERSION_CURRENT
            assert (hello.mode, hello.source, hello.dropped) == (pb.MODE_NORMS, pb.SOURCE_PER_EXAMPLE, 3)
            assert hello.framework == f"torch {torch.__version__}" and hello.hook_version == noisescope.__version__
            assert len(hello.session) == 32
            assert _wire.hello(ns._sender._info, dropped=4).hello.session == hello.session  # a reconnection
            assert _wire.hello(other._sender._info, dropped=0).hello.session != hello.session  # another watch()
