"""A hook and a sidecar that speak different protocol versions, against the real sidecar.

No retry can succeed, so the hook logs one error that says which side to upgrade, stops attaching
(the sidecar sees one Hello, not one per back-off), and training goes on untouched. A run too short
to see the answer before it exits still logs it, when it arrives while remove()/exit flushes.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import noisescope
from conftest import ROOT, Sidecar
from noisescope.v1 import noisescope_pb2
from test_hook_support import Loop, make_model, make_optimizer, parameters_of


def _mismatch_errors(records: list[logging.LogRecord]) -> list[str]:
    return [r.getMessage() for r in records if r.name == "noisescope" and "protocol version" in r.getMessage()]


def test_a_newer_hook_logs_one_error_naming_the_sidecar_to_upgrade_and_stops_attaching(
    sidecar: Sidecar, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG, logger="noisescope")
    monkeypatch.setattr(noisescope_pb2, "PROTOCOL_VERSION_CURRENT", 2)  # a hook from a later release, as the wire sees it
    loop = Loop(steps=3)
    reference, model = make_model(), make_model()
    reference_optimizer, optimizer = make_optimizer(reference), make_optimizer(model)
    ns = noisescope.watch(model, optimizer, address=sidecar.address, run="newer-hook")
    loop.run(model, optimizer)
    deadline = time.monotonic() + 15
    while not _mismatch_errors(caplog.records):
        assert time.monotonic() < deadline, "no protocol-version error within 15 s"
        time.sleep(0.05)
    time.sleep(2.0)  # back-off would have retried at +0.5 s and +1.5 s
    loop.run(model, optimizer)
    stats = ns.stats
    ns.remove()
    loop.run(reference, reference_optimizer)
    loop.run(reference, reference_optimizer)
    for watched, unwatched in zip(parameters_of(model), parameters_of(reference)):
        assert torch.equal(watched, unwatched)

    errors = _mismatch_errors(caplog.records)
    assert len(errors) == 1, errors
    record = next(r for r in caplog.records if "protocol version" in r.getMessage())
    assert record.levelno == logging.ERROR
    assert "hook speaks protocol version 2, this sidecar speaks 1" in errors[0]
    assert "Upgrade the sidecar (npm install noisescope@latest" in errors[0]
    assert not [r for r in caplog.records if "retrying" in r.getMessage()], "no back-off loop"
    assert stats.dropped >= loop.steps  # the steps after the answer are dropped and counted, never sent
    assert not sidecar.of_type("step")
    # One Hello refused in all: the health counter the sidecar prints each second.
    time.sleep(1.2)
    assert sidecar.of_type("health")[-1]["refused"] == 1


SHORT_RUN = textwrap.dedent(
    """
    import logging, sys
    import torch
    from torch import nn
    import noisescope
    from noisescope.v1 import noisescope_pb2

    noisescope_pb2.PROTOCOL_VERSION_CURRENT = 0  # a hook from an older release
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(message)s")
    model = nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    noisescope.watch(model, optimizer, address=sys.argv[1], run="short")
    model(torch.randn(8, 4)).pow(2).mean().backward()
    optimizer.step()
    # no remove(): the interpreter's exit flushes (at most 1 s) and must still report the answer
    """
)


def test_a_run_that_exits_at_once_still_logs_the_mismatch_naming_the_hook_to_upgrade(sidecar: Sidecar) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "test" / "python")}
    done = subprocess.run([sys.executable, "-c", SHORT_RUN, sidecar.address], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    errors = [line for line in done.stderr.splitlines() if "protocol version" in line]
    assert len(errors) == 1, done.stderr
    assert errors[0].startswith("ERROR ")
    assert "hook speaks protocol version 0, this sidecar speaks 1" in errors[0]
    assert "Upgrade the Python hook on this machine (pip install -U noisescope)" in errors[0]
