"""Per-example terms computed on the worker thread beside the backward, and LayerNorm's saved statistics."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from noisescope import _per_example_math as pem
from per_example_support import assert_sums_match, exact_sums, measure_one_step
from test_hook_support import parameters_of, watch_and_record
from test_per_example_watch import Mixed, tokens_and_labels, train_mixed


def test_terms_from_the_worker_match_exact_per_sample_gradients(free_address: str) -> None:
    model = Mixed().double()
    x, y = tokens_and_labels(0, size=5)
    exact = exact_sums(model, x, y, 1 / 5, loss=lambda o, t: F.cross_entropy(o, t))
    measured, _ = measure_one_step(model, x, y, free_address, overlap=True, loss=lambda o, t: F.cross_entropy(o, t))
    assert_sums_match(measured, exact)


def test_training_with_the_worker_is_bitwise_identical_and_every_step_waits_for_it(free_address: str) -> None:
    plain = Mixed()
    watched = copy.deepcopy(plain)
    train_mixed(plain, torch.optim.AdamW(plain.parameters(), lr=1e-2))
    optimizer = torch.optim.AdamW(watched.parameters(), lr=1e-2)
    ns, records = watch_and_record(watched, optimizer, free_address, source="per-example")
    overlap = ns._meter._per_example.overlap
    overlap.enabled = True
    train_mixed(watched, optimizer)
    ns.remove()
    assert overlap.submitted >= 5 * 6  # every covered module's terms, every step, went through the worker
    # Each step's record has every layer's sum: the step waited for the worker's terms.
    assert len(records) == 5 and all(len(r.per_example_sums) == 1 for r in records)
    assert all(v > 0 for r in records for v in r.per_example_sums[0])
    for a, b in zip(parameters_of(plain), parameters_of(watched)):
        assert torch.equal(a, b)


def test_the_worker_is_used_only_while_torch_leaves_a_core_free() -> None:
    from noisescope._per_example import _Overlap

    overlap = _Overlap()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(overlap._cores)
        assert not overlap.worthwhile()
        if overlap._cores > 1:
            torch.set_num_threads(overlap._cores - 1)
            assert overlap.worthwhile()
    finally:
        torch.set_num_threads(threads)
    overlap.enabled = False
    assert not overlap.worthwhile()


def test_layer_norm_statistics_are_the_forwards_own_and_left_alone_under_saved_tensor_hooks() -> None:
    torch.manual_seed(0)
    norm = nn.LayerNorm((3, 4))
    x = torch.randn(5, 2, 3, 4, requires_grad=True)
    stats = pem.layer_norm_stats(norm(x), x, norm)
    assert stats is not None
    mean, rstd = stats
    expected = F.layer_norm(x.detach(), (3, 4), None, None, norm.eps)
    assert torch.allclose((x.detach() - mean) * rstd, expected, rtol=0, atol=1e-6)
    d = torch.randn(5, 2, 3, 4)
    with_stats = pem.normalisation(norm, [(x.detach(), d)], [stats])
    recomputed = pem.normalisation(norm, [(x.detach(), d)])
    for a, b in zip(with_stats, recomputed):
        assert a is not None and b is not None and torch.allclose(a, b, rtol=1e-5)
    # Reading them would run the unpack hook (a recomputation under checkpointing): not done.
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
        assert pem.layer_norm_stats(norm(x), x, norm) is None


class Attending(nn.Module):
    """MultiheadAttention's terms call its own forward (a vjp): on the worker that call is not a new input."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.attn(x, x, x, need_weights=False)[0])


@pytest.mark.filterwarnings("ignore:There is a performance drop")
def test_attention_terms_on_the_worker_match_exact(free_address: str) -> None:
    model = Attending().double()
    x = torch.randn(5, 4, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = torch.randn(5, 4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    exact = exact_sums(model, x, y, 1 / 5)
    measured, records = measure_one_step(model, x, y, free_address, overlap=True, source="per-example")
    assert_sums_match(measured, exact)


def test_a_linear_on_rows_is_computed_inline_and_a_sequence_linear_on_the_worker(free_address: str) -> None:
    """A row Linear's terms are a few row norms, cheaper than the hand-off: only the sequence layer goes to the worker."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Unflatten(1, (3, 2)), nn.Linear(2, 3)).double()
    x, y = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 3, 3, dtype=torch.float64)
    exact = exact_sums(model, x, y, 1 / 5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    ns, records = watch_and_record(model, optimizer, free_address, source="per-example")
    overlap = ns._meter._per_example.overlap
    overlap.enabled = True
    out = model(x)
    torch.stack([(o - t).square().sum() for o, t in zip(out, y)]).mean().backward()
    optimizer.step()
    names = [layer.name for layer in ns._sender._info.layers]
    ns.remove()
    assert overlap.submitted == 1  # the [5, 3, 2] Linear's terms; the [5, 4] one's ran in the backward
    assert_sums_match(dict(zip(names, records[0].per_example_sums[0])), exact)


def test_waiting_for_the_worker_runs_the_queued_work_on_the_waiting_thread() -> None:
    """At the step's end the training thread takes queued terms itself instead of idling behind the worker."""
    import threading

    from noisescope._per_example import _Overlap

    overlap = _Overlap()
    started, released = threading.Event(), threading.Event()
    ran_on: list[int] = []

    def first() -> None:  # keeps the worker busy until the second has run
        started.set()
        released.wait(timeout=5)

    def second() -> None:
        ran_on.append(threading.get_ident())
        released.set()

    overlap.submit(first)
    assert started.wait(timeout=5)
    overlap.submit(second)
    overlap.wait()
    assert ran_on == [threading.get_ident()] and overlap.submitted == 2 and released.is_set()
