"""The hook against a real sidecar that requires a token and TLS (certificates made here with the openssl CLI).

With the right token and certificates the hook trains and the sidecar gets every step; with a wrong token the
training is untouched (parameters bitwise equal to an unwatched run) and the hook logs it once. Neither the
token nor the wrong one is ever written by the sidecar (stdout, stderr, run log) or the hook (its log).
"""
from __future__ import annotations

import logging
import subprocess
import time
from pathlib import Path

import pytest
import torch

import noisescope
from conftest import Sidecar
from test_hook_support import Loop, make_model, make_optimizer, parameters_of, wait_connected, wait_for_events

TOKEN = "hook-security-token-0123456789abcdef"
WRONG = "hook-wrong-token-fedcba9876543210"


def _openssl(cwd: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ca.pem; server.pem/.key for 127.0.0.1; client.pem/.key signed by the CA; other-ca.pem, which signed neither."""
    d = tmp_path_factory.mktemp("pki")
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca in ("ca", "other-ca"):
        _openssl(d, "req", "-x509", *key, "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "2", "-subj", f"/CN={ca}")
    leaves = {"server": "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
              "client": "extendedKeyUsage=clientAuth\n"}
    for name, extensions in leaves.items():
        _openssl(d, "req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        (d / f"{name}.ext").write_text(extensions)
        _openssl(d, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")
    (d / "token").write_text(TOKEN + "\n")
    return d


def _everything_written(sidecar: Sidecar, log_dir: Path, caplog: pytest.LogCaptureFixture) -> str:
    sidecar.stop()  # its last lines flushed
    assert sidecar.proc.stdout is not None and sidecar.proc.stderr is not None
    time.sleep(0.2)  # the reader threads drain the closed pipes
    logs = "".join(p.read_text(errors="replace") for p in log_dir.rglob("*") if p.is_file())
    printed = "\n".join(map(str, sidecar.events))
    hook = "\n".join(f"{r.getMessage()} {r.args!r}" for r in caplog.records)
    return "\n".join([printed, sidecar.stderr, logs, hook])


def test_the_hook_with_token_and_mutual_tls_trains_and_the_sidecar_gets_its_steps(
    pki: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="noisescope")
    log_dir = tmp_path / "runs"
    sidecar = Sidecar(
        "--token-file", str(pki / "token"), "--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key"),
        "--tls-client-ca", str(pki / "ca.pem"), "--log-dir", str(log_dir),
    )
    try:
        model, loop = make_model(), Loop(steps=4)
        optimizer = make_optimizer(model)
        ns = noisescope.watch(
            model, optimizer, address=sidecar.address, run="secure", token=TOKEN,
            tls_ca=pki / "ca.pem", tls_cert=str(pki / "client.pem"), tls_key=(pki / "client.key").read_bytes(),
        )
        assert TOKEN not in repr(ns) and TOKEN not in repr(ns._sender._credentials)
        wait_connected(ns)
        loop.run(model, optimizer)
        ns.remove()
        steps = wait_for_events(sidecar, "step", "secure", loop.steps)
        assert [s["step"] for s in steps] == list(range(loop.steps))
        assert all(not s["skipped"] for s in steps)
        assert ns.stats.dropped == 0
    finally:
        written = _everything_written(sidecar, log_dir, caplog)
    assert list(log_dir.glob("*.ndjson")), "the run log was written"
    assert TOKEN not in written


def test_a_wrong_token_never_disturbs_training_and_is_logged_once(
    pki: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="noisescope")
    log_dir = tmp_path / "runs"
    sidecar = Sidecar("--token-file", str(pki / "token"), "--log-dir", str(log_dir))
    try:
        loop = Loop(steps=3)
        reference = make_model()
        reference_optimizer = make_optimizer(reference)
        model = make_model()
        optimizer = make_optimizer(model)
        ns = noisescope.watch(model, optimizer, address=sidecar.address, run="intruder", token=WRONG)
        loop.run(model, optimizer)
        # The sidecar's refusal has arrived (and retries with back-off have followed) before more training.
        deadline = time.monotonic() + 15
        while not any("UNAUTHENTICATED" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, "no UNAUTHENTICATED warning within 15 s"
            time.sleep(0.05)
        time.sleep(1.6)  # back-off 0.5 s then 1 s: at least two more refused attempts
        loop.run(model, optimizer)
        ns.remove()
        loop.run(reference, reference_optimizer)
        loop.run(reference, reference_optimizer)
        for watched, unwatched in zip(parameters_of(model), parameters_of(reference)):
            assert torch.equal(watched, unwatched)
        assert not sidecar.of_type("step")
        assert not [e for e in sidecar.of_type("run") if e.get("run") == "intruder"]
    finally:
        written = _everything_written(sidecar, log_dir, caplog)
    warnings = [r.getMessage() for r in caplog.records if r.name == "noisescope" and r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "UNAUTHENTICATED" in warnings[0] and "watch(token=...) or NOISESCOPE_TOKEN" in warnings[0]
    assert WRONG not in written and TOKEN not in written


def _wait_for_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    deadline = time.monotonic() + 15
    while not caplog.records:
        assert time.monotonic() < deadline, "no warning within 15 s"
        time.sleep(0.05)


TLS_HANDSHAKE = "did not complete the TLS handshake"
PLAIN_TO_TLS = "If it serves TLS (--tls-cert), pass watch(tls_ca=...) or set NOISESCOPE_TLS_CA."


@pytest.mark.parametrize(
    ("client_ca", "server_extra", "hook_extra", "words"),
    [
        # A sidecar answered each time: the warning says what to check, not to start one.
        ("other-ca.pem", (), {}, TLS_HANDSHAKE),
        ("ca.pem", (), {"tls_server_name": "example.com"}, TLS_HANDSHAKE),
        ("ca.pem", ("--tls-client-ca", "ca.pem"), {}, TLS_HANDSHAKE),
        (None, (), {}, PLAIN_TO_TLS),
    ],
    ids=["wrong-ca", "wrong-server-name", "no-client-cert", "plain-text"],
)
def test_a_hook_a_tls_sidecar_refuses_says_so_once_and_what_to_check(
    pki: Path, caplog: pytest.LogCaptureFixture, client_ca: str | None, server_extra: tuple, hook_extra: dict, words: str
) -> None:
    caplog.set_level(logging.WARNING, logger="noisescope")
    extra = [str(pki / a) if a.endswith(".pem") else a for a in server_extra]
    sidecar = Sidecar("--token-file", str(pki / "token"), "--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key"), *extra)
    try:
        model = make_model()
        optimizer = make_optimizer(model)
        tls = {} if client_ca is None else {"tls_ca": pki / client_ca}
        ns = noisescope.watch(model, optimizer, address=sidecar.address, run="refused", token=TOKEN, **tls, **hook_extra)
        Loop(steps=2).run(model, optimizer)
        _wait_for_a_warning(caplog)
        ns.remove()
        assert not ns.stats.connected and not sidecar.of_type("step")
    finally:
        sidecar.stop()
    warnings = [r.getMessage() for r in caplog.records if r.name == "noisescope"]
    assert len(warnings) == 1 and words in warnings[0], warnings
    assert (words == TLS_HANDSHAKE) != ("Start one with `noisescope serve`" in warnings[0]), warnings


def test_a_hook_with_nothing_listening_is_told_to_start_a_sidecar(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="noisescope")
    sidecar = Sidecar()
    address = sidecar.address
    sidecar.stop()  # the port is free again: nothing answers there
    model = make_model()
    optimizer = make_optimizer(model)
    ns = noisescope.watch(model, optimizer, address=address, run="nowhere")
    Loop(steps=2).run(model, optimizer)
    _wait_for_a_warning(caplog)
    ns.remove()
    warnings = [r.getMessage() for r in caplog.records if r.name == "noisescope"]
    assert len(warnings) == 1 and "no sidecar reachable" in warnings[0] and "Start one with `noisescope serve`" in warnings[0]
    assert TLS_HANDSHAKE not in warnings[0] and PLAIN_TO_TLS not in warnings[0], warnings


def test_a_run_token_opens_its_run_only(pki: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="noisescope")
    sidecar = Sidecar("--run-token", f"alpha={pki / 'token'}")
    try:
        alpha, beta = make_model(), make_model()
        alpha_optimizer, beta_optimizer = make_optimizer(alpha), make_optimizer(beta)
        ns_alpha = noisescope.watch(alpha, alpha_optimizer, address=sidecar.address, run="alpha", token=TOKEN)
        ns_beta = noisescope.watch(beta, beta_optimizer, address=sidecar.address, run="beta", token=TOKEN)
        wait_connected(ns_alpha)
        Loop(steps=2).run(alpha, alpha_optimizer)
        Loop(steps=2).run(beta, beta_optimizer)
        ns_alpha.remove()
        assert [s["step"] for s in wait_for_events(sidecar, "step", "alpha", 2)] == [0, 1]
        _wait_for_a_warning(caplog)
        ns_beta.remove()
        assert not sidecar.of_type("step")[2:] and not [e for e in sidecar.of_type("run") if e.get("run") == "beta"]
    finally:
        sidecar.stop()
    warnings = [r.getMessage() for r in caplog.records if r.name == "noisescope"]
    assert len(warnings) == 1, warnings
    assert "PERMISSION_DENIED: this token opens only run 'alpha', not run 'beta'" in warnings[0]


@pytest.mark.parametrize(
    ("kwargs", "env", "error", "words"),
    [
        ({"token": "short"}, {}, ValueError, "token needs at least 16 characters, got 5"),
        ({"token": "has spaces in the token"}, {}, ValueError, "printable ASCII without spaces"),
        ({"token": 12345}, {}, TypeError, "token must be a str or None, got int"),
        ({}, {"NOISESCOPE_TOKEN": "tiny"}, ValueError, "$NOISESCOPE_TOKEN needs at least 16 characters"),
        ({"tls_cert": "client.pem"}, {}, ValueError, "tls_cert and tls_key go together"),
        ({"tls_ca": "absent.pem"}, {}, ValueError, "tls_ca absent.pem: cannot read it (No such file or directory)"),
        ({"tls_ca": "token"}, {}, ValueError, "tls_ca is not PEM"),
        ({}, {"NOISESCOPE_TLS_CA": "absent.pem"}, ValueError, "$NOISESCOPE_TLS_CA absent.pem: cannot read it"),
        ({"tls_key": 3}, {}, TypeError, "tls_key must be a path or PEM bytes, got int"),
    ],
)
def test_bad_credentials_raise_clear_errors_at_watch(
    pki: Path, monkeypatch: pytest.MonkeyPatch, kwargs: dict, env: dict, error: type, words: str
) -> None:
    monkeypatch.chdir(pki)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    model = make_model()
    with pytest.raises(error) as raised:
        noisescope.watch(model, make_optimizer(model), address="127.0.0.1:1", **kwargs)
    assert words in str(raised.value)
