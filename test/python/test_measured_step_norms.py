"""A measured step's norms are bitwise what reading `.grad` gives, however the hook takes them.

A fresh step (`.grad` None before its one backward) takes each CPU norm in the parameter's gradient hook, on the
tensor that becomes `.grad`; anything it cannot (a non-contiguous parameter, a second gradient in the backward)
is read from `.grad` at the backward's end. The reference here is `_grad_sq_norms` over `.grad` read by the
training loop after each backward: the one read the hook made before it took norms in its hooks. Also: hooks
armed by assigning our own dicts leave the user's tensor and forward hooks working and the model as it was.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from noisescope._meter import _grad_sq_norms
from test_hook_support import watch_and_record


class _Mixed(nn.Module):
    """Every read path at once: a weight over 2^18 elements (summed by pieces), conv, embedding, norm, a
    non-contiguous parameter, a weight used twice (one gradient), an unused parameter."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.embed = nn.Embedding(20, 8)
        self.conv = nn.Conv1d(8, 6, 3, padding=1)
        self.big = nn.Linear(60, 5000)  # 300,000 weights
        self.norm = nn.LayerNorm(5000)
        self.transposed = nn.Parameter(torch.randn(7, 5000).t())  # a view: not contiguous
        self.head = nn.Linear(7, 7)
        self.unused = nn.Parameter(torch.zeros(3))
        self.to(dtype)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.conv(self.embed(tokens).transpose(1, 2)).flatten(1)  # (batch, 60)
        h = self.norm(torch.tanh(self.big(h))) @ self.transposed
        return self.head(torch.tanh(self.head(h)))  # the head twice: autograd sums its two gradients


def _batch(step: int, micro: int, size: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * step + micro)
    return torch.randint(0, 20, (size, 10), generator=g), torch.randint(0, 7, (size,), generator=g)


def _read(params: list[nn.Parameter]) -> tuple[float, ...]:
    """`.grad`'s norms as the hook reads them, a parameter without a gradient as the wire carries it (0)."""
    return tuple(0.0 if v is None else float(v) for v in _grad_sq_norms([p.grad for p in params]))


def _train(address: str, model: nn.Module, steps: int, micro_batches: int, set_to_none: bool, **watch_kwargs):
    """Seeded training, recorded through the hook; `.grad`'s norms read after each backward of each step."""
    params = list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    ns, records = watch_and_record(model, optimizer, address, source="accumulation", **watch_kwargs)
    reads: list[list[tuple[float, ...]]] = []
    for step in range(steps):
        optimizer.zero_grad(set_to_none=set_to_none)
        reads.append([])
        for micro in range(micro_batches):
            tokens, target = _batch(step, micro)
            F.cross_entropy(model(tokens), target).backward()
            reads[-1].append(_read(params))
        optimizer.step()
    ns.remove()
    return records, reads


def test_fresh_steps_norms_are_bitwise_those_of_grad_in_float32_and_float64_measured_every_step_or_every_other(free_address: str) -> None:
    for dtype, every in ((torch.float32, 1), (torch.float32, 2), (torch.float64, 1)):
        records, reads = _train(free_address, _Mixed(dtype), steps=4, micro_batches=1, set_to_none=True, every=every)
        assert [r.step for r in records] == list(range(0, 4, every)) and not any(r.skipped for r in records)
        for record in records:
            read = reads[record.step][0]
            assert record.accumulated_sq_norms == read, f"{dtype} every={every} step {record.step}: accumulated"
            assert record.micro_sq_norms == (read,), f"{dtype} every={every} step {record.step}: micro-batch"


def test_accumulation_and_zeroed_grads_keep_reading_grad_for_the_accumulated_norm(free_address: str) -> None:
    for set_to_none in (True, False):
        records, reads = _train(free_address, _Mixed(torch.float32), steps=3, micro_batches=4, set_to_none=set_to_none)
        assert [r.step for r in records] == [0, 1, 2] and not any(r.skipped for r in records)
        for record in records:
            assert record.accumulated_sq_norms == reads[record.step][-1], f"step {record.step}"
            if set_to_none:  # micro-batch 0 of a fresh step is .grad after its backward
                assert record.micro_sq_norms[0] == reads[record.step][0], f"step {record.step}: micro-batch 0"


class _TwoGradients(nn.Module):
    """One Linear used inside a reentrant checkpoint and outside it: two gradients in one fresh backward."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.shared = nn.Linear(12, 12)
        self.head = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = checkpoint(self.shared, x.requires_grad_(), use_reentrant=True)
        return self.head(torch.tanh(self.shared(torch.tanh(h))))


def test_a_second_gradient_in_a_fresh_backward_is_read_from_grad(free_address: str) -> None:
    model = _TwoGradients()
    params = list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=0.05)
    ns, records = watch_and_record(model, optimizer, free_address, source="accumulation")
    reads = []
    for step in range(2):
        optimizer.zero_grad(set_to_none=True)
        g = torch.Generator().manual_seed(step)
        F.cross_entropy(model(torch.randn(8, 12, generator=g)), torch.randint(0, 5, (8,), generator=g)).backward()
        reads.append(_read(params))
        optimizer.step()
    ns.remove()
    assert [r.step for r in records] == [0, 1]
    for record in records:  # |h_a + h_b|² as .grad holds it, not the first gradient's alone
        assert record.accumulated_sq_norms == reads[record.step]
        assert record.micro_sq_norms == (reads[record.step],)


def test_the_users_tensor_and_forward_hooks_run_beside_ours_and_stay_after_remove(free_address: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    calls: list[str] = []
    model[0].weight.register_hook(lambda g: calls.append("before watch"))
    ns, records = watch_and_record(model, optimizer, free_address, source="accumulation", every=2)
    handles = []
    for step in range(4):
        optimizer.zero_grad()
        if step == 2:  # a measured step, our hooks armed: the user's join our dicts
            handles.append(model[2].bias.register_hook(lambda g: calls.append("during step 2")))
            handles.append(model.register_forward_pre_hook(lambda m, a: calls.append("forward")))
        model(torch.randn(5, 4)).square().sum().backward()
        optimizer.step()
    assert calls == ["before watch"] * 2 + ["forward", "during step 2", "before watch"] * 2
    ns.remove()
    assert [r.step for r in records] == [0, 2]
    assert list(model[0].weight._backward_hooks.values())[0] is not None and len(model[0].weight._backward_hooks) == 1
    assert len(model[2].bias._backward_hooks) == 1  # the user's alone
    assert model[0].bias._backward_hooks is None and model[2].weight._backward_hooks is None
    assert len(model._forward_pre_hooks) == 1 and len(model._forward_pre_hooks_with_kwargs) == 0
    calls.clear()
    model(torch.randn(5, 4)).square().sum().backward()
    assert calls == ["forward", "during step 2", "before watch"]
    for handle in handles:
        handle.remove()
    assert model[2].bias._backward_hooks is not None and len(model[2].bias._backward_hooks) == 0


def test_steps_between_measured_ones_stay_unhooked_and_counted_from_a_resumed_step_number(free_address: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ns, records = watch_and_record(model, optimizer, free_address, source="accumulation", every=4, first_step=3)
    hooked = []
    for _ in range(12):  # steps 3..14
        optimizer.zero_grad()
        hooked.append(any(p._backward_hooks for p in model.parameters()) or bool(model._forward_pre_hooks))
        model(torch.randn(5, 4)).square().sum().backward()
        optimizer.step()
    stats = ns.stats
    ns.remove()
    assert [r.step for r in records] == [4, 8, 12] and not any(r.skipped for r in records)
    assert hooked == [n % 4 == 0 for n in range(3, 15)]
    assert (stats.steps_seen, stats.steps_measured) == (12, 3)
