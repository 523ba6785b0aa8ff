"""Per-example sums for the layers beyond `_per_example_math`'s, and for parameters computed jointly.

- Conv3d and ConvTranspose1d/2d/3d: each example's weight gradient from the convolution's own
  backward kernel (one grouped convolution_backward over the chunk, transposed for ConvTranspose), chunked.
- GroupNorm: Σ over positions of δ ⊙ x̂ (x̂ recomputed from the input), and of δ.
- MultiheadAttention runs F.multi_head_attention_forward, so its children are never called: its
  parameters' per-example gradients come from vmap over a vjp of the module's own forward given
  the stored inputs and δ at its output, a chunk of examples at a time (materialised, bounded).
- Tied parameters (one tensor used by several modules): the per-example gradient is the sum of the
  modules' contributions, so the squared norm needs their cross terms. Linear+Linear and
  Embedding+Embedding concatenate the calls; Embedding+Linear (a language model's tied output
  head) adds 2·Σ_{t,s} (δ^emb_t·h_s)·δ^head_s[token_t] per example, with no per-example gradient.

Same conventions as `_per_example_math`: δ carries the loss's scale; float64 0-dim results.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vjp, vmap

from . import _per_example_math as pem

Call = tuple[Any, Tensor]  # (the layer's input, or AttentionInputs; δ at its output)

_CONV_TRANSPOSE = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
CONVOLUTIONS: tuple[type[nn.Module], ...] = (nn.Conv3d, *_CONV_TRANSPOSE)
NORMALISATIONS: tuple[type[nn.Module], ...] = (nn.GroupNorm,)


# ------------------------------------------------------------------ convolutions


def convolution(module: nn.Conv3d | nn.ConvTranspose1d | nn.ConvTranspose2d | nn.ConvTranspose3d, calls: Sequence[Call]) -> tuple[Tensor, Tensor | None]:
    """(weight term, bias term): per-example weight gradients, C·k·O/g per example, a bounded chunk at a time."""
    parts = pem._chunks(calls[0][0].shape[0], module.weight.numel(), pem.CACHED_ELEMENTS)
    weight_term = lambda pairs: pem.materialised_sq_norm(pairs, lambda x, d: _per_example_weight_grads(module, x, d))  # noqa: E731
    return pem.chunked_terms(calls, parts, weight_term, bias=module.bias is not None)


def _per_example_weight_grads(module: nn.Module, x: Tensor, delta: Tensor) -> Tensor:
    """[B, *weight.shape] from convolution_backward as one grouped convolution for the chunk."""
    transposed = isinstance(module, _CONV_TRANSPOSE)
    dims = len(module.kernel_size)
    padding = module.padding
    if not transposed and (module.padding_mode != "zeros" or isinstance(padding, str)):
        x = F.pad(x, list(module._reversed_padding_repeated_twice), mode=pem._PAD_MODES[module.padding_mode])
        padding = (0,) * dims
    output_padding = [0] * dims
    if transposed:  # from the shapes: forward(x, output_size=...) may have chosen other than module.output_padding
        for i in range(dims):
            natural = (x.shape[2 + i] - 1) * module.stride[i] - 2 * padding[i] + module.dilation[i] * (module.kernel_size[i] - 1) + 1
            output_padding[i] = delta.shape[2 + i] - natural
    return pem.grouped_weight_grads(
        x, delta, tuple(module.weight.shape), module.stride, padding, module.dilation, transposed, output_padding, module.groups
    )


# ------------------------------------------------------------------ GroupNorm


def group_norm(module: nn.GroupNorm, calls: Sequence[Call]) -> tuple[Tensor | None, Tensor | None]:
    """nn.GroupNorm(affine): weight Σ_pos δ ⊙ x̂ per channel, bias Σ_pos δ per channel."""
    weight_grad: Tensor | None = None
    bias_grad: Tensor | None = None
    for x, d in calls:
        x, d = pem._wide(x), pem._wide(d)
        batch, channels = x.shape[0], x.shape[1]
        x_hat = F.group_norm(x, module.num_groups, None, None, module.eps)
        w = (d * x_hat).reshape(batch, channels, -1).sum(2)
        b = d.reshape(batch, channels, -1).sum(2)
        weight_grad = w if weight_grad is None else weight_grad + w
        bias_grad = b if bias_grad is None else bias_grad + b
    if module.weight is None:
        return None, None
    return weight_grad.square().sum(dtype=torch.float64), bias_grad.square().sum(dtype=torch.float64)  # type: ignore[union-attr]


# ------------------------------------------------------------------ MultiheadAttention


def attention_reason(module: nn.MultiheadAttention) -> str:
    """Why this MultiheadAttention's parameters cannot be covered ("" when they can)."""
    if type(module).forward is not nn.MultiheadAttention.forward:
        return f"{type(module).__name__} overrides MultiheadAttention.forward"
    if module.dropout > 0:
        return f"MultiheadAttention(dropout={module.dropout}): its attention dropout cannot be replayed per example"
    return ""


# Every parameter MultiheadAttention may have, as attribute paths, in pairs (the Coverage slots).
ATTENTION_PAIRS: tuple[tuple[str, str], ...] = (
    ("in_proj_weight", "in_proj_bias"),
    ("q_proj_weight", "k_proj_weight"),
    ("v_proj_weight", ""),
    ("bias_k", "bias_v"),
    ("out_proj.weight", "out_proj.bias"),
)


@dataclass(frozen=True, eq=False)
class ParamPair:
    """Coverage key for parameters that (weight, bias) of one module does not describe: two attribute paths."""

    module: nn.Module
    names: tuple[str, str]


def attention_slot(
    module: nn.MultiheadAttention, param: nn.Parameter, pairs: dict[tuple[int, tuple[str, str]], ParamPair]
) -> tuple[ParamPair, int] | None:
    """The (key, position) of one of the attention's parameters; `pairs` keeps each module's keys, made on first use."""
    for names in ATTENTION_PAIRS:
        for position, name in enumerate(names):
            if name and _attribute(module, name) is param:
                key = pairs.setdefault((id(module), names), ParamPair(module, names))
                return key, position
    return None


def _attribute(module: nn.Module, path: str) -> Any:
    for part in path.split("."):
        module = getattr(module, part, None)  # type: ignore[assignment]
    return module


@dataclass
class AttentionInputs:
    """One MultiheadAttention call's inputs (batch at `batch_dim`), kept until δ arrives."""

    query: Tensor
    key: Tensor
    value: Tensor
    key_padding_mask: Tensor | None
    attn_mask: Tensor | None
    is_causal: bool
    batch_dim: int
    weights: Tensor | None = None  # the returned attention weights, where they take part in autograd
    average_weights: bool = True
    weights_delta: Tensor | None = None  # δ at them, when the loss uses them

    def select(self, index: Tensor) -> AttentionInputs:
        """The inputs of the examples at `index` (the per-example sample), copies of those rows."""
        b, heads = self.batch_dim, None
        mask = self.attn_mask
        if mask is not None and mask.dim() == 3:  # [B·heads, L, S]: per example
            heads = mask.shape[0] // self.query.shape[b]
            mask = mask.unflatten(0, (-1, heads)).index_select(0, index).flatten(0, 1)
        return replace(
            self,
            query=self.query.index_select(b, index),
            key=self.key.index_select(b, index),
            value=self.value.index_select(b, index),
            key_padding_mask=self.key_padding_mask.index_select(0, index) if self.key_padding_mask is not None else None,
            attn_mask=mask,
            weights_delta=self.weights_delta.index_select(0, index) if self.weights_delta is not None else None,
        )

    def register(self, output: Tensor, on_delta: Callable[[Tensor], None]) -> None:
        """Calls on_delta with δ at the output once the backward has passed both the output and the weights.

        Where the loss also uses the returned weights, their path to the parameters is part of each
        example's gradient: the vjp then takes δ at both.
        """
        if self.weights is None:
            output.register_hook(on_delta)
            return
        weights, self.weights = self.weights, None

        def both(grads: Sequence[Tensor | None]) -> None:
            self.weights_delta = grads[1]
            on_delta(grads[0] if grads[0] is not None else torch.zeros_like(output))

        torch.autograd.graph.register_multi_grad_hook((output, weights), both, mode="all")


_ATTENTION_ARGS = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask", "average_attn_weights", "is_causal")


def attention_call(module: nn.MultiheadAttention, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> tuple[Any, Any, Any]:
    """(query batch-first, for the batch check; AttentionInputs; the attention output δ arrives at)."""
    bound = dict(zip(_ATTENTION_ARGS, args), **kwargs)
    query = bound.get("query")
    out = output[0] if isinstance(output, tuple) and output else output
    if not isinstance(query, Tensor) or query.dim() != 3:
        return None, None, out  # unbatched: no batch dim, so the batch check voids the row
    batch_dim = 0 if module.batch_first else 1

    def kept(name: str) -> Tensor | None:
        t = bound.get(name)
        return t.detach() if isinstance(t, Tensor) else None

    saved = AttentionInputs(
        query=query.detach(),
        key=bound["key"].detach(),
        value=bound["value"].detach(),
        key_padding_mask=kept("key_padding_mask"),
        attn_mask=kept("attn_mask"),
        is_causal=bool(bound.get("is_causal", False)),
        batch_dim=batch_dim,
        average_weights=bool(bound.get("average_attn_weights", True)),
    )
    weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
    if isinstance(weights, Tensor) and weights.requires_grad:
        saved.weights = weights
    return query.movedim(batch_dim, 0), saved, out


def attention(module: nn.MultiheadAttention, names: Sequence[str], calls: Sequence[Call]) -> dict[str, Tensor]:
    """{parameter path: Σ_e |its example-e gradient|²} for `names`, from vmap(vjp(forward)) per chunk of examples.

    Per-example gradients of the module's parameters (and attention weights) are materialised,
    CHUNK_ELEMENTS at most at a time;
    a float16/bfloat16 module is recomputed in float32 (every parameter, so that the dtypes agree).
    """
    params = {name: pem._wide(p.detach()) for name, p in module.named_parameters()}
    first = calls[0][0]
    batch = first.query.shape[first.batch_dim]
    device = first.query.device
    # Materialised per example: the parameters' gradients, and the attention's weights, their softmax and grad.
    steps = max(c[0].query.shape[1 - first.batch_dim] * c[0].key.shape[1 - first.batch_dim] for c in calls)
    per_example = sum(p.numel() for p in params.values()) + 3 * module.num_heads * steps
    sums = {name: torch.zeros((), dtype=torch.float64, device=device) for name in names}
    for part in pem._chunks(batch, per_example):
        total: dict[str, Tensor] | None = None
        for inputs, delta in calls:
            grads = _attention_grads(module, params, inputs, delta, part)
            total = grads if total is None else {n: total[n] + grads[n] for n in names}
        assert total is not None
        for name in names:
            g = pem._wide(total[name])
            sums[name] = sums[name] + pem._dot(g, g)
    return sums


def _attention_grads(module: nn.MultiheadAttention, params: dict[str, Tensor], inputs: AttentionInputs, delta: Tensor, part: slice) -> dict[str, Tensor]:
    b = inputs.batch_dim
    heads = module.num_heads

    def rows(t: Tensor) -> Tensor:
        return pem._wide(t[part] if b == 0 else t[:, part])

    mask = inputs.attn_mask
    mask_dim: int | None = None
    if mask is not None and mask.dim() == 3:  # [B·heads, L, S]: per example
        mask = mask.reshape(-1, heads, *mask.shape[1:])[part]
        mask_dim = 0
    if mask is not None and mask.is_floating_point():
        mask = pem._wide(mask)
    padding = inputs.key_padding_mask
    padding = padding[part] if padding is not None else None
    weights_delta = inputs.weights_delta
    weights_delta = pem._wide(weights_delta[part]) if weights_delta is not None else None  # batch first, always

    def one(q: Tensor, k: Tensor, v: Tensor, d: Tensor, kpm: Tensor | None, am: Tensor | None, dw: Tensor | None) -> dict[str, Tensor]:
        def forward(p: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
            # need_weights=True takes the plain math path (vmap has no batching rule for fused attention).
            return functional_call(
                module,
                p,
                (q.unsqueeze(b), k.unsqueeze(b), v.unsqueeze(b)),
                {
                    "key_padding_mask": kpm.unsqueeze(0) if kpm is not None else None,
                    "attn_mask": am,
                    "need_weights": True,
                    "average_attn_weights": inputs.average_weights,
                    "is_causal": inputs.is_causal,
                },
            )

        (out, w), back = vjp(forward, params)
        return back((d.unsqueeze(b), dw.unsqueeze(0) if dw is not None else torch.zeros_like(w)))[0]

    with torch.enable_grad():
        in_dims = (b, b, b, b, 0 if padding is not None else None, mask_dim, 0 if weights_delta is not None else None)
        return vmap(one, in_dims=in_dims)(
            rows(inputs.query), rows(inputs.key), rows(inputs.value), rows(delta), padding, mask, weights_delta
        )


# ------------------------------------------------------------------ tied parameters


def tied_reason(modules: Sequence[nn.Module], param: nn.Parameter) -> str:
    """Why a parameter used by several (each covered) modules cannot be covered ("" when it can)."""
    roles = {_role(m, param) for m in modules}
    names = " and ".join(sorted({type(m).__name__ for m in modules}))
    if roles == {"bias"} and all(isinstance(m, nn.Linear) for m in modules):
        return ""
    if roles == {"weight"} and all(isinstance(m, (nn.Linear, nn.Embedding)) for m in modules):
        embeddings = [m for m in modules if isinstance(m, nn.Embedding)]
        if len({m.padding_idx for m in embeddings}) > 1:
            return "shared by Embeddings with different padding_idx"
        return ""
    return f"shared by several modules ({names}): the cross terms of that combination are not computed"


def _role(module: nn.Module, param: nn.Parameter) -> str:
    if param is getattr(module, "weight", None):
        return "weight"
    if param is getattr(module, "bias", None):
        return "bias"
    return "other"


@dataclass(eq=False)
class Unit:
    """Modules whose per-example terms are computed together: a MultiheadAttention, or modules sharing a parameter.

    A key of the per-example rows in place of its modules; `terms` gives (parameter index, term) pairs.
    """

    slots: dict[nn.Module, tuple[int | None, int | None]]  # member → (weight index, bias index)
    attention: dict[str, int] = field(default_factory=dict)  # MultiheadAttention: parameter path → index

    def terms(self, calls: Sequence[Any], form: str) -> list[tuple[int, Tensor]]:
        """`calls`: the unit's _Call objects (module, x, delta) whose δ arrived."""
        if self.attention:
            module = next(iter(self.slots))
            sums = attention(module, list(self.attention), [(c.x, c.delta) for c in calls])  # type: ignore[arg-type]
            return [(self.attention[name], term) for name, term in sums.items()]
        by_module: dict[nn.Module, list[tuple[Tensor, Tensor]]] = {}
        for c in calls:
            by_module.setdefault(c.module, []).append((c.x, c.delta))
        users: dict[int, list[tuple[nn.Module, str]]] = {}
        for module, (weight, bias) in self.slots.items():
            for index, role in ((weight, "weight"), (bias, "bias")):
                if index is not None:
                    users.setdefault(index, []).append((module, role))
        out: list[tuple[int, Tensor]] = []
        for index, contributors in users.items():
            term = _shared_term([(m, role, by_module.get(m, [])) for m, role in contributors], form)
            if term is not None:
                out.append((index, term))
        return out


def _shared_term(contributors: list[tuple[nn.Module, str, list[tuple[Tensor, Tensor]]]], form: str) -> Tensor | None:
    """Σ_e |Σ_modules contribution_e|² of one parameter: Linear and Embedding weights, Linear biases."""
    contributors = [c for c in contributors if c[2]]  # a member not called this forward contributes nothing
    if not contributors:
        return None
    if contributors[0][1] == "bias":
        return pem.bias_sq_norm(pem._sequence([d for _, _, calls in contributors for _, d in calls]))
    linear = [call for m, _, calls in contributors if isinstance(m, nn.Linear) for call in calls]
    embedding = [call for m, _, calls in contributors if isinstance(m, nn.Embedding) for call in calls]
    term: Tensor | None = None
    if linear:
        term = pem.linear(linear, form)[0]
    if embedding:
        first = next(m for m, _, calls in contributors if isinstance(m, nn.Embedding))
        own = pem.embedding(first, embedding)  # type: ignore[arg-type]
        term = own if term is None else term + own
        if linear:
            term = term + 2 * _embedding_linear_cross(first.padding_idx, embedding, linear)  # type: ignore[arg-type]
    return term


def _embedding_linear_cross(padding_idx: int | None, embedding: list[tuple[Tensor, Tensor]], linear: list[tuple[Tensor, Tensor]]) -> Tensor:
    """Σ_e ⟨embedding's gradient_e, Linear's gradient_e⟩ for one [V, d] weight.

    The embedding's is Σ_t onehot(token_t) ⊗ δ^emb_t, the Linear's Σ_s δ^lin_s ⊗ h_s, so the inner
    product is Σ_{t,s} δ^lin_s[token_t]·(δ^emb_t·h_s): a [T, S] product and a gather per example.
    """
    tokens = torch.cat([x.reshape(x.shape[0], -1) for x, _ in embedding], 1)  # [B, T]
    d_emb = pem._wide(torch.cat([d.reshape(d.shape[0], -1, d.shape[-1]) for _, d in embedding], 1))  # [B, T, d]
    h = pem._wide(pem._sequence([x for x, _ in linear]))  # [B, S, d]
    d_lin = pem._wide(pem._sequence([d for _, d in linear]))  # [B, S, V]
    if padding_idx is not None:  # the padding row gets no gradient from the embedding
        d_emb = d_emb * (tokens != padding_idx).unsqueeze(2).to(d_emb.dtype)
    batch, steps = tokens.shape
    total = torch.zeros((), dtype=torch.float64, device=tokens.device)
    for part in pem._chunks(batch, 2 * steps * h.shape[1]):
        products = torch.bmm(d_emb[part], h[part].transpose(1, 2))  # [b, T, S]: δ^emb_t·h_s
        picked = d_lin[part].gather(2, tokens[part].unsqueeze(1).expand(-1, h.shape[1], -1))  # [b, S, T]: δ^lin_s[token_t]
        total = total + pem._dot(products, picked.transpose(1, 2).contiguous())
    return total


def units(modules: dict[Any, tuple[int | None, int | None]]) -> dict[nn.Module, Unit]:
    """The joint Unit of each module that needs one: MultiheadAttentions (from their ParamPair keys), modules sharing an index."""
    out: dict[nn.Module, Unit] = {}
    for key, pair in modules.items():
        if isinstance(key, ParamPair):
            unit = out.setdefault(key.module, Unit(slots={key.module: (None, None)}))
            for name, index in zip(key.names, pair):
                if name and index is not None:
                    unit.attention[name] = index
    # Modules sharing a parameter index, grouped transitively.
    plain = [(m, pair) for m, pair in modules.items() if isinstance(m, nn.Module) and m not in out]
    by_index: dict[int, list[nn.Module]] = {}
    for m, pair in plain:
        for index in pair:
            if index is not None:
                by_index.setdefault(index, []).append(m)
    group: dict[nn.Module, Unit] = {}
    for members in by_index.values():
        if len(members) < 2:
            continue
        merged = {id(u): u for u in (group.get(m) for m in members) if u is not None}
        unit = Unit(slots={})
        for old in merged.values():
            unit.slots.update(old.slots)
        unit.slots.update((m, modules[m]) for m in members)
        for m in unit.slots:
            group[m] = unit
    out.update(group)
    return out

