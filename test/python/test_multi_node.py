"""Ranks on other hosts: a sidecar listening on every interface with a token, torchrun ranks dialling the
machine's own non-loopback address (as ranks on another node would), each step joined from both ranks.

A machine with no non-loopback IPv4 address cannot run this test: it fails saying so rather than skipping.
"""
from __future__ import annotations

import socket
from pathlib import Path

import pytest

from conftest import Sidecar
from ddp_support import K, MICRO, steps_of
from test_torchrun import results, torchrun

TOKEN = "multi-node-token-0123456789abcdef"
STEPS = 4


def non_loopback_ipv4() -> str:
    """The address this machine's traffic to other hosts leaves from (no packet is sent: UDP connect only routes)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.254", 9))  # TEST-NET-1: routed like any remote host, never answered
        except OSError as error:
            pytest.fail(f"this machine has no route off loopback ({error}): the multi-node test needs one")
        address = s.getsockname()[0]
    if address.startswith("127."):
        pytest.fail(f"the route off this machine leaves from {address}, a loopback address")
    return address


@pytest.fixture
def open_sidecar(tmp_path: Path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    s = Sidecar("--host", "0.0.0.0", "--token-file", str(token_file))
    try:
        yield s
    finally:
        s.stop()


def test_torchrun_ranks_reach_a_sidecar_off_loopback_with_the_token(
    open_sidecar: Sidecar, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = open_sidecar.address.rsplit(":", 1)[1]
    address = f"{non_loopback_ipv4()}:{port}"
    monkeypatch.setenv("NOISESCOPE_TOKEN", TOKEN)
    torchrun(2, address, tmp_path / "with-token", "--steps", str(STEPS))
    ranks = results(tmp_path / "with-token", 2)
    run = ranks[0]["run"]
    assert [(r["stats"].steps_measured, r["stats"].dropped) for r in ranks] == [(STEPS, 0)] * 2
    steps = steps_of(open_sidecar, run, STEPS)
    assert [e["step"] for e in steps] == list(range(STEPS))
    for e in steps:
        assert (e["source"], e["ranks"], e["globalBatch"], e["skipped"]) == ("data-parallel", 2, 2 * K * MICRO, False), e


def test_ranks_without_the_token_are_refused_and_train_on(
    open_sidecar: Sidecar, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = open_sidecar.address.rsplit(":", 1)[1]
    monkeypatch.delenv("NOISESCOPE_TOKEN", raising=False)
    torchrun(2, f"{non_loopback_ipv4()}:{port}", tmp_path / "no-token", "--steps", str(STEPS))
    ranks = results(tmp_path / "no-token", 2)
    # torchrun() asserted that training finished; nothing of it was accepted.
    assert all(not r["stats"].connected and r["stats"].dropped > 0 for r in ranks), [r["stats"] for r in ranks]
    assert not open_sidecar.of_type("step") and not open_sidecar.of_type("run")
