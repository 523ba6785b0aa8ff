"""The hook's measurement in norms mode, checked against exact per-micro-batch gradients."""
from __future__ import annotations

import copy
import logging
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

import noisescope
from test_hook_support import (
    Loop,
    assert_close,
    assert_matches_exact,
    exact_norms,
    make_model,
    make_optimizer,
    micro_batch,
    parameters_of,
    watch_and_record,
)


@pytest.mark.parametrize(
    "make_opt",
    [make_optimizer, lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2)],
    ids=["sgd-momentum", "adamw"],
)
def test_training_with_the_hook_is_bitwise_identical(free_address: str, make_opt) -> None:
    loop = Loop(steps=6, sizes=(8, 8, 8, 8), clip=0.5)
    plain = make_model()
    loop.run(plain, make_opt(plain))

    watched = make_model()
    optimizer = make_opt(watched)
    ns, records = watch_and_record(watched, optimizer, free_address, every=1)
    loop.run(watched, optimizer)
    ns.remove()

    assert len(records) == loop.steps  # it really measured every step
    for a, b in zip(parameters_of(plain), parameters_of(watched)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype, rel", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_norms_equal_exact_values_per_micro_batch_and_accumulated_before_clipping(
    free_address: str, dtype: torch.dtype, rel: float
) -> None:
    loop = Loop(steps=4, sizes=(6, 9, 6, 5), clip=0.05, dtype=dtype)
    model = make_model(dtype=dtype)
    reference = copy.deepcopy(model)  # an unwatched twin for autograd.grad
    optimizer = make_optimizer(model)
    ns, records = watch_and_record(model, optimizer, free_address)
    exact: dict[int, tuple[list[list[float]], list[float]]] = {}
    grad_before_clip: dict[int, list[float]] = {}

    def on_step_start(step: int) -> None:
        exact[step] = exact_norms(reference, model, step, loop)

    def before_clip(step: int) -> None:
        grad_before_clip[step] = [p.grad.double().pow(2).sum().item() for p in model.parameters()]

    loop.run(model, optimizer, before_clip=before_clip, on_step_start=on_step_start)
    ns.remove()

    assert [r.step for r in records] == list(range(loop.steps))
    names = [name for name, _ in model.named_parameters()]
    for record in records:
        micro, accumulated = exact[record.step]
        assert not record.skipped
        assert record.micro_examples == tuple(loop.sizes)
        assert len(record.micro_sq_norms) == len(loop.sizes)
        for j, row in enumerate(record.micro_sq_norms):
            for i, value in enumerate(row):
                assert_close(value, micro[j][i], rel, f"step {record.step} micro {j} {names[i]}")
        for i, value in enumerate(record.accumulated_sq_norms):
            assert_close(value, accumulated[i], rel, f"step {record.step} accumulated {names[i]}")
            # the pre-clip .grad itself, and clipping (0.05) did bite after we measured
            assert_close(value, grad_before_clip[record.step][i], rel, f"step {record.step} .grad {names[i]}")
        assert sum(record.accumulated_sq_norms) > 0.05**2
        assert record.lr == pytest.approx(0.05)


def test_every_n_measures_steps_whose_index_is_a_multiple_of_n(free_address: str) -> None:
    loop = Loop(steps=7, sizes=(4, 4))
    model = make_model()
    ns, records = watch_and_record(model, make_optimizer(model), free_address, every=3)
    hooked: list[bool] = []
    loop.run(
        model,
        ns._meter._optimizer,
        on_step_start=lambda step: hooked.append(any(p._backward_hooks for p in model.parameters())),
    )
    stats = ns.stats
    ns.remove()
    assert [r.step for r in records] == [0, 3, 6]
    assert (stats.steps_seen, stats.steps_measured) == (7, 3)
    # unmeasured steps run without any gradient or forward hook of ours
    assert hooked == [True, False, False, True, False, False, True]


def test_examples_per_micro_batch_pair_with_grad_enabled_forwards(free_address: str, caplog) -> None:
    model = make_model()
    optimizer = make_optimizer(model)
    ns, records = watch_and_record(model, optimizer, free_address)
    sizes = (3, 5, 7, 4)
    for step in range(2):
        for j, size in enumerate(sizes):
            with torch.no_grad():
                model(torch.randn(11, 12))  # evaluation forwards are not micro-batches
            x, y = micro_batch(step, j, size)
            F.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()
    ns.remove()
    assert [r.micro_examples for r in records] == [sizes, sizes]
    assert "forward passes" not in caplog.text


class _KeywordInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = make_model()

    def forward(self, *, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.net(features["x"])


def test_examples_come_from_keyword_and_nested_tensor_arguments(free_address: str) -> None:
    model = _KeywordInput()
    optimizer = make_optimizer(model)
    ns, records = watch_and_record(model, optimizer, free_address)
    for j, size in enumerate((2, 9)):
        x, y = micro_batch(0, j, size)
        F.cross_entropy(model(features={"x": x}), y).backward()
    optimizer.step()
    ns.remove()
    assert records[0].micro_examples == (2, 9)


def test_more_forwards_than_backwards_warns_once_and_pairs_the_last_ones(free_address: str, caplog) -> None:
    model = make_model()
    optimizer = make_optimizer(model)
    ns, records = watch_and_record(model, optimizer, free_address)
    caplog.set_level(logging.WARNING, logger="noisescope")
    for step in range(2):
        model(torch.randn(50, 12))  # an evaluation forward with gradients on: not a micro-batch
        for j, size in enumerate((6, 7)):
            x, y = micro_batch(step, j, size)
            F.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()
    ns.remove()
    assert [r.micro_examples for r in records] == [(6, 7), (6, 7)]
    warnings = [r.getMessage() for r in caplog.records if "forward passes" in r.getMessage()]
    assert len(warnings) == 1 and "3 forward passes" in warnings[0] and "2 backward passes" in warnings[0]


def test_non_finite_gradients_skip_the_step_naming_the_first_bad_layer(free_address: str) -> None:
    loop = Loop(steps=2, sizes=(4, 4, 4))
    model = make_model()
    ns, records = watch_and_record(model, make_optimizer(model), free_address)
    loop.run(model, ns._meter._optimizer, loss_scale=lambda step, j: math.inf if (step, j) == (1, 2) else 1.0)
    ns.remove()
    first, second = records
    assert not first.skipped
    assert second.skipped and "'0.weight'" in second.skip_reason
    assert second.micro_sq_norms == () and second.accumulated_sq_norms == ()


def test_one_micro_batch_on_one_process_without_per_example_warns_once_and_still_measures(
    free_address: str, caplog
) -> None:
    loop = Loop(steps=3, sizes=(8,))
    model = make_model()
    ns, records = watch_and_record(model, make_optimizer(model), free_address, source="accumulation")
    with caplog.at_level(logging.WARNING, logger="noisescope"):
        loop.run(model, ns._meter._optimizer)
    ns.remove()
    warnings = [r for r in caplog.records if "no noise-scale estimate" in r.getMessage()]
    assert len(warnings) == 1
    assert "gradient accumulation" in warnings[0].getMessage().lower()
    assert "DDP" in warnings[0].getMessage()
    assert [r.step for r in records] == [0, 1, 2]


class _Checkpointed(nn.Module):
    """Reentrant activation checkpointing: each block's backward is a nested backward pass."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.use_checkpoint = True
        self.a = nn.Sequential(nn.Linear(12, 24), nn.Tanh())
        self.b = nn.Sequential(nn.Linear(24, 24), nn.Tanh())
        self.head = nn.Linear(24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.use_checkpoint:  # the unwatched twin: autograd.grad cannot see through reentrancy
            return self.head(self.b(self.a(x)))
        h = checkpoint(self.a, x.requires_grad_(), use_reentrant=True)
        h = checkpoint(self.b, h, use_reentrant=True)
        return self.head(h)


def test_reentrant_checkpointing_keeps_one_micro_batch_per_backward(free_address: str) -> None:
    loop = Loop(steps=2, sizes=(5, 6, 7))
    model = _Checkpointed()
    reference = copy.deepcopy(model)
    reference.use_checkpoint = False
    optimizer = make_optimizer(model)
    ns, records = watch_and_record(model, optimizer, free_address)
    exact = exact_norms(reference, model, 0, loop)
    loop.run(model, optimizer)
    ns.remove()
    micro, accumulated = exact
    record = records[0]
    assert record.micro_examples == (5, 6, 7)
    assert len(record.micro_sq_norms) == 3
    assert_matches_exact(record, micro, accumulated)


@pytest.mark.parametrize("sizes", [(8,), (5, 7, 6)], ids=["one-micro-batch", "three-micro-batches"])
@pytest.mark.parametrize("set_to_none", [True, False], ids=["grad-none", "grad-zeroed"])
def test_accumulated_norms_are_exact_whether_grad_starts_none_or_zeroed(
    free_address: str, sizes: tuple[int, ...], set_to_none: bool
) -> None:
    loop = Loop(steps=3, sizes=sizes, clip=0.05, set_to_none=set_to_none)
    model = make_model()
    reference = copy.deepcopy(model)
    optimizer = make_optimizer(model)
    ns, records = watch_and_record(model, optimizer, free_address)
    exact: dict[int, tuple[list[list[float]], list[float]]] = {}
    loop.run(model, optimizer, on_step_start=lambda step: exact.__setitem__(step, exact_norms(reference, model, step, loop)))
    ns.remove()
    assert [r.step for r in records] == [0, 1, 2]
    for record in records:
        micro, accumulated = exact[record.step]
        assert_matches_exact(record, micro, accumulated)


def test_a_step_with_fewer_micro_batches_than_the_last_is_skipped_and_the_others_stay_exact(
    free_address: str, caplog
) -> None:
    counts = [4, 4, 2, 5, 3, 3]  # micro-batches per step; clipping bites after each
    model = make_model()
    reference = copy.deepcopy(model)
    optimizer = make_optimizer(model)
    ns, records = watch_and_record(model, optimizer, free_address)
    exact = []
    with caplog.at_level(logging.INFO, logger="noisescope"):
        for k in counts:
            loop = Loop(steps=1, sizes=(6,) * k, clip=0.05)
            exact.append(exact_norms(reference, model, 0, loop))
            loop.run(model, optimizer)
    ns.remove()
    assert [r.step for r in records] == list(range(len(counts)))
    skipped = [r.step for r in records if r.skipped]
    assert skipped == [2, 4]  # 2 after 4, 3 after 5: the accumulated norm was not taken
    assert "2 micro-batches where the previous measured step had 4" in records[2].skip_reason
    assert records[2].micro_examples == (6, 6)
    assert len([r for r in caplog.records if "sent as skipped" in r.getMessage()]) == 1
    for record in records:
        if record.skipped:
            continue
        micro, accumulated = exact[record.step]
        assert len(record.micro_sq_norms) == counts[record.step]
        assert_matches_exact(record, micro, accumulated)


def test_large_layers_measured_in_their_hooks_are_exact_too(free_address: str) -> None:
    torch.manual_seed(0)
    # 12·600 and 500 elements are held until the end of backward; 600·500 = 300,000 is taken in its hook.
    model = nn.Sequential(nn.Linear(12, 600), nn.Tanh(), nn.Linear(600, 500), nn.Tanh(), nn.Linear(500, 5))
    reference = copy.deepcopy(model)
    optimizer = make_optimizer(model)
    ns, records = watch_and_record(model, optimizer, free_address)
    loop = Loop(steps=3, sizes=(5, 7, 6), clip=0.05)
    exact: dict[int, tuple[list[list[float]], list[float]]] = {}
    loop.run(model, optimizer, on_step_start=lambda step: exact.__setitem__(step, exact_norms(reference, model, step, loop)))
    ns.remove()
    assert [r.step for r in records] == [0, 1, 2] and not any(r.skipped for r in records)
    for record in records:
        micro, accumulated = exact[record.step]
        assert_matches_exact(record, micro, accumulated)


class _SharedWeight(nn.Module):
    """One Linear used twice, once inside a reentrant checkpoint: two gradients per backward."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.use_checkpoint = True
        self.shared = nn.Linear(12, 12)
        self.head = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = checkpoint(self.shared, x.requires_grad_(), use_reentrant=True) if self.use_checkpoint else self.shared(x)
        return self.head(torch.tanh(self.shared(torch.tanh(h))))


def test_a_weight_with_two_gradients_in_a_single_micro_batch_keeps_its_accumulated_norm_exact(
    free_address: str,
) -> None:
    loop = Loop(steps=2, sizes=(8,))
    model = _SharedWeight()
    reference = copy.deepcopy(model)
    reference.use_checkpoint = False
    optimizer = make_optimizer(model)
    ns, records = watch_and_record(model, optimizer, free_address)
    exact = exact_norms(reference, model, 0, loop)
    loop.run(model, optimizer)
    ns.remove()
    for i, value in enumerate(records[0].accumulated_sq_norms):  # |h_a + h_b|², not |h_a|² + |h_b|²
        assert_close(value, exact[1][i], 1e-5, f"accumulated layer {i}")


def test_gradients_reset_without_a_step_start_the_measurement_over(free_address: str) -> None:
    loop = Loop(steps=1, sizes=(4, 4, 4, 4))
    model = make_model()
    reference = copy.deepcopy(model)
    optimizer = make_optimizer(model)
    ns, records = watch_and_record(model, optimizer, free_address)
    for j in range(2):  # e.g. AMP's GradScaler skipped the step after these
        x, y = micro_batch(9, j, 4)
        F.cross_entropy(model(x), y).backward()
    optimizer.zero_grad()
    exact = exact_norms(reference, model, 0, loop)
    loop.run(model, optimizer)
    ns.remove()
    assert len(records) == 1 and len(records[0].micro_sq_norms) == 4
    for i, value in enumerate(records[0].accumulated_sq_norms):
        assert_close(value, exact[1][i], 1e-5, f"accumulated layer {i}")


@pytest.mark.parametrize("numel", [1_000, 70_000, 9_000_001])
def test_large_layers_keep_float32_norms_accurate(numel: int) -> None:
    from noisescope._meter import _grad_sq_norms, _sq_norm

    g = torch.Generator().manual_seed(3)
    grad = torch.randn(numel, generator=g) * 0.5 + 0.2  # a mean makes rounding errors add up: worst case
    exact = grad.double().pow(2).sum().item()
    assert_close(float(_sq_norm(grad.view(-1, 1))), exact, 1e-5, "|h|² in the gradient hook")
    [accumulated] = _grad_sq_norms([grad.view(-1, 1)])
    assert_close(float(accumulated), exact, 1e-5, "|.grad|² after the backward")


@pytest.mark.parametrize(
    "make_grad",
    [
        lambda g: torch.randn(700, 300, generator=g).t(),  # transposed
        lambda g: torch.randn(8, 16, 5, 5, generator=g).to(memory_format=torch.channels_last),
        lambda g: torch.randn(3000, 1000, generator=g)[:, ::3],  # strided
        lambda g: torch.randn(600, 500, generator=g).half(),
        lambda g: torch.randn(600, 500, generator=g).bfloat16(),
        lambda g: torch.randn(600, 500, dtype=torch.complex64, generator=g),
        lambda g: torch.randn(600, 500, dtype=torch.float64, generator=g),
    ],
    ids=["transposed", "channels-last", "strided", "float16", "bfloat16", "complex64", "float64"],
)
def test_norms_of_other_layouts_and_dtypes_are_exact(make_grad) -> None:
    from noisescope._meter import _grad_sq_norms, _sq_norm

    grad = make_grad(torch.Generator().manual_seed(5))
    exact = grad.to(torch.complex128 if grad.is_complex() else torch.float64).abs().pow(2).sum().item()
    rel = 1e-12 if grad.dtype == torch.float64 else 1e-5
    assert_close(float(_sq_norm(grad)), exact, rel, "|h|²")
    [accumulated] = _grad_sq_norms([grad])
    assert_close(float(accumulated), exact, rel, "|.grad|²")


def test_accelerator_norms_are_gathered_into_one_float64_tensor() -> None:
    """The CUDA path's stacking (0-dim tensors of mixed dtypes, floats, missing layers), run on the CPU."""
    from types import SimpleNamespace

    from noisescope._meter import Meter

    entries = [torch.tensor(1.5), None, 2.25, torch.tensor(3.0, dtype=torch.float64), torch.tensor(0.5, dtype=torch.half)]
    stacked = Meter._stack(SimpleNamespace(_zeros={}), entries)  # type: ignore[arg-type]
    assert stacked.dtype == torch.float64
    assert stacked.tolist() == [1.5, 0.0, 2.25, 3.0, 0.5]
