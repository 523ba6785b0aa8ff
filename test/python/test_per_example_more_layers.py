"""Per-example sums for Conv3d, ConvTranspose1d/2d/3d, GroupNorm, MultiheadAttention and tied weights,
through watch(), against per-sample gradients from torch.func (float64, relative error ≤ 1e-4)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from per_example_support import assert_sums_match, exact_sums, measure_one_step

B = 5


def check(model: nn.Module, x: torch.Tensor, address: str, **kwargs) -> dict[str, float]:
    """The exact sums first (the measured step then updates the parameters); every parameter must be covered."""
    torch.manual_seed(100)
    y = torch.randn_like(model(x))
    exact = exact_sums(model, x, y, 1 / B)
    measured, _ = measure_one_step(model, x, y, address, source="per-example", **kwargs)
    assert_sums_match(measured, exact)
    return measured


def randn(*shape: int) -> torch.Tensor:
    return torch.randn(B, *shape, dtype=torch.float64)


@pytest.mark.parametrize(
    "conv",
    [
        dict(in_channels=2, out_channels=3, kernel_size=3, stride=(2, 1, 2), padding=1),
        dict(in_channels=4, out_channels=4, kernel_size=(2, 3, 2), dilation=(1, 2, 1), groups=2, bias=False),
        dict(in_channels=2, out_channels=2, kernel_size=3, padding="same", padding_mode="circular"),
    ],
    ids=["stride-pad", "dilation-groups-nobias", "same-circular"],
)
def test_conv3d(free_address: str, conv: dict) -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv3d(**conv), nn.Tanh()).double()
    check(model, randn(conv["in_channels"], 5, 6, 5), free_address)


@pytest.mark.parametrize(
    "layer, spatial",
    [
        (lambda: nn.ConvTranspose1d(3, 4, 3, stride=2, padding=1, output_padding=1), (6,)),
        (lambda: nn.ConvTranspose1d(4, 6, 2, stride=3, dilation=2, groups=2, bias=False), (5,)),
        (lambda: nn.ConvTranspose2d(2, 3, (3, 2), stride=(2, 3), padding=(1, 0), output_padding=(1, 2)), (4, 3)),
        (lambda: nn.ConvTranspose2d(4, 4, 3, stride=2, dilation=3, output_padding=2, groups=4), (3, 4)),
        (lambda: nn.ConvTranspose3d(2, 2, 2, stride=2, padding=1, output_padding=1, dilation=(1, 2, 1)), (3, 3, 2)),
    ],
    ids=["1d-stride-outpad", "1d-dilation-groups", "2d-asymmetric", "2d-outpad-from-dilation", "3d"],
)
def test_conv_transpose(free_address: str, layer, spatial: tuple[int, ...]) -> None:
    torch.manual_seed(2)
    conv = layer()
    model = nn.Sequential(conv, nn.Tanh()).double()
    check(model, randn(conv.in_channels, *spatial), free_address)


class TransposeToSize(nn.Module):
    """forward(x, output_size=...) picks an output_padding other than the module's."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(3, 2, 3, stride=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.up(x, output_size=[x.shape[2] * 3, x.shape[3] * 3 - 1]))


def test_conv_transpose_with_output_size(free_address: str) -> None:
    torch.manual_seed(3)
    check(TransposeToSize().double(), randn(3, 4, 3), free_address)


@pytest.mark.parametrize("spatial", [(), (6,), (3, 4)], ids=["channels-only", "1d", "2d"])
def test_group_norm(free_address: str, spatial: tuple[int, ...]) -> None:
    torch.manual_seed(4)
    norm = nn.GroupNorm(3, 6)
    with torch.no_grad():  # non-trivial affine parameters
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    model = nn.Sequential(nn.Conv1d(2, 6, 1) if spatial else nn.Linear(2, 6), norm, nn.Tanh()).double()
    if len(spatial) == 2:
        model[0] = nn.Conv2d(2, 6, 1).double()
    check(model, randn(2, *spatial), free_address)


class Attention(nn.Module):
    """Self- or cross-attention on batch-first model inputs; the module may be sequence-first."""

    def __init__(self, batch_first: bool, mask: str = "", cross: bool = False, twice: bool = False, **kwargs) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=batch_first, **kwargs)
        self.memory = nn.Linear(8, kwargs.get("kdim") or 8) if cross else None
        self.mask, self.twice = mask, twice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = x.shape[1]
        kv = self.memory(x[:, :-1]) if self.memory is not None else x
        value = kv if self.attn.vdim == self.attn.kdim else kv[..., : self.attn.vdim]
        keys = kv.shape[1]
        kwargs: dict = {}
        if self.mask == "causal":
            kwargs = dict(attn_mask=nn.Transformer.generate_square_subsequent_mask(steps, dtype=x.dtype), is_causal=True)
        elif self.mask == "padding":  # from the example's own data (never its first key)
            padding = x[:, :keys, 0] > 0.3
            padding[:, 0] = False
            kwargs = dict(key_padding_mask=padding)
        elif self.mask == "per-example":  # [batch·heads, L, S] float mask from the example's own data
            m = x[:, :, :1] * x[:, None, :keys, 1]
            kwargs = dict(attn_mask=torch.stack([m, -m], 1).flatten(0, 1))
        q, k, v = (x, kv, value) if self.attn.batch_first else (x.transpose(0, 1), kv.transpose(0, 1), value.transpose(0, 1))
        out = self.attn(q, k, v, **kwargs)[0]
        if self.twice:  # the module called twice in one forward: contributions add per example
            out = self.attn(torch.tanh(out), k, v, need_weights=False, **kwargs)[0]
        return out if self.attn.batch_first else out.transpose(0, 1)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(batch_first=True),
        dict(batch_first=False, mask="causal"),
        dict(batch_first=True, mask="padding", add_bias_kv=True),
        dict(batch_first=False, mask="per-example", cross=True),
        dict(batch_first=True, cross=True, kdim=5, vdim=3, mask="padding"),  # separate q/k/v weights
        dict(batch_first=False, cross=True, kdim=6, vdim=6, bias=False, twice=True),
        dict(batch_first=True, mask="padding", add_bias_kv=True, add_zero_attn=True),
    ],
    ids=["packed", "seq-first-causal", "padding-bias-kv", "seq-first-3d-mask", "separate-qkv", "separate-nobias-twice", "zero-attn"],
)
@pytest.mark.filterwarnings("ignore:There is a performance drop")  # the reference's vmap over fused attention
def test_multihead_attention(free_address: str, kwargs: dict) -> None:
    model = Attention(**kwargs).double()
    measured = check(model, randn(4, 8), free_address)
    assert any(name.startswith("attn.") for name in measured)


class TiedLM(nn.Module):
    """Embedding tied to the output head, as in language models; a token of the padding row."""

    def __init__(self, padding_idx: int | None, head_bias: bool, second_head: bool = False) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.embed = nn.Embedding(9, 4, padding_idx=padding_idx)
        self.mix = nn.Linear(4, 4)
        self.head = nn.Linear(4, 9, bias=head_bias)
        self.head.weight = self.embed.weight
        self.aux = None
        if second_head:  # two Linears and the Embedding on one weight, biases tied between the Linears
            self.aux = nn.Linear(4, 9)
            self.aux.weight = self.embed.weight
            self.aux.bias = self.head.bias

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.mix(self.embed(tokens)))
        out = self.head(h)
        return out if self.aux is None else out + self.aux(h[:, :2]).sum(1, keepdim=True)


TOKENS = torch.tensor([[1, 1, 2, 0], [3, 3, 3, 3], [0, 0, 5, 5], [1, 2, 1, 2], [8, 7, 8, 0]])


@pytest.mark.parametrize(
    "padding_idx, head_bias, second_head",
    [(None, True, False), (0, False, False), (3, True, True)],
    ids=["bias", "padding-nobias", "two-heads-tied-bias"],
)
def test_embedding_tied_to_output_head(free_address: str, padding_idx: int | None, head_bias: bool, second_head: bool) -> None:
    measured = check(TiedLM(padding_idx, head_bias, second_head).double(), TOKENS, free_address)
    assert "embed.weight" in measured


class Siamese(nn.Module):
    """Two Linears (own biases) on one weight, and two Embeddings on one table."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(8)
        self.left, self.right = nn.Embedding(9, 4), nn.Embedding(9, 4)
        self.right.weight = self.left.weight
        self.a, self.b = nn.Linear(4, 3), nn.Linear(4, 3)
        self.b.weight = self.a.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.a(torch.tanh(self.left(tokens))) * self.b(torch.tanh(self.right(tokens.flip(1))))


def test_linear_and_embedding_tied_among_themselves(free_address: str) -> None:
    check(Siamese().double(), TOKENS, free_address)


class Everything(nn.Module):
    """Every new kind in one model, for coverage and bitwise-unchanged training."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        torch.manual_seed(9)
        self.embed = nn.Embedding(9, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True, dropout=dropout)
        self.norm = nn.GroupNorm(2, 8)
        self.up = nn.ConvTranspose1d(8, 4, 3, stride=2)
        self.vol = nn.Conv3d(1, 2, 2)
        self.head = nn.Linear(8, 9)
        self.head.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens)
        h = h + self.attn(h, h, h)[0]
        h = self.norm(h.transpose(1, 2)).transpose(1, 2)
        u = self.up(h.transpose(1, 2))  # [B, 4, 2T+1]
        v = self.vol(u[:, None, :, :4, None].expand(-1, -1, -1, -1, 2)).mean((1, 2, 3, 4))
        return self.head(torch.tanh(h)) + v[:, None, None]


def test_a_model_of_every_new_kind_is_covered_and_exact(free_address: str) -> None:
    check(Everything().double(), TOKENS, free_address)


def test_coverage_names_what_it_still_cannot_cover() -> None:
    from noisescope._per_example import coverage

    class Unsupported(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, dropout=0.1)
            self.c1, self.c2 = nn.Conv1d(8, 8, 1), nn.Conv1d(8, 8, 1)
            self.c2.weight = self.c1.weight
            self.e1, self.e2 = nn.Embedding(9, 8, padding_idx=0), nn.Embedding(9, 8)
            self.e2.weight = self.e1.weight

    model = Unsupported()
    names = {id(p): n for n, p in model.named_parameters()}
    params = list(model.parameters())
    cover = coverage(model, params)
    why = {names[id(params[i])]: reason for i, reason in cover.uncovered.items()}
    assert why["attn.in_proj_weight"] == "MultiheadAttention(dropout=0.1): its attention dropout cannot be replayed per example"
    assert why["attn.out_proj.weight"] == why["attn.in_proj_weight"]
    assert why["c1.weight"] == "shared by several modules (Conv1d): the cross terms of that combination are not computed"
    assert why["e1.weight"] == "shared by Embeddings with different padding_idx"
    assert set(why) == {"attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight", "attn.out_proj.bias", "c1.weight", "e1.weight"}


def test_training_is_bitwise_unchanged_by_the_new_layers_hooks(free_address: str) -> None:
    import noisescope

    def train(watched: bool) -> list[torch.Tensor]:
        model = Everything()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        ns = noisescope.watch(model, optimizer, address=free_address, source="per-example") if watched else None
        if ns is not None:
            ns._sender.tap = lambda record: None  # measure although no sidecar listens (else the hooks stay off)
        for step in range(3):
            tokens = torch.randint(0, 9, (B, 4), generator=torch.Generator().manual_seed(step))
            model(tokens).square().mean().backward()
            optimizer.step()
            optimizer.zero_grad()
        if ns is not None:
            assert ns._meter._per_example is not None and ns._meter._per_example.armed
            ns.remove()
        return [p.detach().clone() for p in model.parameters()]

    for plain, hooked in zip(train(False), train(True)):
        assert torch.equal(plain, hooked)


# ------------------------------------------------------------------ real training, end to end

E2E_STEPS = 160
E2E_BETA = 0.95


class DigitRows(nn.Module):
    """load_digits rows as 8 tokens: Linear → sequence-first self-attention → GroupNorm → ConvTranspose1d → Linear.

    Before the per-example source covered them, the attention, GroupNorm and ConvTranspose1d parameters
    (1252 of 2046, 61%) were uncovered, so source='auto' fell back to accumulation."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.rows = nn.Linear(8, 16)
        self.attn = nn.MultiheadAttention(16, 2)
        self.norm = nn.GroupNorm(4, 16)
        self.up = nn.ConvTranspose1d(16, 4, 2, stride=2)
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.rows(x.view(-1, 8, 8)))
        s = h.transpose(0, 1)
        h = h + self.attn(s, s, s)[0].transpose(0, 1)
        u = torch.relu(self.up(self.norm(h.transpose(1, 2))))
        return self.head(u.flatten(1))


@pytest.fixture
def e2e_sidecar():
    from conftest import Sidecar

    s = Sidecar("--beta", str(E2E_BETA))
    try:
        yield s
    finally:
        s.stop()


def test_real_training_through_the_new_layers_is_per_example_under_auto_and_b_simple_right(e2e_sidecar) -> None:
    """source='auto' now picks per-example for this model (every parameter covered); as in
    test_per_example_accuracy_e2e, the sidecar equals the exact replica of each step and its smoothed
    B_simple is within 25% of the whole-set truth (float32 truth: half the cost, round-off ~1e-6)."""
    from test_accuracy_e2e import assert_complete_and_accurate, compare, format_report, step_events
    from test_per_example_accuracy_e2e import BATCH, run_training

    run = "per-example-more-layers-e2e"
    trace = run_training(e2e_sidecar.address, run, model=DigitRows(), steps=E2E_STEPS, truth_dtype=torch.float32)
    events, layer_events = step_events(e2e_sidecar, run, E2E_STEPS)
    report = compare(trace, events, E2E_BETA, layer_events)
    print("\n" + format_report(report).replace("accuracy e2e", "per-example new layers e2e"))
    assert_complete_and_accurate(report, events, steps=E2E_STEPS, source="per-example", global_batch=BATCH, micro_batches=1)


@pytest.mark.parametrize("dtype, rel", [(torch.float32, 1e-4), (torch.bfloat16, 5e-2)], ids=["float32", "bfloat16"])
def test_lower_precision_training_stays_close_to_the_float64_truth(free_address: str, dtype: torch.dtype, rel: float) -> None:
    """The same model trained in float32 (bfloat16): sums within that dtype's round-off of the float64 truth."""
    model = Everything().double()
    y = torch.randn_like(model(TOKENS))
    exact = exact_sums(model, TOKENS, y, 1 / B)
    measured, _ = measure_one_step(model.to(dtype), TOKENS, y.to(dtype), free_address, source="per-example")
    assert_sums_match(measured, exact, rel=rel)


@pytest.mark.filterwarnings("ignore:There is a performance drop")
def test_transformer_encoder_without_dropout_is_fully_covered(free_address: str) -> None:
    """nn.TransformerEncoder's layers call their MultiheadAttention, Linears and LayerNorms as modules."""
    torch.manual_seed(10)
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True, norm_first=True)
    model = nn.Sequential(nn.TransformerEncoder(layer, 2, enable_nested_tensor=False), nn.Linear(8, 3)).double()
    check(model, randn(4, 8), free_address)


def test_unbatched_attention_leaves_the_step_without_sums_and_training_unharmed(free_address: str) -> None:
    """A sequence of length B through an unbatched MultiheadAttention: its dim 0 is not examples."""
    torch.manual_seed(11)
    model = nn.Sequential(nn.Linear(8, 8), Unbatched()).double()
    x = randn(8)
    _, records = measure_one_step(model, x, torch.randn_like(model(x)), free_address, source="per-example")
    assert records[0].per_example_sums == () and not records[0].skipped


class Unbatched(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x)[0]


class WeightsInLoss(nn.Module):
    """The returned attention weights feed the output too: their path is part of each example's gradient."""

    def __init__(self, average: bool, only_weights: bool = False) -> None:
        super().__init__()
        torch.manual_seed(12)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.average, self.only_weights = average, only_weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, weights = self.attn(x, x, x, average_attn_weights=self.average)
        summary = weights.flatten(1)[:, :8, None].expand(-1, -1, 8).transpose(1, 2)[:, :4]  # [B, 4, 8]
        return summary if self.only_weights else out + summary


@pytest.mark.parametrize("average, only_weights", [(True, False), (False, False), (True, True)], ids=["averaged", "per-head", "weights-only"])
def test_attention_weights_used_by_the_loss(free_address: str, average: bool, only_weights: bool) -> None:
    check(WeightsInLoss(average, only_weights).double(), randn(4, 8), free_address)


def test_chunked_a_few_examples_at_a_time_the_sums_are_the_same(free_address: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A chunk bound of a few hundred elements: attention, convolutions and the tied cross term go 1–2 examples at a time."""
    from noisescope import _per_example_math

    monkeypatch.setattr(_per_example_math, "CHUNK_ELEMENTS", 300)
    check(Everything().double(), TOKENS, free_address)
