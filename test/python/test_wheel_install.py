"""The hook as a user installs it: a wheel built from python-shim, installed into a clean venv.

The wheel must carry its generated gRPC code (noisescope.v1) and train for real against the real
sidecar. To keep this fast the clean venv borrows torch, grpcio, protobuf and numpy from the project
environment through a .pth written *after* the wheel is installed; noisescope itself (and its
generated code) must come from the wheel, which the training script checks by path.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT, Sidecar

TRAIN = textwrap.dedent(
    """
    import json, logging, sys
    import torch
    from torch import nn
    import noisescope
    from noisescope.v1 import noisescope_pb2, noisescope_pb2_grpc

    address, run, steps, protocol = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    if protocol != noisescope_pb2.PROTOCOL_VERSION_CURRENT:
        noisescope_pb2.PROTOCOL_VERSION_CURRENT = protocol  # a hook from another release, as the wire sees it
    warnings = []
    handler = logging.Handler()
    handler.emit = lambda record: warnings.append(record.getMessage())
    logging.getLogger("noisescope").addHandler(handler)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    data = torch.randn(64, 8)
    target = (data[:, 0] > 0).long()
    with noisescope.watch(model, optimizer, address=address, run=run):
        for step in range(steps):
            for micro in range(2):  # two micro-batches of 8: the accumulation source, global batch 16
                rows = slice(16 * (step % 4) + 8 * micro, 16 * (step % 4) + 8 * micro + 8)
                loss = nn.functional.cross_entropy(model(data[rows]), target[rows]) / 2
                loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if protocol != 1 and warnings:
                break  # the sidecar's answer arrived: the job trains on regardless
    print(json.dumps({
        "noisescope": noisescope.__file__,
        "generated": [noisescope_pb2.__file__, noisescope_pb2_grpc.__file__],
        "warnings": warnings,
        "finite": all(bool(torch.isfinite(p).all()) for p in model.parameters()),
    }))
    """
)


def _site_dirs(python: str) -> list[str]:
    """Where the project environment finds its packages (its venv, or Debian's dist-packages on the fallback)."""
    out = subprocess.run(
        [python, "-c", "import json, sys; print(json.dumps([p for p in sys.path if p.endswith(('site-packages', 'dist-packages'))]))"],
        capture_output=True, text=True, check=True,
    )
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def clean_venv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the built wheel, the clean venv's python) with the wheel installed in it."""
    base = tmp_path_factory.mktemp("wheel")
    wheels = base / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT / "python-shim"), "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "-q", "-w", str(wheels)],
        check=True, cwd=base, env={**os.environ, "PIP_RETRIES": "0"},
    )
    (wheel,) = wheels.glob("noisescope-*.whl")
    interpreter = subprocess.run([sys.executable, "-c", "import sys; print(sys._base_executable)"], capture_output=True, text=True, check=True).stdout.strip()
    venv = base / "venv"
    subprocess.run([interpreter, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--disable-pip-version-check", "-q", str(wheel)],
        check=True, cwd=base, env={**os.environ, "PIP_RETRIES": "0"},
    )
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True, check=True).stdout.strip())
    # Only now: pip above saw a venv with nothing in it, so the wheel was installed there and nowhere else.
    (site / "zz_project_dependencies.pth").write_text("\n".join(_site_dirs(sys.executable)) + "\n")
    return wheel, python


def _train(python: Path, sidecar: Sidecar, run: str, steps: int, protocol: int = 1) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NOISESCOPE_ADDRESS")}
    done = subprocess.run(
        [str(python), "-c", TRAIN, sidecar.address, run, str(steps), str(protocol)],
        capture_output=True, text=True, timeout=120, cwd=python.parent, env=env,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_wheel_carries_the_generated_grpc_code_and_its_runtime_floors(clean_venv: tuple[Path, Path]) -> None:
    wheel, _ = clean_venv
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        metadata = next(zf.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    for module in ("noisescope/__init__.py", "noisescope/py.typed", "noisescope/v1/__init__.py", "noisescope/v1/noisescope_pb2.py",
                   "noisescope/v1/noisescope_pb2.pyi", "noisescope/v1/noisescope_pb2_grpc.py", "noisescope/integrations/__init__.py"):
        assert module in names, f"{module} missing from {wheel.name}"
    requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert "torch>=2.0" in requires
    assert any(r.startswith("grpcio>=1.") for r in requires), requires
    assert any(r.startswith("protobuf>=") for r in requires), requires


def test_the_installed_wheel_trains_against_the_real_sidecar(clean_venv: tuple[Path, Path], sidecar: Sidecar) -> None:
    _, python = clean_venv
    venv = python.parent.parent
    result = _train(python, sidecar, "from-wheel", steps=6)
    assert Path(result["noisescope"]).is_relative_to(venv), result["noisescope"]
    assert all(Path(p).is_relative_to(venv) for p in result["generated"]), result["generated"]
    assert result["finite"] and result["warnings"] == []
    sidecar.wait_for(lambda e: e["type"] == "run" and e["run"] == "from-wheel" and e["ended"], timeout=10)
    steps = [e for e in sidecar.of_type("step") if e["run"] == "from-wheel"]
    assert [s["step"] for s in steps] == list(range(6))
    assert {(s["globalBatch"], s["microBatches"], s["source"]) for s in steps} == {(16, 2, "accumulation")}


def test_a_hook_speaking_another_protocol_version_is_told_why_and_training_goes_on(clean_venv: tuple[Path, Path], sidecar: Sidecar) -> None:
    _, python = clean_venv
    result = _train(python, sidecar, "old-hook", steps=3000, protocol=2)  # until the answer arrives
    assert result["finite"]
    mismatch = [w for w in result["warnings"] if "protocol version" in w]
    assert len(mismatch) == 1, result["warnings"]  # once, not once per retry
    assert "FAILED_PRECONDITION: hook speaks protocol version 2, this sidecar speaks 1: upgrade the older side" in mismatch[0]
    assert not [e for e in sidecar.of_type("step") if e["run"] == "old-hook"]
    assert not [e for e in sidecar.of_type("run") if e["run"] == "old-hook"]


def test_building_without_grpcio_tools_says_what_to_install(tmp_path: Path) -> None:
    """README's offline install (`pip install --no-build-isolation ./python-shim`) into an environment without grpcio-tools."""
    interpreter = subprocess.run([sys.executable, "-c", "import sys; print(sys._base_executable)"], capture_output=True, text=True, check=True).stdout.strip()
    venv = tmp_path / "venv"
    subprocess.run([interpreter, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    if subprocess.run([python, "-c", "import setuptools"], capture_output=True).returncode != 0:
        pytest.skip("this Python's venvs come without setuptools (3.12+): pip then names setuptools itself")
    assert subprocess.run([python, "-c", "import grpc_tools"], capture_output=True).returncode != 0
    done = subprocess.run(
        [python, "-m", "pip", "install", "--no-deps", "--no-index", "--no-build-isolation", "--disable-pip-version-check", str(ROOT / "python-shim")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env={**os.environ, "PIP_RETRIES": "0"},
    )
    assert done.returncode != 0
    assert "building the noisescope hook needs grpcio-tools" in done.stdout + done.stderr, done.stdout + done.stderr
    assert "`pip install grpcio-tools` into this environment first" in done.stdout + done.stderr
