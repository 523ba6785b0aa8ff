"""The per-example source inside watch(): choice of source, coverage, pairing with micro-batches, safety."""
from __future__ import annotations

import copy
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

import noisescope
from noisescope import _per_example_math
from per_example_support import assert_sums_match, exact_sums, measure_one_step
from test_hook_support import Loop, make_model, micro_batch, parameters_of, watch_and_record


class Mixed(nn.Module):
    """Every covered layer type in one model (tokens → embedding → conv → norms → linear)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(11, 6, padding_idx=0)
        self.conv = nn.Conv1d(6, 6, 3, padding=1)
        self.norm = nn.LayerNorm(6)
        self.rms = nn.RMSNorm(6)
        self.conv2 = nn.Conv2d(1, 1, 3, padding=1)
        self.head = nn.Linear(6, 4)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens)  # [B, T, 6]
        h = h + torch.tanh(self.conv(h.transpose(1, 2))).transpose(1, 2)
        h = self.rms(torch.relu(self.norm(h)))
        h = h + self.conv2(h.unsqueeze(1)).squeeze(1)
        return self.head(h).mean(1)


def tokens_and_labels(step: int, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    return torch.randint(0, 11, (size, 6), generator=g), torch.randint(0, 4, (size,), generator=g)


def train_mixed(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int = 5) -> None:
    for step in range(steps):
        x, y = tokens_and_labels(step)
        F.cross_entropy(model(x), y).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        optimizer.step()
        optimizer.zero_grad()


def test_training_with_the_per_example_source_is_bitwise_identical(free_address: str) -> None:
    plain = Mixed()
    train_mixed(plain, torch.optim.AdamW(plain.parameters(), lr=1e-2))
    watched = Mixed()
    optimizer = torch.optim.AdamW(watched.parameters(), lr=1e-2)
    ns, records = watch_and_record(watched, optimizer, free_address, source="per-example")
    train_mixed(watched, optimizer)
    ns.remove()
    assert len(records) == 5 and all(len(r.per_example_sums) == 1 for r in records)  # it really measured
    assert all(v > 0 for r in records for v in r.per_example_sums[0])
    for a, b in zip(parameters_of(plain), parameters_of(watched)):
        assert torch.equal(a, b)
    assert not any(m._forward_hooks for m in watched.modules())  # remove() gave every hook back


def test_every_layer_type_in_one_model_matches_exact(free_address: str) -> None:
    model = Mixed().double()
    x, y = tokens_and_labels(0, size=5)
    exact = exact_sums(model, x, y, 1 / 5, loss=lambda o, t: F.cross_entropy(o, t))
    measured, _ = measure_one_step(model, x, y, free_address, loss=lambda o, t: F.cross_entropy(o, t))
    assert_sums_match(measured, exact)


def test_accumulation_micro_batches_each_carry_their_sums_with_the_loss_divided_by_k(free_address: str) -> None:
    loop = Loop(steps=3, sizes=(5, 7, 6), dtype=torch.float64)
    model = make_model(dtype=torch.float64)
    reference = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    # Forced: "auto" skips the per-example work on steps that accumulate. Exact sums (never sampled: checked below).
    ns, records = watch_and_record(model, optimizer, free_address, source="per-example", per_example_sample=None)
    names = [layer.name for layer in ns._sender._info.layers]
    k = len(loop.sizes)
    exact: list[list[dict[str, float]]] = []
    armed: list[bool] = []

    def on_step_start(step: int) -> None:
        armed.append(bool(model[0]._forward_hooks))
        reference.load_state_dict(model.state_dict())
        exact.append([
            exact_sums(reference, *micro_batch(step, j, b, torch.float64), 1 / (b * k), loss=lambda o, t: F.cross_entropy(o, t))
            for j, b in enumerate(loop.sizes)
        ])

    loop.run(model, optimizer, on_step_start=on_step_start)
    ns.remove()
    assert len(records) == loop.steps and armed == [True] * loop.steps
    for record, step_exact in zip(records, exact):
        assert len(record.per_example_sums) == k
        for j in range(k):
            assert_sums_match(dict(zip(names, record.per_example_sums[j])), step_exact[j])


class Partly(nn.Module):
    """Covered layers around parameters the source cannot cover."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.embed = nn.Embedding(10, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.gru = nn.GRU(8, 8, batch_first=True)
        self.mix = nn.Linear(8, 8)
        self.head = nn.Linear(8, 10, bias=False)
        self.head.weight = self.embed.weight  # tied
        self.temperature = nn.Parameter(torch.ones(()))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens)
        h = h + self.attn(h, h, h, need_weights=False)[0]
        h = self.mix(self.gru(h)[0])
        return self.head(h).mean(1) * self.temperature


def test_forced_per_example_lists_uncovered_parameters_once_and_leaves_them_out(free_address: str, caplog) -> None:
    model = Partly()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with caplog.at_level(logging.INFO, logger="noisescope"):
        ns, records = watch_and_record(model, optimizer, free_address, source="per-example")
    info = ns._sender._info
    uncovered = {layer.name: layer.kind for layer in info.uncovered_layers}
    gru = {"gru.weight_ih_l0", "gru.weight_hh_l0", "gru.bias_ih_l0", "gru.bias_hh_l0"}
    assert set(uncovered) == {*gru, "temperature"}  # the tied embedding and the attention are covered
    assert uncovered["temperature"] == "Partly" and uncovered["gru.weight_hh_l0"] == "GRU"
    assert [layer.name for layer in info.layers] == [n for n, _ in model.named_parameters() if n not in uncovered]
    lines = [r.getMessage() for r in caplog.records if "left out of the estimate" in r.getMessage()]
    assert len(lines) == 1
    assert "gru.weight_hh_l0 (GRU)" in lines[0] and "temperature (Partly)" in lines[0]
    model(torch.randint(0, 10, (4, 5))).square().mean().backward()
    optimizer.step()
    ns.remove()
    assert len(records) == 1 and len(records[0].per_example_sums[0]) == len(info.layers)


class Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.lin = nn.Linear(5, 3)
        self.act = nn.PReLU(3)
        self.scale = nn.Parameter(torch.tensor(1.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.lin(x)) * self.scale


def test_covered_layers_are_exact_beside_uncovered_ones_and_hello_lists_them(free_address: str, caplog) -> None:
    from noisescope import _wire

    model = Scaled().double()
    x = torch.randn(4, 3, 5, dtype=torch.float64)
    y = torch.randn(4, 3, 3, dtype=torch.float64)
    exact = exact_sums(model, x, y, 1 / 4)
    with caplog.at_level(logging.INFO, logger="noisescope"):
        measured, records = measure_one_step(model, x, y, free_address, source="per-example")
    assert_sums_match(measured, {n: exact[n] for n in ("lin.weight", "lin.bias")})
    lines = [r.getMessage() for r in caplog.records if "batch-scale source: per-example" in r.getMessage()]
    assert len(lines) == 1
    assert "act.weight (PReLU)" in lines[0] and "scale (Scaled)" in lines[0] and "covering 18 of 22" in lines[0]
    assert len(records[0].micro_sq_norms[0]) == 2  # uncovered parameters are out of the norms too
    info = _wire.RankInfo(
        run="r", rank=0, world_size=1, layers=[], dataset_size=0, every=1, framework="", session="s",
        uncovered_layers=[noisescope._meter.LayerInfo("scale", 1, "Scaled")], per_example=True,
    )
    hello = _wire.hello(info, 0).hello
    assert [(l.name, l.numel, l.kind) for l in hello.uncovered_layers] == [("scale", 1, "Scaled")]
    assert hello.source == _wire.pb.SOURCE_PER_EXAMPLE
    shard, end = _wire.step_messages(records[0], 1)
    assert list(shard.shard.per_example.sums) == list(records[0].per_example_sums[0])
    assert shard.shard.HasField("per_example") and end.HasField("step_end")


def test_batch_norm_keeps_auto_on_accumulation_and_forcing_warns(free_address: str, caplog) -> None:
    def model() -> nn.Module:
        torch.manual_seed(3)
        return nn.Sequential(nn.Linear(12, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 5))

    auto = model()
    with caplog.at_level(logging.INFO, logger="noisescope"):
        ns, records = watch_and_record(auto, torch.optim.SGD(auto.parameters(), lr=0.1), free_address)
        Loop(steps=2, sizes=(8,), clip=None).run(auto, ns._meter._optimizer)
        ns.remove()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("mixes examples" in m and "source is off" in m for m in messages) == 1
    assert sum("batch statistics in '1' (BatchNorm1d)" in m for m in messages) == 1  # not the bare index "1"
    assert sum("no noise-scale estimate" in m for m in messages) == 1  # nothing gives a second scale here
    assert all(r.per_example_sums == () for r in records) and len(records[0].micro_sq_norms[0]) == 6
    assert ns._sender._info.per_example is False

    caplog.clear()
    forced = model()
    with caplog.at_level(logging.INFO, logger="noisescope"):
        ns, records = watch_and_record(forced, torch.optim.SGD(forced.parameters(), lr=0.1), free_address, source="per-example")
        Loop(steps=2, sizes=(8,), clip=None).run(forced, ns._meter._optimizer)
        ns.remove()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("biased" in m for m in messages) == 1
    assert not any("no noise-scale estimate" in m for m in messages)
    assert all(len(r.per_example_sums) == 1 for r in records)
    assert {l.name for l in ns._sender._info.uncovered_layers} == {"1.weight", "1.bias"}


def test_one_micro_batch_with_per_example_gives_no_one_scale_warning(free_address: str, caplog) -> None:
    model = make_model()
    with caplog.at_level(logging.WARNING, logger="noisescope"):
        ns, records = watch_and_record(model, torch.optim.SGD(model.parameters(), lr=0.1), free_address)
        Loop(steps=3, sizes=(8,)).run(model, ns._meter._optimizer)
        ns.remove()
    assert not any("no noise-scale estimate" in r.getMessage() for r in caplog.records)
    assert [len(r.per_example_sums) for r in records] == [1, 1, 1]


def test_source_argument_is_checked(free_address: str) -> None:
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="source must be a str"):
        noisescope.watch(model, optimizer, address=free_address, source=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown source 'ranks'.*'auto', 'accumulation', 'per-example'"):
        noisescope.watch(model, optimizer, address=free_address, source="ranks")


def test_module_hooks_exist_only_on_measured_steps(free_address: str) -> None:
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ns, records = watch_and_record(model, optimizer, free_address, every=3)
    seen: list[bool] = []
    Loop(steps=7, sizes=(8,)).run(model, optimizer, on_step_start=lambda step: seen.append(bool(model[0]._forward_hooks)))
    ns.remove()
    assert seen == [True, False, False, True, False, False, True]
    assert [r.step for r in records] == [0, 3, 6] and all(len(r.per_example_sums) == 1 for r in records)
    assert not any(m._forward_hooks for m in model.modules())


class OutsideUse(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.head = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.linear(x, self.lin.weight, self.lin.bias))  # `lin` used without calling it


def test_a_parameter_used_outside_its_module_drops_the_sums_with_one_warning(free_address: str, caplog) -> None:
    model = OutsideUse()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with caplog.at_level(logging.WARNING, logger="noisescope"):
        ns, records = watch_and_record(model, optimizer, free_address)
        for _ in range(3):
            model(torch.randn(5, 4)).square().mean().backward()
            optimizer.step()
            optimizer.zero_grad()
        ns.remove()
    assert len(records) == 3 and all(r.per_example_sums == () and not r.skipped for r in records)
    warnings = [r.getMessage() for r in caplog.records if "did not come through its module" in r.getMessage()]
    assert len(warnings) == 1 and "lin.weight" in warnings[0]


class Flattening(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x.reshape(-1, 4)).reshape(x.shape[0], -1)  # batch × sequence folded into dim 0


def test_inputs_without_the_batch_as_dim_0_drop_the_sums_with_one_warning(free_address: str, caplog) -> None:
    model = Flattening()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with caplog.at_level(logging.WARNING, logger="noisescope"):
        ns, records = watch_and_record(model, optimizer, free_address)
        for _ in range(3):
            model(torch.randn(5, 2, 4)).square().mean().backward()
            optimizer.step()
            optimizer.zero_grad()
        ns.remove()
    assert len(records) == 3 and all(r.per_example_sums == () and not r.skipped for r in records)
    warnings = [r.getMessage() for r in caplog.records if "per-example sums left out" in r.getMessage()]
    assert len(warnings) == 1 and "(10, 4)" in warnings[0] and "batch (5)" in warnings[0]


def test_non_reentrant_checkpointing_keeps_the_sums_exact(free_address: str) -> None:
    class Checkpointed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(4)
            self.block = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.LayerNorm(6))
            self.head = nn.Linear(6, 2)
            self.use_checkpoint = True

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = checkpoint(self.block, x, use_reentrant=False) if self.use_checkpoint else self.block(x)
            return self.head(h)

    model = Checkpointed().double()
    x, y = torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    twin = copy.deepcopy(model)
    twin.use_checkpoint = False  # torch.func does not run through checkpointing
    exact = exact_sums(twin, x, y, 1 / 4)
    assert_sums_match(measure_one_step(model, x, y, free_address)[0], exact)


def test_an_error_in_the_per_example_math_is_logged_once_and_training_goes_on_unchanged(
    free_address: str, caplog, monkeypatch
) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    plain = make_model()
    Loop(steps=4, sizes=(8,)).run(plain, torch.optim.SGD(plain.parameters(), lr=0.1))
    monkeypatch.setattr(_per_example_math, "linear", broken)
    monkeypatch.setattr(_per_example_math, "row_norms", broken)  # a Linear on [B, d] rows: its δ hook's math
    watched = make_model()
    optimizer = torch.optim.SGD(watched.parameters(), lr=0.1)
    with caplog.at_level(logging.ERROR, logger="noisescope"):
        ns, records = watch_and_record(watched, optimizer, free_address)
        Loop(steps=4, sizes=(8,)).run(watched, optimizer)
    assert not ns.enabled
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "per-example gradient hook" in errors[0].getMessage()
    ns.remove()
    for a, b in zip(parameters_of(plain), parameters_of(watched)):
        assert torch.equal(a, b)
