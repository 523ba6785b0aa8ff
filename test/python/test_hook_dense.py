"""Dense mode end to end: the hook streams each micro-batch's gradient in chunks to the real sidecar,
whose Gram matrices must give what norms mode gives on the same training (plus gradient diversity).

Measured (this file, load_digits demo, 4 micro-batches of 16, seed 0, 8 steps): dense vs norms raw
figures (raw and smoothed |G|², tr(Σ), B_simple) differ by at most 8.3e-7 relative (norms take |Σh_j|²
from torch's fp32 `.grad`, the sidecar sums the Gram in float64); fp16 on the wire 6.6e-5, bf16 7.1e-4.
"""
from __future__ import annotations

import logging
import threading

import pytest
import torch

import noisescope
from conftest import Sidecar
from noisescope import demo
from noisescope._dense import dense_frame
from noisescope.v1 import noisescope_pb2 as pb
from test_hook_support import wait_connected, wait_for_events

STEPS = 8
ACCUMULATION = 4
SEED = 0


def assert_bitwise_like_unwatched(watched: torch.nn.Module) -> None:
    """Parameters bitwise those of the same demo training without noisescope."""
    data = demo.make_data()
    torch.manual_seed(SEED)
    plain = demo.make_model(seed=SEED)
    optimizer = demo.make_optimizer(plain)
    demo.train(plain, optimizer, data, steps=STEPS, accumulation=ACCUMULATION, seed=SEED)
    for (name, a), b in zip(watched.named_parameters(), plain.parameters(), strict=True):
        assert torch.equal(a, b), name


def train_watched(sidecar: Sidecar, run: str, *, wait_each_step: bool = True, **kwargs) -> tuple[torch.nn.Module, object]:
    """The demo's training under watch(); with wait_each_step each step's line is awaited before the next
    step (so no dense step is dropped for want of free buffers: equal runs are compared whole)."""
    data = demo.make_data()
    torch.manual_seed(SEED)
    model = demo.make_model(seed=SEED)
    optimizer = demo.make_optimizer(model)
    ns = noisescope.watch(model, optimizer, address=sidecar.address, run=run, dataset_size=len(data), **kwargs)
    wait_connected(ns)

    def after_step(step: int, _model: torch.nn.Module) -> None:
        if wait_each_step:
            sidecar.wait_for(lambda e: e["type"] == "step" and e.get("run") == run and e["step"] == step)

    demo.train(model, optimizer, data, steps=STEPS, accumulation=ACCUMULATION, seed=SEED, after_step=after_step)
    ns.remove()
    return model, ns


def step_lines(sidecar: Sidecar, run: str) -> list[dict]:
    return wait_for_events(sidecar, "step", run, STEPS)


def worst_relative(a: list[dict], b: list[dict]) -> float:
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        assert x["step"] == y["step"] and not x.get("skipped") and not y.get("skipped")
        for which in ("raw", "smoothed"):
            for field in ("gradSqNorm", "traceSigma", "bSimple"):
                worst = max(worst, abs(x[which][field] - y[which][field]) / abs(y[which][field]))
    return worst


def test_dense_and_norms_give_the_same_b_simple_on_the_same_training_with_diversity_on_dense_steps(
    sidecar: Sidecar,
) -> None:
    _, dense_ns = train_watched(sidecar, "dense", mode="dense")
    _, norms_ns = train_watched(sidecar, "norms", mode="norms", source="accumulation")
    dense, norms = step_lines(sidecar, "dense"), step_lines(sidecar, "norms")
    assert worst_relative(dense, norms) < 1e-5
    for d, n in zip(dense, norms):
        assert (d["microBatches"], d["globalBatch"]) == (n["microBatches"], n["globalBatch"]) == (4, 64)
        assert n.get("diversity") is None
        (diversity,) = d["diversity"]
        assert diversity["rank"] == 0 and diversity["microBatches"] == ACCUMULATION
        assert len(diversity["cosines"]) == ACCUMULATION**2
        assert all(diversity["cosines"][i * (ACCUMULATION + 1)] == pytest.approx(1.0) for i in range(ACCUMULATION))
    for ns in (dense_ns, norms_ns):
        assert (ns.stats.dropped, ns.stats.refusals) == (0, 0)
    ended = sidecar.wait_for(lambda e: e["type"] == "run" and e["run"] == "dense" and e["ended"])
    assert ended["mode"] == "dense"


@pytest.mark.parametrize(("dtype", "rel"), [("fp16", 1e-3), ("bf16", 2e-2)])
def test_half_precision_on_the_wire_stays_within_its_precision(sidecar: Sidecar, dtype: str, rel: float) -> None:
    _, half_ns = train_watched(sidecar, dtype, mode="dense", dtype=dtype)
    train_watched(sidecar, "fp32", mode="dense")
    assert (half_ns.stats.dropped, half_ns.stats.refusals) == (0, 0)
    assert worst_relative(step_lines(sidecar, dtype), step_lines(sidecar, "fp32")) < rel


def test_training_is_bitwise_unchanged_with_dense_mode_on(sidecar: Sidecar) -> None:
    watched, _ = train_watched(sidecar, "bitwise", mode="dense")
    assert_bitwise_like_unwatched(watched)


def test_steps_beyond_the_held_buffers_are_dropped_and_counted_without_blocking_training(sidecar: Sidecar) -> None:
    data = demo.make_data()
    model = demo.make_model(seed=SEED)
    optimizer = demo.make_optimizer(model)
    ns = noisescope.watch(model, optimizer, address=sidecar.address, run="full", mode="dense")
    wait_connected(ns)
    release = threading.Event()
    ns._sender.tap = lambda record: release.wait()  # the sender stalls, as behind a slow sidecar
    limit = ns._meter._dense.steps_held_limit
    extra = 3
    try:
        # Returns although the sender has not sent one step: the training thread never waits.
        demo.train(model, optimizer, data, steps=limit + extra, accumulation=ACCUMULATION, seed=SEED)
        assert ns.stats.dropped == extra
        assert ns.stats.steps_measured == limit + extra
    finally:
        release.set()
    steps = wait_for_events(sidecar, "step", "full", limit)
    assert [e["step"] for e in steps] == list(range(limit))
    # Buffers come back once sent: the next step is captured again.
    sidecar.wait_for(lambda e: e["type"] == "health" and e["stepsCompleted"] >= limit)
    demo.train(model, optimizer, data, steps=1, accumulation=ACCUMULATION, seed=SEED)
    ns.remove()
    last = sidecar.wait_for(lambda e: e["type"] == "step" and e.get("run") == "full" and e["step"] == limit + extra)
    assert last["diversity"] and ns.stats.dropped == extra


def test_auto_picks_dense_for_a_small_model_and_norms_for_a_large_one(
    sidecar: Sidecar, free_address: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="noisescope")
    _, ns = train_watched(sidecar, "auto-small", mode="auto")
    assert "mode auto chose dense" in caplog.text
    ended = sidecar.wait_for(lambda e: e["type"] == "run" and e["run"] == "auto-small" and e["ended"])
    assert ended["mode"] == "dense"
    assert step_lines(sidecar, "auto-small")[0]["diversity"]
    caplog.clear()
    large = torch.nn.Linear(1100, 1000)
    with noisescope.watch(large, torch.optim.SGD(large.parameters(), lr=0.1), address=free_address, mode="auto"):
        pass
    assert "mode auto chose norms: the model has 1101000 parameters" in caplog.text


def test_a_hand_framed_chunk_is_the_rank_message_protobuf_would_write() -> None:
    data = torch.arange(5, dtype=torch.float32)
    framed = dense_frame(300, 2, 16, 7, 4, 1 << 20, pb.DTYPE_F32, memoryview(data.numpy()).cast("B"))
    expected = pb.RankMessage(
        shard=pb.GradientShard(
            step=300, micro_batch=2, examples=16, layer=7, micro_batches=4,
            dense=pb.DenseChunk(offset=1 << 20, dtype=pb.DTYPE_F32, data=data.numpy().tobytes()),
        )
    )
    assert pb.RankMessage.FromString(framed) == expected
    assert framed == expected.SerializeToString()


class _Branchy(torch.nn.Module):
    """`extra` takes part only in odd micro-batches: its gradient there is zero in the others."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)  # non-contiguous gradients
        self.extra = torch.nn.Linear(4, 4)
        self.use_extra = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x.contiguous(memory_format=torch.channels_last)).mean((2, 3))
        return self.extra(h) if self.use_extra else h


def run_branchy(address: str, run: str, mode: str, poison_step: int | None = None) -> object:
    torch.manual_seed(SEED)
    model = _Branchy()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ns = noisescope.watch(model, optimizer, address=address, run=run, mode=mode, source="accumulation")
    wait_connected(ns)
    gen = torch.Generator().manual_seed(1)
    for step in range(4):
        optimizer.zero_grad(set_to_none=True)
        for j in range(ACCUMULATION):
            model.use_extra = j % 2 == 1
            x = torch.randn(5, 3, 6, 6, generator=gen)
            loss = model(x).square().mean()
            if step == poison_step and j == 2:
                loss = loss * float("inf")  # an overflow: non-finite gradients in this micro-batch
            loss.backward()
        if step == poison_step:
            optimizer.zero_grad(set_to_none=True)  # as GradScaler would, skip the update
        optimizer.step()
    ns.remove()
    return ns


def test_parameters_without_a_gradient_in_a_micro_batch_and_channels_last_gradients_match_norms(sidecar: Sidecar) -> None:
    dense_ns = run_branchy(sidecar.address, "branchy-dense", "dense")
    run_branchy(sidecar.address, "branchy-norms", "norms")
    dense = wait_for_events(sidecar, "step", "branchy-dense", 4)
    norms = wait_for_events(sidecar, "step", "branchy-norms", 4)
    assert worst_relative(dense, norms) < 1e-5
    assert (dense_ns.stats.dropped, dense_ns.stats.refusals) == (0, 0)


def test_a_non_finite_step_is_sent_as_skipped_without_its_chunks_and_later_steps_count(sidecar: Sidecar) -> None:
    ns = run_branchy(sidecar.address, "poisoned", "dense", poison_step=1)
    steps = wait_for_events(sidecar, "step", "poisoned", 4)
    assert [bool(e.get("skipped")) for e in steps] == [False, True, False, False]
    assert all(e["diversity"] for e in steps if not e.get("skipped"))
    assert (ns.stats.dropped, ns.stats.refusals) == (0, 0)
