"""Shared pieces of the hook tests: a small model, seeded data and the training loop.

(Named test_hook_* to live with the hook's tests; it holds no tests itself.)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

import noisescope

IN, HIDDEN, CLASSES = 12, 24, 5


def make_model(seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(IN, HIDDEN),
        nn.Tanh(),
        nn.Linear(HIDDEN, HIDDEN),
        nn.LayerNorm(HIDDEN),
        nn.ReLU(),
        nn.Linear(HIDDEN, CLASSES),
    ).to(dtype)


def micro_batch(
    step: int, micro: int, size: int, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded inputs with labels from a fixed random teacher, so the loss has signal."""
    g = torch.Generator().manual_seed(1000 * step + micro)
    x = torch.randn(size, IN, generator=g, dtype=torch.float64)
    teacher = torch.randn(IN, CLASSES, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    y = (x @ teacher + 0.5 * torch.randn(size, CLASSES, generator=g, dtype=torch.float64)).argmax(1)
    return x.to(device=device, dtype=dtype), y.to(device)


@dataclass
class Loop:
    """Gradient accumulation over `sizes` micro-batches per step, clipping, then the optimizer step."""

    steps: int = 6
    sizes: Sequence[int] = (8, 8, 8, 8)
    clip: float | None = 0.5
    dtype: torch.dtype = torch.float32
    set_to_none: bool = True  # optimizer.zero_grad(set_to_none=...)
    device: str = "cpu"  # where the micro-batches go (the model must be there too)

    def run(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        before_clip: Callable[[int], None] | None = None,
        on_step_start: Callable[[int], None] | None = None,
        loss_scale: Callable[[int, int], float] | None = None,
    ) -> None:
        k = len(self.sizes)
        for step in range(self.steps):
            if on_step_start is not None:
                on_step_start(step)
            for j, size in enumerate(self.sizes):
                x, y = micro_batch(step, j, size, self.dtype, self.device)
                loss = F.cross_entropy(model(x), y) / k
                if loss_scale is not None:
                    loss = loss * loss_scale(step, j)
                loss.backward()
            if before_clip is not None:
                before_clip(step)
            if self.clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), self.clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=self.set_to_none)


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)


def exact_norms(reference: nn.Module, model: nn.Module, step: int, loop: Loop) -> tuple[list[list[float]], list[float]]:
    """Per-micro-batch and accumulated squared norms per parameter, by autograd.grad on an unwatched twin.

    `reference` is a copy made before watch(); it takes `model`'s current parameters first.
    """
    reference.load_state_dict(model.state_dict())
    params = [p for p in reference.parameters() if p.requires_grad]
    k = len(loop.sizes)
    grads: list[list[torch.Tensor]] = []
    for j, size in enumerate(loop.sizes):
        x, y = micro_batch(step, j, size, loop.dtype, loop.device)
        loss = F.cross_entropy(reference(x), y) / k
        grads.append([g.double() for g in torch.autograd.grad(loss, params)])
    micro = [[g.pow(2).sum().item() for g in row] for row in grads]
    accumulated = [sum(row[i] for row in grads).pow(2).sum().item() for i in range(len(params))]
    return micro, accumulated


def parameters_of(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def wait_connected(ns: object, connected: bool = True, timeout: float = 15) -> None:
    """Until the watch's stream is (or is no longer) welcomed by a sidecar."""
    import time

    deadline = time.monotonic() + timeout
    while ns.stats.connected != connected:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, f"still {'not ' if connected else ''}connected after {timeout}s"
        time.sleep(0.01)


def wait_for_events(sidecar: object, kind: str, run: str | None, count: int, timeout: float = 30) -> list[dict]:
    """The first `count` events of `kind` (for `run`, unless None) the sidecar printed, waiting for them."""
    seen: list[dict] = []

    def enough(event: dict) -> bool:
        if event["type"] == kind and (run is None or event.get("run") == run):
            seen.append(event)
        return len(seen) >= count

    sidecar.wait_for(enough, timeout=timeout)  # type: ignore[attr-defined]
    return seen


def watch_and_record(model: nn.Module, optimizer: torch.optim.Optimizer, address: str, **kwargs):
    """watch() with the sender's private tap collecting every finished StepRecord."""
    ns = noisescope.watch(model, optimizer, address=address, **kwargs)
    records: list = []
    ns._sender.tap = records.append
    return ns, records


def assert_close(actual: float, expected: float, rel: float, what: str) -> None:
    assert math.isclose(actual, expected, rel_tol=rel, abs_tol=1e-30), f"{what}: {actual} vs exact {expected}"


def advice(**fields) -> noisescope.Recommendation:
    """A Recommendation value as the sidecar would send it (for tests of what the hook does with one)."""
    values = dict(
        run="r",
        step=3,
        current_global_batch=32,
        recommended_global_batch=64,
        micro_batch=16,
        accumulation_steps=4,
        confidence=0.8,
        reason="knee",
        action="increase",
        sequence=1,
        noise_scale=70.0,
        interval=(50.0, 95.0),
        target_batch=70.0,
        objective="balanced",
        steps_factor=0.7,
        examples_factor=1.4,
        lr_hint=None,
        world_size=1,
        unix_ms=0.0,
    )
    values.update(fields)
    return noisescope.Recommendation(**values)


def assert_matches_exact(record, micro: list[list[float]], accumulated: list[float], rel: float = 1e-5) -> None:
    """A measured StepRecord against exact_norms' values, per micro-batch and accumulated, layer by layer."""
    assert len(record.micro_sq_norms) == len(micro), f"step {record.step}: {len(record.micro_sq_norms)} micro-batches"
    for j, row in enumerate(record.micro_sq_norms):
        for i, value in enumerate(row):
            assert_close(value, micro[j][i], rel, f"step {record.step} micro {j} layer {i}")
    for i, value in enumerate(record.accumulated_sq_norms):
        assert_close(value, accumulated[i], rel, f"step {record.step} accumulated layer {i}")
