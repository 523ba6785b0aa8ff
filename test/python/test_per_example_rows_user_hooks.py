"""The per-example forward hooks go straight into each covered module's hook dicts under a key of ours (no
RemovableHandle per module and step): a user's own forward hooks on those modules, registered before watch() or
during a measured step, still run at every forward and stay removable by their handles; ours come and go with the
measured steps, and each measured step's sums stay exact (float64, 1e-12 against torch.func)."""
from __future__ import annotations

import torch
from torch import nn

from per_example_support import assert_sums_match, exact_sums, measure_one_step, regression_loss
from test_hook_support import watch_and_record

B = 5


def mlp() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    return torch.randn(B, 4, generator=g, dtype=torch.float64), torch.randn(B, 3, generator=g, dtype=torch.float64)


def loss_of(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.stack([regression_loss(o, t) for o, t in zip(model(x), y)]).mean()


def exact_at(state: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """torch.func's sums at these parameters, on a hook-free copy (torch.func calls the modules' forwards)."""
    model = mlp()
    model.load_state_dict(state)
    return exact_sums(model, x, y, 1 / B)


def hook_counts(module: nn.Module) -> tuple[int, int]:
    return len(module._forward_hooks), len(module._forward_hooks_with_kwargs)


def test_users_forward_hooks_before_and_during_measured_steps_run_and_stay_removable(free_address: str) -> None:
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    calls: list[str] = []
    before = model[0].register_forward_hook(lambda m, a, out: calls.append("before"))
    before_kwargs = model[2].register_forward_hook(lambda m, a, k, out: calls.append("before kw"), with_kwargs=True)
    ns, records = watch_and_record(model, optimizer, free_address, source="per-example", every=2)
    per_example = ns._meter._per_example
    assert per_example is not None
    per_example.overlap.enabled = False
    states: dict[int, tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]] = {}
    during = []
    armed = []
    for step in range(6):
        x, y = batch(step)
        if step % 2 == 0:  # the step is measured: its sums are checked against torch.func on the same parameters
            states[step] = ({k: v.clone() for k, v in model.state_dict().items()}, x, y)
        if step == 2:  # ours are in: the user's join the same dicts, and one of theirs goes mid-step
            during.append(model[0].register_forward_hook(lambda m, a, out: calls.append("during")))
            during.append(model[2].register_forward_hook(lambda m, a, out: calls.append("during first"), prepend=True))
            during.append(model[2].register_forward_hook(lambda m, a, k, out: calls.append("during kw"), with_kwargs=True))
        armed.append(hook_counts(model[0]))
        loss = loss_of(model, x, y)
        if step == 2:
            before.remove()  # between the forward and the backward of a measured step
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    # Ours in on measured steps only: (user hooks + 1, kwargs hooks + 1) then, the user's alone otherwise.
    assert armed == [(2, 1), (1, 0), (3, 1), (1, 0), (2, 1), (1, 0)]
    assert calls == (
        ["before", "before kw"] * 2
        + ["before", "during", "during first", "before kw", "during kw"]
        + ["during", "during first", "before kw", "during kw"] * 3
    )
    names = [layer.name for layer in ns._sender._info.layers]
    ns.remove()
    assert [r.step for r in records] == [0, 2, 4]
    for record in records:
        assert record.per_example_sums, record
        assert_sums_match(dict(zip(names, record.per_example_sums[0])), exact_at(*states[record.step]), rel=1e-12)
    # Only the user's are left, and their handles still take them out.
    assert hook_counts(model[0]) == (1, 0) and hook_counts(model[2]) == (3, 2)
    before_kwargs.remove()
    for handle in during:
        handle.remove()
    assert all(hook_counts(m) == (0, 0) for m in model.modules())
    calls.clear()
    model(batch(9)[0])
    assert calls == []


def test_hooks_follow_arming_through_watch_removal_mid_run(free_address: str) -> None:
    """remove() while armed (mid-run, at a measured step's end) leaves no key of ours; a second watch() arms afresh."""
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    mine = model[0].register_forward_hook(lambda m, a, out: None)
    for attempt in range(2):
        ns, records = watch_and_record(model, optimizer, free_address, source="per-example", every=1)
        x, y = batch(attempt)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        assert hook_counts(model[0]) == (2, 1) and hook_counts(model[2]) == (1, 1)
        optimizer.zero_grad()
        loss_of(model, x, y).backward()
        optimizer.step()
        names = [layer.name for layer in ns._sender._info.layers]
        ns.remove()
        assert hook_counts(model[0]) == (1, 0) and hook_counts(model[2]) == (0, 0)
        assert len(records) == 1 and records[0].per_example_sums
        assert_sums_match(dict(zip(names, records[0].per_example_sums[0])), exact_at(state, x, y), rel=1e-12)
    mine.remove()
    assert hook_counts(model[0]) == (0, 0)


class TensorHooked(nn.Module):
    """Linears whose outputs carry the user's own tensor hooks: one set in their forward hook before ours runs, one
    set in forward after ours (into the dict ours made), one of those removed at once; a Linear called by keyword."""

    def __init__(self, seen: list[tuple[str, torch.Tensor]]) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.a, self.b, self.c = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 3)
        self.seen = seen
        self.a.register_forward_hook(self.hook_a)

    def hook_a(self, module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        out.register_hook(lambda g: self.seen.append(("a, theirs first", g)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.b(torch.tanh(self.a(x)))
        h.register_hook(lambda g: self.seen.append(("b, after ours", g)))
        h.register_hook(lambda g: self.seen.append(("b, removed", g))).remove()
        return self.c(input=torch.tanh(h))


def test_users_tensor_hooks_on_linear_outputs_share_our_hook_dict_and_see_the_same_gradients(free_address: str) -> None:
    x, y = batch(5)
    plain_seen: list[tuple[str, torch.Tensor]] = []
    plain = TensorHooked(plain_seen).double()
    loss_of(plain, x, y).backward()
    seen: list[tuple[str, torch.Tensor]] = []
    model = TensorHooked(seen).double()
    exact = exact_sums(TensorHooked([]).double(), x, y, 1 / B)
    measured, _ = measure_one_step(model, x, y, free_address, source="per-example")
    assert_sums_match(measured, exact, rel=1e-12)
    assert [name for name, _ in seen] == [name for name, _ in plain_seen] == ["b, after ours", "a, theirs first"]
    for (_, got), (_, want) in zip(seen, plain_seen):
        assert torch.equal(got, want)
