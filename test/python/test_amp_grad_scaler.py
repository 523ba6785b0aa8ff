"""AMP: a GradScaler's loss scale divided out of every measured norm, the steps it skips sent as skipped.

bfloat16 autocast on the CPU with torch.amp.GradScaler("cpu"). Scaling by a power of two is exact,
so the measured norms must equal the unscaled loss's exact gradient norms to float32 rounding,
whatever the scale (it doubles after every good step here and halves after the skipped one).
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import noisescope
from conftest import Sidecar
from test_hook_support import assert_close, make_model, make_optimizer, micro_batch, parameters_of, wait_for_events

SIZES = (8, 8)
STEPS = 5
POISONED = 2  # this step's loss is inf: the scaler skips it
CLIP = 1e-3  # clipping bites hard, after the hook measured


def _loss(model: nn.Module, step: int, j: int) -> torch.Tensor:
    x, y = micro_batch(step, j, SIZES[j])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    loss = F.cross_entropy(out.float(), y) / len(SIZES)
    return loss * math.inf if step == POISONED else loss


def _train(
    model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, on_step_start=None, clip: float = CLIP
) -> list[float]:
    """The AMP recipe: scale, backward per micro-batch, unscale_, clip, scaler.step, update; the scales used."""
    scales = []
    for step in range(STEPS):
        if on_step_start is not None:
            on_step_start(step)
        scales.append(scaler.get_scale())
        for j in range(len(SIZES)):
            scaler.scale(_loss(model, step, j)).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
    return scales


def _exact(reference: nn.Module, model: nn.Module, step: int) -> tuple[list[list[float]], list[float]]:
    """Unscaled per-micro-batch and accumulated squared norms, by autograd.grad on an unwatched twin."""
    reference.load_state_dict(model.state_dict())
    params = list(reference.parameters())
    grads = [[g.double() for g in torch.autograd.grad(_loss(reference, step, j), params)] for j in range(len(SIZES))]
    micro = [[g.pow(2).sum().item() for g in row] for row in grads]
    accumulated = [sum(row[i] for row in grads).pow(2).sum().item() for i in range(len(params))]
    return micro, accumulated


def _scaler() -> torch.amp.GradScaler:
    return torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=1)


def test_the_loss_scale_is_divided_out_and_a_skipped_step_is_sent_as_skipped(sidecar: Sidecar) -> None:
    model = make_model()
    reference = copy.deepcopy(model)
    optimizer = make_optimizer(model)
    scaler = _scaler()
    exact: dict[int, tuple[list[list[float]], list[float]]] = {}
    ns = noisescope.watch(model, optimizer, address=sidecar.address, run="amp", scaler=scaler, source="accumulation")
    records: list = []
    ns._sender.tap = records.append
    scales = _train(model, optimizer, scaler, on_step_start=lambda step: exact.setdefault(step, _exact(reference, model, step)))
    ns.remove()

    assert "step" not in vars(scaler)  # the wrapper is gone: the scaler is as it was
    assert scales == [2.0**12, 2.0**13, 2.0**14, 2.0**13, 2.0**14]  # grew, backed off at the skip, grew
    assert [r.step for r in records] == list(range(STEPS))
    for record in records:
        if record.step == POISONED:
            assert record.skipped and "GradScaler skipped" in record.skip_reason
            continue
        assert not record.skipped, record.skip_reason
        micro, accumulated = exact[record.step]
        for j, row in enumerate(record.micro_sq_norms):
            for i, value in enumerate(row):
                assert_close(value, micro[j][i], 1e-5, f"step {record.step} micro {j} layer {i}")
        for i, value in enumerate(record.accumulated_sq_norms):
            assert_close(value, accumulated[i], 1e-5, f"step {record.step} accumulated layer {i}")
        assert sum(record.accumulated_sq_norms) > 100 * CLIP**2  # measured before clipping

    events = wait_for_events(sidecar, "step", "amp", STEPS)
    assert [e["step"] for e in events] == list(range(STEPS))
    assert [bool(e.get("skipped")) for e in events] == [s == POISONED for s in range(STEPS)]
    assert all(e["globalBatch"] == sum(SIZES) for e in events if not e.get("skipped"))


def test_training_under_a_watched_grad_scaler_is_bitwise_identical(free_address: str) -> None:
    plain = make_model()
    plain_scales = _train(plain, make_optimizer(plain), _scaler())
    watched = make_model()
    optimizer = make_optimizer(watched)
    scaler = _scaler()
    with noisescope.watch(watched, optimizer, address=free_address, scaler=scaler) as ns:
        records: list = []
        ns._sender.tap = records.append  # measure although no sidecar listens (else the hooks stay off)
        watched_scales = _train(watched, optimizer, scaler)
        assert ns.stats.steps_seen == STEPS  # the skipped step counted too
    assert len(records) == STEPS  # every step really measured
    assert watched_scales == plain_scales
    for a, b in zip(parameters_of(plain), parameters_of(watched)):
        assert torch.equal(a, b)


def test_a_scaler_that_is_not_one_is_refused_by_name(free_address: str) -> None:
    model = make_model()
    with pytest.raises(TypeError, match="scaler must be a torch.amp.GradScaler or None, got dict"):
        noisescope.watch(model, make_optimizer(model), address=free_address, scaler={})


@pytest.mark.parametrize("mode", ["dense", "sketch"])
def test_dense_and_sketch_gradients_leave_with_the_scale_divided_out(sidecar: Sidecar, mode: str) -> None:
    """The sidecar's own figures from the gradients it was sent equal those from the (exact) norms mode."""
    for run, kwargs in ((mode, {"mode": mode}), (f"norms-{mode}", {"source": "accumulation"})):
        model = make_model()
        optimizer = make_optimizer(model)
        scaler = _scaler()
        with noisescope.watch(model, optimizer, address=sidecar.address, run=run, scaler=scaler, **kwargs):
            # One step at a time: no dense step is dropped for want of free buffers.
            _train(model, optimizer, scaler, on_step_start=lambda step: step == 0 or wait_for_events(sidecar, "step", run, step))
    ours, exact = wait_for_events(sidecar, "step", mode, STEPS), wait_for_events(sidecar, "step", f"norms-{mode}", STEPS)
    for a, b in zip(ours, exact, strict=True):
        assert a["step"] == b["step"] and bool(a.get("skipped")) == bool(b.get("skipped")) == (a["step"] == POISONED)
        if a["step"] != POISONED:
            for field in ("gradSqNorm", "traceSigma"):
                assert_close(a["raw"][field], b["raw"][field], 1e-5, f"{mode} step {a['step']} {field}")


def test_clipping_to_a_tiny_norm_leaves_the_sidecars_statistics_unchanged(sidecar: Sidecar) -> None:
    """With lr 0 the parameters cannot tell the runs apart; only .grad is clipped (to 1e-9) in one of them."""
    runs = {"clipped": 1e-9, "unclipped": math.inf}
    for run, clip in runs.items():
        model = make_model()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        scaler = _scaler()
        with noisescope.watch(model, optimizer, address=sidecar.address, run=run, scaler=scaler):
            _train(model, optimizer, scaler, clip=clip)
    clipped, unclipped = (wait_for_events(sidecar, "step", run, STEPS) for run in runs)
    for a, b in zip(clipped, unclipped, strict=True):
        assert a["step"] == b["step"] and bool(a.get("skipped")) == bool(b.get("skipped"))
        if not a.get("skipped"):
            assert a["raw"] == b["raw"] and a["raw"]["traceSigma"] > 1e-6  # and not the clipped .grad's
