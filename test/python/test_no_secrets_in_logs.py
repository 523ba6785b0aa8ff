"""No gradient and no token is ever written to a log, and the hook can check the sidecar's certificate by another name.

Real dense-mode training, with a token, over TLS, through `noisescope serve --json` with a run log and the hook
logging at DEBUG. One layer's gradient is planted (every micro-batch's gradient of `planted` is exactly PLANTED),
and nothing the sidecar or the hook wrote may hold those values: not as decimals, not as the raw bytes of a dense
chunk, not base64'd or as a Buffer's byte list. The sidecar's certificate names only `sidecar.internal`, so the hook
reaches 127.0.0.1 only with tls_server_name= (or $NOISESCOPE_TLS_SERVER_NAME).
"""
from __future__ import annotations

import base64
import json
import logging
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import noisescope
from conftest import Sidecar
from test_hook_security import _openssl
from test_hook_support import make_model, micro_batch, wait_connected, wait_for_events

TOKEN = "no-secrets-token-0123456789abcdef"
SERVER_NAME = "sidecar.internal"
PLANTED = torch.tensor([3141.5926, -2718.2818, 1414.2135, -1732.0508, 2236.0679, -2645.7513, 1618.0339, -1234.5678])


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ca.pem, and server.pem/.key naming only DNS:sidecar.internal (not the address the hook dials)."""
    d = tmp_path_factory.mktemp("pki")
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(d, "req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=ca")
    _openssl(d, "req", *key, "-keyout", "server.key", "-out", "server.csr", "-subj", f"/CN={SERVER_NAME}")
    (d / "server.ext").write_text(f"subjectAltName=DNS:{SERVER_NAME}\nextendedKeyUsage=serverAuth\n")
    _openssl(d, "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.pem", "-days", "2", "-extfile", "server.ext")
    (d / "token").write_text(TOKEN + "\n")
    return d


def _tls_sidecar(pki: Path, *extra: str) -> Sidecar:
    return Sidecar("--token-file", str(pki / "token"), "--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key"), *extra)


def _leaks(written: bytes) -> list[str]:
    """Which forms of the planted gradient (micro-batch or accumulated) or the token appear in `written`."""
    text = written.decode("utf-8", errors="replace")
    found = [f"decimal {s}" for v in PLANTED.tolist() for s in (f"{v:.6g}", f"{2 * v:.6g}", repr(v)) if s in text]
    raw = PLANTED.numpy().tobytes()
    found += [f"raw bytes at {i}" for i in range(0, len(raw) - 7, 4) if raw[i : i + 8] in written]
    found += [f"base64 from byte {i}" for i in range(3) if base64.b64encode(raw[i:])[4:24] in written]
    found += [f"byte list '{sep}'" for sep in (",", ", ") if sep.join(map(str, raw[:8])).encode() in written]
    found += ["token" for _ in [0] if TOKEN.encode() in written]
    return found


def _everything_written(sidecar: Sidecar, log_dir: Path, caplog: pytest.LogCaptureFixture) -> bytes:
    sidecar.stop()  # its last lines flushed
    time.sleep(0.2)  # the reader threads drain the closed pipes
    logs = b"".join(p.read_bytes() for p in log_dir.rglob("*") if p.is_file())
    hook = "\n".join(f"{r.getMessage()} {r.args!r} {r.exc_text or ''}" for r in caplog.records)
    return b"\n".join([json.dumps(sidecar.events).encode(), sidecar.stderr.encode(), logs, hook.encode()])


class Planted(nn.Module):
    """A small MLP beside a parameter whose gradient is PLANTED in every micro-batch (its loss term is linear)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = make_model()
        self.planted = nn.Parameter(torch.zeros(len(PLANTED)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def loss(self, step: int, micro: int) -> torch.Tensor:
        x, y = micro_batch(step, micro, 8)
        return F.cross_entropy(self(x), y) / 2 + (self.planted * PLANTED).sum()


def test_the_detector_finds_each_form_of_the_planted_gradient() -> None:
    """The check below can fail: each form a leak could take is found."""
    raw = PLANTED.numpy().tobytes()
    assert _leaks(json.dumps(PLANTED.tolist()).encode())
    assert _leaks(json.dumps({"sum": (2 * PLANTED).tolist()}).encode())
    assert _leaks(b"chunk " + raw[4:20])
    assert _leaks(json.dumps({"data": base64.b64encode(raw[1:]).decode()}).encode())
    assert _leaks(json.dumps({"type": "Buffer", "data": list(raw)}).encode())
    assert _leaks(json.dumps({"type": "Buffer", "data": list(raw)}, separators=(",", ":")).encode())
    assert _leaks(f"authorization: Bearer {TOKEN}".encode())
    assert not _leaks(b"step 3 B_simple 123 |G|^2 4.5e+07")


def test_dense_training_with_a_token_over_tls_writes_no_gradient_and_no_token(
    pki: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="noisescope")
    log_dir = tmp_path / "runs"
    sidecar = _tls_sidecar(pki, "--log-dir", str(log_dir))
    try:
        model = Planted()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-6)
        ns = noisescope.watch(
            model, optimizer, address=sidecar.address, run="planted", mode="dense", token=TOKEN,
            tls_ca=pki / "ca.pem", tls_server_name=SERVER_NAME,
        )
        wait_connected(ns)  # the certificate's name matched by the override
        for step in range(3):
            for micro in range(2):
                model.loss(step, micro).backward()
            optimizer.step()
            optimizer.zero_grad()
        ns.remove()
        steps = wait_for_events(sidecar, "step", "planted", 3)
        assert [s["step"] for s in steps] == [0, 1, 2] and not any(s["skipped"] for s in steps)
        # The planted gradient reached the sidecar's reductions: each micro-batch adds PLANTED to .grad, which
        # accumulates 2 of them, so the full-batch gradient is 2·PLANTED and its layer's |G|² is 4·|PLANTED|².
        layers = wait_for_events(sidecar, "layers", "planted", 1)[0]["layers"]
        planted = next(layer for layer in layers if layer["name"] == "planted")
        assert planted["gradSqNorm"] == pytest.approx(4 * float(PLANTED.double().pow(2).sum()), rel=1e-4)
    finally:
        written = _everything_written(sidecar, log_dir, caplog)
    assert list(log_dir.glob("*.ndjson")), "the run log was written"
    assert [r for r in caplog.records if r.levelno == logging.DEBUG], "the hook logged at DEBUG"
    assert _leaks(written) == []


def test_the_certificate_name_is_checked_and_tls_server_name_or_its_variable_overrides_it(
    pki: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.WARNING, logger="noisescope")
    sidecar = _tls_sidecar(pki)
    try:
        for server_name in (None, "other.internal"):  # 127.0.0.1, then a name the certificate does not hold
            model = make_model()
            ns = noisescope.watch(model, torch.optim.SGD(model.parameters(), lr=0.1), address=sidecar.address, run="by-ip",
                                  token=TOKEN, tls_ca=pki / "ca.pem", tls_server_name=server_name)
            deadline = time.monotonic() + 15
            while not [r for r in caplog.records if "did not complete the TLS handshake" in r.getMessage()]:
                assert time.monotonic() < deadline, "the certificate's name was not checked"
                time.sleep(0.05)
            assert not ns.stats.connected
            ns.remove(timeout=0)
            caplog.clear()
        monkeypatch.setenv("NOISESCOPE_TLS_SERVER_NAME", SERVER_NAME)
        model = make_model()
        ns = noisescope.watch(model, torch.optim.SGD(model.parameters(), lr=0.1), address=sidecar.address, run="by-name",
                              token=TOKEN, tls_ca=pki / "ca.pem")
        wait_connected(ns)
        ns.remove()
    finally:
        sidecar.stop()


def test_a_bad_tls_server_name_is_a_clear_error_at_watch(pki: Path, free_address: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"tls_server_name is the name checked against the sidecar's TLS certificate, but TLS is off"):
        noisescope.watch(model, optimizer, address=free_address, tls_server_name=SERVER_NAME)
    with pytest.raises(ValueError, match=r"tls_server_name 'bad name' is not a host name"):
        noisescope.watch(model, optimizer, address=free_address, tls_ca=pki / "ca.pem", tls_server_name="bad name")
    with pytest.raises(TypeError, match=r"tls_server_name must be a str or None, got int"):
        noisescope.watch(model, optimizer, address=free_address, tls_ca=pki / "ca.pem", tls_server_name=5)  # type: ignore[arg-type]
    monkeypatch.setenv("NOISESCOPE_TLS_SERVER_NAME", SERVER_NAME)
    with pytest.raises(ValueError, match=r"\$NOISESCOPE_TLS_SERVER_NAME is the name checked .* give tls_ca \(or \$NOISESCOPE_TLS_CA\) too"):
        noisescope.watch(model, optimizer, address=free_address)
