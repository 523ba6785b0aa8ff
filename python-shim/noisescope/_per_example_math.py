"""Σ over examples of |example e's contribution to a parameter's gradient|², from a layer's input and δ.

δ is the gradient of the loss at the layer's output, as backward computes it: whatever scale
the loss had (mean or sum reduction, /k for accumulation, an AMP loss scale) is in δ, so each
contribution has the units of `.grad` and the contributions sum to the micro-batch's gradient.

Every function takes the calls of one module in one forward (a module called twice adds both
calls' terms to each example's contribution: sequences are concatenated, never norms added)
and returns a float64 0-dim tensor on the inputs' device, without a host sync.
"""
from __future__ import annotations

import functools
import math
import operator
import time
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Call = tuple[Tensor, Tensor]  # (the layer's input, δ at its output) of one forward call

# Elements a chunk of examples may materialise at once (64 MiB in fp32).
CHUNK_ELEMENTS = 1 << 24


def _wide(t: Tensor) -> Tensor:
    """fp16/bf16 → fp32 for the arithmetic; fp32/fp64 as they are."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


# fp32 dot products are taken over pieces this long and added in fp64 (the meter's measure:
# one BLAS dot over 2^18 elements is off by ~3e-7 relative); a fused dot skips the squared copy.
_DOT_PIECE = 1 << 18


def _dot(u: Tensor, v: Tensor) -> Tensor:
    """Σ u·v over all elements (same shapes), accumulated in fp64 across pieces, as a 0-dim fp64 tensor."""
    square = v is u
    u = u.reshape(-1)
    v = u if square else v.reshape(-1)  # a square: one view (or copy) of it
    if u.dtype == torch.float64 or u.numel() <= _DOT_PIECE:
        return torch.dot(u, v).to(torch.float64)
    return torch.stack([torch.dot(a, b) for a, b in zip(u.split(_DOT_PIECE), v.split(_DOT_PIECE))]).sum(dtype=torch.float64)


def _sq(t: Tensor) -> Tensor:
    """Σ t² as a 0-dim fp64 tensor: one fused dot (`t.square().sum(dtype=float64)` is ~10× slower on the CPU)."""
    return _dot(t, t)


# Per-example weight gradients that are only reduced (convolutions) are made in chunks this small:
# they stay in cache for the dot, and glibc reuses the freed chunk instead of handing fresh pages in
# (the benchmark CNN's 4.7 MB per-example gradients cost ~2,300 page faults a step in one piece).
CACHED_ELEMENTS = 1 << 18


def _chunks(batch: int, per_example: int, limit: int | None = None) -> list[slice]:
    step = max(1, min(CHUNK_ELEMENTS, limit or CHUNK_ELEMENTS) // max(1, per_example))
    return [slice(i, min(i + step, batch)) for i in range(0, batch, step)]


def sequence_form(steps: int, d_in: int, d_out: int) -> str:
    """The cheaper exact form for an example's T×d_in inputs and T×d_out δ: both are exact.

    Gram: Σ_{s,t}(a_s·a_t)(δ_s·δ_t), T²(d_in + d_out) multiply-adds; materialising δᵀa: T·d_in·d_out.
    Each then takes one fused dot over what it wrote (T² or d_in·d_out elements), ~2 multiply-adds an
    element on one CPU thread (measured on the benchmark transformer's Linear shapes, near the tie).
    """
    gram = steps * steps * (d_in + d_out + _ELEMENTWISE)
    materialise = (steps + _ELEMENTWISE) * d_in * d_out
    return "gram" if gram <= materialise else "materialise"


_ELEMENTWISE = 2


def weight_sq_norm(a: Tensor, delta: Tensor, form: str = "auto") -> Tensor:
    """Σ_e |δ_e a_eᵀ|²_F for a: [E, d_in, T], δ: [E, d_out, T] (E examples, or example × group).

    Channels before positions: a convolution's unfolded input and δ come that way, without copies.
    """
    examples, d_in, steps = a.shape
    d_out = delta.shape[1]
    a, delta = _wide(a), _wide(delta)
    if steps == 1:  # the outer product's norm factors: |a_e|²·|δ_e|²
        return _dot(_row_sq(a[..., 0]), _row_sq(delta[..., 0]))
    if form == "auto":
        form = sequence_form(steps, d_in, d_out)
    if form not in ("gram", "materialise"):
        raise ValueError(f"form must be 'auto', 'gram' or 'materialise', got {form!r}")
    parts = _chunks(examples, steps * steps if form == "gram" else d_in * d_out)
    if len(parts) == 1:  # no slices and no running sum from zero: two ops fewer a piece, bitwise the same
        return _weight_part(a, delta, form)
    total = torch.zeros((), dtype=torch.float64, device=a.device)
    for part in parts:
        total = total + _weight_part(a[part], delta[part], form)
    return total


def _weight_part(a: Tensor, delta: Tensor, form: str) -> Tensor:
    if form == "gram":
        return _dot(torch.bmm(a.transpose(1, 2), a), torch.bmm(delta.transpose(1, 2), delta))
    grads = torch.bmm(delta, a.transpose(1, 2))
    return _dot(grads, grads)


def bias_sq_norm(delta: Tensor) -> Tensor:
    """Σ_e |Σ_t δ_e,t|² for δ: [E, T, d_out]."""
    return _sq(_wide(delta).sum(1))


def linear(calls: Sequence[Call], form: str = "auto") -> tuple[Tensor, Tensor]:
    """nn.Linear: (weight term, bias term). Inputs [B, *, d_in]; middle dims are one sequence."""
    if len(calls) == 1 and calls[0][0].dim() == 2:
        return _linear_2d(*calls[0])
    a = _wide(_sequence([x for x, _ in calls]))
    delta = _wide(_sequence([d for _, d in calls]))
    examples, steps, d_in = a.shape
    if form == "auto":
        form = sequence_form(steps, d_in, delta.shape[2])
    if steps == 1 or form != "gram":  # weight_sq_norm checks the form
        return weight_sq_norm(a.transpose(1, 2), delta.transpose(1, 2), form), bias_sq_norm(delta)
    parts = _chunks(examples, steps * steps)
    if len(parts) == 1:
        return _gram_terms(a, delta)
    weight = bias = torch.zeros((), dtype=torch.float64, device=a.device)
    for part in parts:
        w, b = _gram_terms(a[part], delta[part])
        weight, bias = weight + w, bias + b
    return weight, bias


# Parts of a sequence Linear from this many multiply-adds (E·T²·(d_in + d_out)) make ¾ of each Gram, not all of it:
# the quarter saved (~90 µs at bmm's ~46 G multiply-adds/s on one thread here) pays for six more ops (~10 µs each amid
# a step; timed alone, halves broke even at ~0.6 of this).
_HALVES_FROM = 1 << 24


def _gram_terms(a: Tensor, delta: Tensor) -> tuple[Tensor, Tensor]:
    """(Σ_e Σ_{s,t} (a_s·a_t)(δ_s·δ_t), Σ_e |Σ_t δ_t|²) for a: [E, T, d_in], δ: [E, T, d_out] (fp32/fp64).

    The bias term is the sum of δ's Gram, Σ_{s,t} δ_s·δ_t, made anyway: no second pass over δ (the benchmark block's
    head: a [16, 64, 1000] δ, ~80 µs). Both Grams are symmetric, so from _HALVES_FROM on only ¾ of each is made: the
    right half of the columns [G₁₂; G₂₂] and the top-left quarter G₁₁, δ's G₁₂ doubled (exactly) to stand for G₂₁ too
    (the benchmark block's exact terms, thread CPU per step: 6.99 → 6.51 ms inline, 7.18 → 6.52 ms on the worker;
    bench_per_example_before_after.py 74b46dc transformer).
    """
    examples, steps, _ = a.shape
    if examples * steps * steps * (a.shape[2] + delta.shape[2]) < _HALVES_FROM:
        grams = torch.bmm(delta, delta.transpose(1, 2))
        return _dot(torch.bmm(a, a.transpose(1, 2)), grams), grams.sum(dtype=torch.float64)
    half = steps // 2
    right_a = torch.bmm(a, a[:, half:].transpose(1, 2))  # [E, T, T - half]: G₁₂ in the first `half` rows, then G₂₂
    right_d = torch.bmm(delta, delta[:, half:].transpose(1, 2))
    right_d[:, :half].mul_(2)
    first_a, first_d = a[:, :half], delta[:, :half]
    corner_a = torch.bmm(first_a, first_a.transpose(1, 2))
    corner_d = torch.bmm(first_d, first_d.transpose(1, 2))
    weight = _dot(right_a, right_d) + _dot(corner_a, corner_d)
    return weight, right_d.sum(dtype=torch.float64) + corner_d.sum(dtype=torch.float64)


def _linear_2d(x: Tensor, delta: Tensor) -> tuple[Tensor, Tensor]:
    """One example per row: |δ_e a_eᵀ|² = |a_e|²·|δ_e|², and the bias term is Σ_e |δ_e|².

    Four small ops (the hook runs once per layer per measured step, so op count is most of its cost).
    """
    delta_sq = _row_sq(delta)
    return _dot(_row_sq(x), delta_sq), delta_sq.sum(dtype=torch.float64)


def row_norms(t: Tensor) -> Tensor:
    """|t_e| per row of a 2-D tensor, in at least fp32 (fp64 stays fp64), without a widened copy."""
    return torch.linalg.vector_norm(t, dim=1, dtype=torch.float64 if t.dtype is torch.float64 else torch.float32)


def row_linear_roots(x_norms: Sequence[Tensor], delta_norms: Sequence[Tensor], ones: Tensor) -> Tensor:
    """L Linears on [B, d_in] rows from their |a_e| and |δ_e| ([B] each; `ones` [B], all one dtype and device): the
    square roots of [L weight terms, L bias terms] in fp64, by |δ_e a_eᵀ|² = |a_e|²·|δ_e|² and Σ_e |δ_e|².

    All layers in four ops (on the CPU each costs ~10 µs at a step's end, several times its cost when timed alone).
    """
    layers = len(x_norms)
    rows = torch.stack([*x_norms, *[ones] * layers]) * torch.stack([*delta_norms, *delta_norms])
    return torch.linalg.vector_norm(rows, dim=1, dtype=torch.float64)


def _row_sq(t: Tensor) -> Tensor:
    """|t_e|² per row of a 2-D tensor, in at least fp32, without a squared or widened copy.

    Not linalg.vecdot: it multiplies into a [B, d] temporary first (in a backward hook on the benchmark
    MLP's layers, 1.2–1.6× the norm's cost when timed alone; within noise in the whole step).
    """
    return torch.linalg.vector_norm(t, dim=1, dtype=torch.float64 if t.dtype is torch.float64 else torch.float32).square_()


def _sequence(parts: Sequence[Tensor]) -> Tensor:
    """[B, T, d] from one call's [B, *, d] (a view) or several calls' (concatenated: a copy only then)."""
    views = [t.reshape(t.shape[0], -1, t.shape[-1]) for t in parts]
    return views[0] if len(views) == 1 else torch.cat(views, 1)


_PAD_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate", "circular": "circular"}


def _columns(conv: nn.Conv1d | nn.Conv2d, x: Tensor, delta: Tensor, padded: bool = False) -> tuple[Tensor, Tensor]:
    """A convolution as a Linear over output positions: a [B·g, C/g·k, L] (a copy), δ [B·g, O/g, L] (a view).

    The input is padded as the module pads it (its padding mode, 'same' included) unless `padded`, then unfolded.
    """
    two_d = isinstance(conv, nn.Conv2d)
    pad = list(conv._reversed_padding_repeated_twice)
    if any(pad) and not padded:  # zeros: constant_pad_nd itself, without F.pad's Python dispatch (the same op)
        x = torch.constant_pad_nd(x, pad) if conv.padding_mode == "zeros" else F.pad(x, pad, mode=_PAD_MODES[conv.padding_mode])
    if not two_d:  # Conv1d as a 2-D convolution of height 1
        x, delta = x.unsqueeze(2), delta.unsqueeze(2)
    kernel, stride, dilation = (
        (tuple(v) if two_d else (1, v[0])) for v in (conv.kernel_size, conv.stride, conv.dilation)
    )
    cols = _unfold(x, kernel, dilation, stride, (delta.shape[2], delta.shape[3]))  # [B, C·k, L]
    batch, groups, positions = x.shape[0], conv.groups, cols.shape[-1]
    return cols.view(batch * groups, -1, positions), delta.reshape(batch * groups, -1, positions)


def _unfold(x: Tensor, kernel: tuple[int, ...], dilation: tuple[int, ...], stride: tuple[int, ...], out: tuple[int, int]) -> Tensor:
    """F.unfold of [B, C, H, W] with no padding as one copy of a strided window view (F.unfold: 1.4–6× slower
    on the benchmark CNN's inputs). `out`: the output positions (H', W'), as δ has them."""
    b, c = x.shape[:2]
    return _windows(x, kernel, dilation, stride, out).reshape(b, c * kernel[0] * kernel[1], out[0] * out[1])


def _windows(x: Tensor, kernel: tuple[int, ...], dilation: tuple[int, ...], stride: tuple[int, ...], out: tuple[int, int]) -> Tensor:
    """[B, C, kh, kw, H', W']: the unfold of [B, C, H, W] (no padding) as a strided view."""
    b, c = x.shape[:2]
    sb, sc, sh, sw = x.stride()
    return x.as_strided(
        (b, c, kernel[0], kernel[1], out[0], out[1]),
        (sb, sc, sh * dilation[0], sw * dilation[1], sh * stride[0], sw * stride[1]),
        x.storage_offset(),
    )


def conv(module: nn.Conv1d | nn.Conv2d, calls: Sequence[Call], form: str = "auto") -> tuple[Tensor, Tensor | None]:
    """nn.Conv1d/Conv2d (any stride, padding, dilation, groups): (weight term, bias term)."""
    if form == "auto":
        form = _conv_form(module, calls)
    if form not in ("gram", "materialise", "phase"):
        raise ValueError(f"form must be 'auto', 'gram', 'materialise' or 'phase', got {form!r}")
    batch = calls[0][0].shape[0]
    if form == "phase":
        if len(calls) != 1 or any(v != 1 for v in module.dilation):
            raise ValueError("the phase form takes one call of a convolution without dilation")
        _, elements = _phase_plan(module, tuple(calls[0][1].shape[2:]))
        parts = _chunks(batch, elements * module.groups)
        return chunked_terms(calls, parts, lambda pairs: _phase_terms(module, *pairs[0]), bias=module.bias is not None)
    if form == "materialise":
        parts = _chunks(batch, module.weight.numel(), CACHED_ELEMENTS)

        def part_terms(pairs: Sequence[Call]) -> Tensor | tuple[Tensor, Tensor]:
            if len(pairs) == 1 and module.bias is not None and _folds_bias(module, *pairs[0]):
                return _folded_terms(module, *pairs[0])
            return materialised_sq_norm(pairs, lambda x, d: _per_example_conv_grads(module, x, d))

        return chunked_terms(calls, parts, part_terms, bias=module.bias is not None)
    unfolded = sum(math.prod(x.shape[1:]) for x, _ in calls) * math.prod(module.kernel_size)  # per example

    def gram(pairs: Sequence[Call]) -> Tensor:
        pieces = [_columns(module, x, d) for x, d in pairs]
        if len(pieces) == 1:
            return weight_sq_norm(*pieces[0], "gram")
        return weight_sq_norm(torch.cat([p[0] for p in pieces], 2), torch.cat([p[1] for p in pieces], 2), "gram")

    return chunked_terms(calls, _chunks(batch, unfolded), gram, bias=module.bias is not None)  # none: no pass over δ


def chunked_terms(
    calls: Sequence[Call],
    parts: Sequence[slice],
    weight_term: Callable[[Sequence[Call]], Tensor | tuple[Tensor, Tensor]],
    bias: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """(Σ over the chunks of weight_term(the chunk's widened calls), Σ_e |Σ over positions and calls of δ_e|²).

    One chunk (every step of a sampled source, most of an exact one) is computed as it is: no slices and no
    running sums from zero (each an op, ~3 µs of dispatch at s = 1 where a conv kernel takes ~50 µs); bitwise the same.
    """

    def terms(pairs: Sequence[Call]) -> tuple[Tensor, Tensor | None]:
        pairs = [(_wide(x), _wide(d)) for x, d in pairs]
        weight = weight_term(pairs)
        if type(weight) is tuple:
            return weight  # the bias term came with it (_folded_terms)
        # Bias: per example Σ over positions (and calls) of δ, per output channel.
        bias_term = _sq(functools.reduce(operator.add, (d.flatten(2).sum(2) for _, d in pairs))) if bias else None
        return weight, bias_term  # type: ignore[return-value]

    if len(parts) == 1:
        return terms(calls)
    weight = torch.zeros((), dtype=torch.float64, device=calls[0][0].device)
    bias_sum: Tensor | None = weight if bias else None
    for part in parts:
        w, b = terms([(x[part], d[part]) for x, d in calls])
        weight = weight + w
        bias_sum = None if b is None or bias_sum is None else bias_sum + b
    return weight, bias_sum


def materialised_sq_norm(pairs: Sequence[Call], grads: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """Σ_e |Σ over calls of example e's weight gradient|², from per-example weight gradients [B, *weight.shape]."""
    each = [grads(x, d) for x, d in pairs]
    total = _in_memory_order(each[0]) if len(each) == 1 else torch.stack(each).sum(0)
    return _dot(total, total)


def _in_memory_order(t: Tensor) -> Tensor:
    """A permuted view of a dense tensor (channels-last gradients) as its dims lie in memory: contiguous, so a norm
    over it needs no copy (the norm does not depend on the order)."""
    if t.is_contiguous():
        return t
    ordered = t.permute(sorted(range(t.dim()), key=t.stride, reverse=True))
    return ordered if ordered.is_contiguous() else t


def _conv_form(module: nn.Conv1d | nn.Conv2d, calls: Sequence[Call]) -> str:
    """Gram over output positions (L²(C·k/g + O/g)), per-example weight gradients (L·C·k·O/g²), or for one call
    without dilation the phase Grams (_phase_plan: no unfold, but ~20 more small ops, so only from a few examples on).

    They run at about the same rate on one CPU thread (grouped convolution_backward vs unfold + bmm,
    measured on the benchmark CNN's layers), so the multiply-add counts decide.
    """
    positions = sum(math.prod(d.shape[1:]) for _, d in calls) // module.out_channels  # shapes, not x[0] views (an op each)
    d_in = module.in_channels // module.groups * math.prod(module.kernel_size)
    d_out = module.out_channels // module.groups
    form = "gram" if positions * (d_in + d_out) < d_in * d_out else "materialise"
    if len(calls) == 1 and all(v == 1 for v in module.dilation):
        cost, _ = _phase_plan(module, tuple(calls[0][1].shape[2:]))
        saved = min(positions * (d_in + d_out), d_in * d_out) * positions - cost
        if saved * calls[0][1].shape[0] * module.groups > _PHASE_FIXED:
            return "phase"
    return form


# Multiply-adds that the phase form's ~20 small ops (four bmm's, copies, block sums) cost in a fixed ~100 µs beyond the
# other forms' on one CPU thread: on the benchmark CNN's last conv it is slower at 1–4 examples (+80 µs at 1) and
# faster from ~5 (−0.7 ms at 32), ~25 µs an example saved (thread CPU, each B timed alone, 5 interleaved rounds).
_PHASE_FIXED = 3_000_000


def _phase_plan(conv: nn.Conv1d | nn.Conv2d, out: tuple[int, ...]) -> tuple[int, int]:
    """The phase form's (multiply-adds, most elements held) per example and group, for output positions `out`."""
    return _phase_cost(
        tuple(conv.kernel_size), tuple(conv.stride), out, conv.in_channels // conv.groups, conv.out_channels // conv.groups
    )


@functools.lru_cache(maxsize=256)  # asked at every measured step: ~10 µs of Python a layer uncached
def _phase_cost(kernel: tuple[int, ...], stride: tuple[int, ...], out: tuple[int, ...], channels: int, d_out: int) -> tuple[int, int]:
    phases = _phases((1, *kernel)[-2:], (1, *stride)[-2:], (1, *out)[-2:])  # type: ignore[arg-type]
    positions = math.prod(out)
    widths = len({grid[1] for _, grid, _, _ in phases})
    cost = positions * positions * (d_out + _ELEMENTWISE * widths)  # δ's Gram, the dot, each width's gather
    elements = positions * positions * 2
    for _, grid, taps, kept in phases:
        size = grid[0] * grid[1]
        cost += size * size * channels + _ELEMENTWISE * taps[0] * taps[1] * kept * kept
        elements += size * size + kept * kept
    return cost, elements


_Phase = tuple[tuple[int, int], tuple[int, int], tuple[int, int], int]


def _phases(kernel: tuple[int, int], stride: tuple[int, int], out: tuple[int, int]) -> list[_Phase]:
    """Per phase r of the padded input (its pixels r + stride·m) that some kernel offset reads: r, its grid (the output
    plus the offsets' extent in strides), its taps (the offsets that read it), and `kept`, the side of the square of the
    phase Gram (flattened grid) that every offset's shifted output positions lie in: Ho·g' − taps' + 1, the same for
    every phase of one grid width g'."""
    plans = []
    for row in range(min(stride[0], kernel[0])):
        for col in range(min(stride[1], kernel[1])):
            taps = (len(range(row, kernel[0], stride[0])), len(range(col, kernel[1], stride[1])))
            grid = (out[0] + taps[0] - 1, out[1] + taps[1] - 1)
            plans.append(((row, col), grid, taps, out[0] * grid[1] - taps[1] + 1))
    return plans


def _phase_terms(conv: nn.Conv1d | nn.Conv2d, x: Tensor, delta: Tensor) -> Tensor:
    """Σ_e |weight gradient_e|² of one call (no dilation) as Σ_{t,t'} (a_t·a_t')(δ_t·δ_t'), with the windows' inner
    products a_t·a_t' summed from the input's phase Grams instead of unfolding.

    A kernel offset u reads input pixel stride·t + u, so it pairs pixels of one phase (r = u mod stride) a whole number
    of strides apart: a_t·a_t' = Σ_u P_r[t + ⌊u/stride⌋, t' + ⌊u/stride⌋], P_r the Gram of phase r's pixels. Overlapping
    windows share those products: on the benchmark CNN's last conv (64 channels, 3×3, stride 2, 8×8 out) 1.4 M
    multiply-adds an example (1.7 M with δ's Gram and the sums) where unfolding and materialising take 2.4 M and a
    plain Gram 2.6 M, and its terms in the
    backward 3.6–3.8 → 2.6–2.7 ms (bench_per_example_profile.py CNN, 2 runs each, load 2.6–4.5). In the flattened grid
    an offset is one constant shift of both indices (output position (i, j) is grid pixel i·g' + j), so each offset is a
    diagonal block of P_r: the blocks are summed per grid width, taken at the output positions and dotted with δ's Gram."""
    pad = list(conv._reversed_padding_repeated_twice)
    if any(pad) and conv.padding_mode != "zeros":
        x = F.pad(x, pad, mode=_PAD_MODES[conv.padding_mode])
        pad = [0] * len(pad)
    if x.dim() == 3:  # Conv1d as a 2-D convolution of height 1
        x, delta, pad = x.unsqueeze(2), delta.unsqueeze(2), [*pad, 0, 0]
    kernel, stride = (1, *conv.kernel_size)[-2:], (1, *conv.stride)[-2:]
    out = (delta.shape[2], delta.shape[3])
    phases = _phases(kernel, stride, out)
    examples = x.shape[0] * conv.groups
    x = x.reshape(examples, -1, *x.shape[2:])
    delta = delta.reshape(examples, -1, *out)
    # Every phase's grid in one zeroed buffer (the padding stays zero): the input is copied once, never padded first.
    sizes = [grid[0] * grid[1] for _, grid, _, _ in phases]
    pixels = x.new_zeros(examples, x.shape[1], sum(sizes))
    sums: dict[int, Tensor] = {}  # per grid width: the offsets' blocks, summed
    first = 0
    for phase, grid, taps, kept in phases:
        flat = pixels[:, :, first : first + grid[0] * grid[1]]
        first += grid[0] * grid[1]
        rows = _phase_span(phase[0], stride[0], pad[2], x.shape[2], grid[0])
        cols = _phase_span(phase[1], stride[1], pad[0], x.shape[3], grid[1])
        if rows[1] > rows[0] and cols[1] > cols[0]:
            source = x[:, :, rows[2] :: stride[0], cols[2] :: stride[1]][:, :, : rows[1] - rows[0], : cols[1] - cols[0]]
            flat.view(examples, -1, *grid)[:, :, rows[0] : rows[1], cols[0] : cols[1]] = source
        gram = torch.bmm(flat.transpose(1, 2), flat)
        for q in range(taps[0]):
            for r in range(taps[1]):
                shift = q * grid[1] + r
                block = gram[:, shift : shift + kept, shift : shift + kept]
                summed = sums.get(grid[1])
                sums[grid[1]] = block.clone() if summed is None else summed.add_(block)
    # Each width's sum at the output positions' grid pixels, added up: one Gram of δ for all (as [T, T]).
    total = sums.pop(out[1], None)
    for width, summed in sums.items():
        stride0 = summed.stride(0)
        windows = summed.as_strided((examples, *out, *out), (stride0, width * summed.shape[1], summed.shape[1], width, 1))
        if total is None:
            total = windows.reshape(examples, out[0] * out[1], out[0] * out[1])
        else:
            total.view(examples, *out, *out).add_(windows)
    assert total is not None
    delta = delta.reshape(examples, -1, out[0] * out[1])
    return _dot(total, torch.bmm(delta.transpose(1, 2), delta))


def _phase_span(phase: int, stride: int, before: int, size: int, grid: int) -> tuple[int, int, int]:
    """The grid indices [lo, hi) of a phase whose pixels lie in the unpadded input (`before` padded ahead of its `size`),
    and the input index of lo's pixel."""
    lo = max(0, -((phase - before) // stride))
    hi = min(grid, (size - 1 + before - phase) // stride + 1)
    return lo, hi, phase + stride * lo - before


def _per_example_conv_grads(conv: nn.Conv1d | nn.Conv2d, x: Tensor, delta: Tensor) -> Tensor:
    """[B, *weight.shape]: each example's weight gradient, the faster way for this shape (both exact).

    One grouped convolution_backward (the layer's own kernel), or unfold + bmm: on one CPU thread the
    first is ~1.5× faster on the benchmark CNN's wide layers, the second ~1.6× on its 3-channel input
    layer, and no operation count predicts oneDNN's grouped kernels: the first use of a shape times both.
    """
    zeros = [0] * len(conv.kernel_size)
    padding = conv.padding
    if conv.padding_mode != "zeros" or isinstance(padding, str):
        # Other modes (and 'same', possibly uneven) pad a copy; zeros inside the kernel is ~1.5× faster.
        x = F.pad(x, list(conv._reversed_padding_repeated_twice), mode=_PAD_MODES[conv.padding_mode])
        padding = zeros
    shape = tuple(conv.weight.shape)

    def grouped() -> Tensor:
        return grouped_weight_grads(x, delta, shape, conv.stride, padding, conv.dilation, False, zeros, conv.groups)

    def columns() -> Tensor:
        return _columns_grads(conv, x, delta, padding, padded=padding is zeros)

    unfolded = x.shape[0] * conv.in_channels * math.prod(conv.kernel_size) * math.prod(delta.shape[2:])
    if not x.is_cpu or unfolded > CHUNK_ELEMENTS:  # timing a GPU needs a sync; a large unfold is never cheap
        return grouped()
    return fastest(_grads_key(conv, x, delta, padding), {"grouped": grouped, "columns": columns})


def _grads_key(conv: nn.Conv1d | nn.Conv2d, x: Tensor, delta: Tensor, padding: Sequence[int]) -> tuple:
    return ("conv", tuple(x.shape), tuple(delta.shape), x.dtype, tuple(conv.weight.shape), conv.stride, tuple(padding), conv.dilation, conv.groups)


def _folds_bias(conv: nn.Conv1d | nn.Conv2d, x: Tensor, delta: Tensor) -> bool:
    """Whether a part's terms come from _folded_terms: a few-channel convolution (groups 1, zeros padding) whose
    per-example gradients were timed faster by unfold + bmm ("columns") for this shape."""
    return (
        conv.groups == 1
        and conv.in_channels < _CHANNELS_LAST_FROM
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and x.is_cpu
        and _FASTEST.get(_grads_key(conv, x, delta, conv.padding)) == "columns"
    )


def _folded_terms(conv: nn.Conv1d | nn.Conv2d, x: Tensor, delta: Tensor) -> tuple[Tensor, Tensor]:
    """(Σ_e |weight gradient_e|², Σ_e |bias gradient_e|²) from one unfold + bmm: the columns get a row of ones, so the
    bmm's last row is each example's bias gradient and δ is read once (the separate bias pass: ~150 µs of ~1.2 ms
    on the benchmark CNN's input layer). Unfolded CACHED_ELEMENTS at a time into one reused buffer, as _columns_grads.
    The gradients come transposed, columns @ δᵀ ([C·k + 1, O] an example): oneDNN's bmm runs that shape (28 × 1024 @
    1024 × 32 on the benchmark CNN's input layer) faster than δ @ columnsᵀ (32 × 28): the layer's terms in the backward
    1.98 → 1.53–1.64 ms (bench_per_example_profile.py CNN, 2 runs each, load 2.6–4.5), 1.53 → 1.17 ms timed alone."""
    pad = list(conv._reversed_padding_repeated_twice)
    if any(pad):
        x = torch.constant_pad_nd(x, pad)
    if x.dim() == 3:  # Conv1d as a 2-D convolution of height 1
        x, delta = x.unsqueeze(2), delta.unsqueeze(2)
        kernel, stride, dilation = (1, *conv.kernel_size), (1, *conv.stride), (1, *conv.dilation)
    else:
        kernel, stride, dilation = conv.kernel_size, conv.stride, conv.dilation
    batch, channels = x.shape[:2]
    out = (delta.shape[2], delta.shape[3])
    width, positions = channels * kernel[0] * kernel[1], out[0] * out[1]
    parts = _chunks(batch, width * positions, CACHED_ELEMENTS)
    columns = x.new_empty(parts[0].stop, width + 1, positions)
    columns[:, width].fill_(1)
    grads = x.new_empty(batch, width + 1, delta.shape[1])
    for part in parts:
        n = part.stop - part.start
        columns[:n, :width].view(n, channels, kernel[0], kernel[1], *out).copy_(_windows(x[part], kernel, dilation, stride, out))
        torch.bmm(columns[:n], delta[part].reshape(n, delta.shape[1], positions).transpose(1, 2), out=grads[part])
    return _sq(grads[:, :width]), _sq(grads[:, width])


# Input channels from which a channels-last unfold beats the NCHW one (measured 1.1–2× faster from 8 channels on, 1.5×
# slower at 3: its copy moves runs of C elements where the NCHW one moves runs of W' elements a stride apart).
_CHANNELS_LAST_FROM = 8


def _columns_grads(conv: nn.Conv1d | nn.Conv2d, x: Tensor, delta: Tensor, padding: Sequence[int], padded: bool) -> Tensor:
    """[B, *weight.shape] by unfold + bmm, the columns unfolded CACHED_ELEMENTS at a time (a whole chunk's, 3.5 MB on
    the benchmark CNN's input layer, took ~500 page faults a step amid the backward); channels-last from 8 channels."""
    batch, shape, groups = x.shape[0], tuple(conv.weight.shape), conv.groups
    parts = _chunks(batch, conv.in_channels * math.prod(conv.kernel_size) * math.prod(delta.shape[2:]), CACHED_ELEMENTS)
    if groups == 1 and conv.in_channels >= _CHANNELS_LAST_FROM:
        if len(parts) == 1:
            raw = _channels_last_product(conv, x, delta, padding)
        else:
            raw = x.new_empty(batch, shape[0], math.prod(shape[1:]))
            for part in parts:
                _channels_last_product(conv, x[part], delta[part], padding, raw[part])
        grads = raw.view(batch, shape[0], *((1,) * (4 - len(shape))), *shape[2:], shape[1])  # [B, O, kh, kw, C]
        grads = grads.permute(0, 1, 4, 2, 3)  # the weight's (C, kh, kw) order
        return grads if len(shape) == 4 else grads.squeeze(3)

    def product(xs: Tensor, ds: Tensor, out: Tensor | None = None) -> Tensor:
        a, d = _columns(conv, xs, ds, padded=padded)
        return torch.bmm(d, a.transpose(1, 2), out=out)

    if len(parts) == 1:
        return product(x, delta).view(batch, *shape)
    raw = x.new_empty(batch * groups, shape[0] // groups, math.prod(shape[1:]))
    for part in parts:
        product(x[part], delta[part], raw[part.start * groups : part.stop * groups])
    return raw.view(batch, *shape)


def _channels_last_product(conv: nn.Conv1d | nn.Conv2d, x: Tensor, delta: Tensor, padding: Sequence[int], out: Tensor | None = None) -> Tensor:
    """δ [B, O, L] @ columns [B, L, kh·kw·C] unfolded from a channels-last copy of x (groups 1; zero `padding` added in
    that copy): whole C-vectors are copied, and the bmm reads both operands in rows (on the benchmark CNN's last conv
    1.7× faster than the NCHW unfold and bmm, 1.5× than grouped)."""
    if x.dim() == 3:  # Conv1d as a 2-D convolution of height 1
        x, delta = x.unsqueeze(2), delta.unsqueeze(2)
        padding, kernel, stride, dilation = (0, *padding), (1, *conv.kernel_size), (1, *conv.stride), (1, *conv.dilation)
    else:
        kernel, stride, dilation = conv.kernel_size, conv.stride, conv.dilation
    batch, channels, height, width = x.shape
    shape = (batch, height + 2 * padding[0], width + 2 * padding[1], channels)
    rows = x.new_zeros(shape) if any(padding) else x.new_empty(shape)
    rows[:, padding[0] : padding[0] + height, padding[1] : padding[1] + width] = x.permute(0, 2, 3, 1)
    positions = delta.shape[2:]
    sb, sh, sw, sc = rows.stride()
    windows = rows.as_strided(
        (batch, positions[0], positions[1], kernel[0], kernel[1], channels),
        (sb, sh * stride[0], sw * stride[1], sh * dilation[0], sw * dilation[1], sc),
    )
    return torch.bmm(delta.reshape(batch, delta.shape[1], -1), windows.reshape(batch, positions[0] * positions[1], -1), out=out)


# The faster of exact alternatives per shape, timed at its first use (see `fastest`).
_FASTEST: dict[tuple, str] = {}
# Shapes timed at most: inputs whose size changes every batch would otherwise be timed (six runs) on
# most measured steps; past this the first candidate runs untimed.
_FASTEST_MOST = 64


def fastest(key: tuple, candidates: dict[str, Callable[[], Tensor]]) -> Tensor:
    """The result of the candidate that ran fastest for `key`.

    At the key's first use each candidate runs three times: a warm-up (oneDNN builds its primitive, the
    allocator its pages), then the faster of two timed runs counts (one slow run on a busy machine would not).
    The first use returns the chosen candidate's result, so it is bitwise what later uses give (the candidates
    are exact but may round differently: float32 grouped vs unfold conv gradients differ by ~4e-7 relative).
    """
    chosen = _FASTEST.get(key)
    if chosen is not None:
        return candidates[chosen]()
    if len(_FASTEST) >= _FASTEST_MOST:
        return next(iter(candidates.values()))()
    best: tuple[float, str, Tensor] | None = None  # the fastest run so far, its candidate and result
    for name, run in candidates.items():
        run()
        for _ in range(2):
            started = time.perf_counter()
            result = run()
            elapsed = time.perf_counter() - started
            if best is None or elapsed < best[0]:
                best = (elapsed, name, result)
    assert best is not None
    _FASTEST[key] = best[1]
    return best[2]


def grouped_weight_grads(
    x: Tensor,
    delta: Tensor,
    weight_shape: tuple[int, ...],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    transposed: bool,
    output_padding: Sequence[int],
    groups: int,
) -> Tensor:
    """[B, *weight_shape]: per-example weight gradients as ONE grouped convolution's weight gradient.

    The batch folds into the channels (input [1, B·C_in, …], δ [1, B·C_out, …], groups B·groups), so
    the kernel is the layer's own weight-gradient kernel: bitwise what vmap(convolution_backward) gives,
    0.1–0.5 ms less per layer on the benchmark CNN (no batching-rule dispatch, no weight replica copied).
    """
    batch = x.shape[0]
    # Only its shape is read: left uninitialised, its pages are never touched (no page faults).
    weight = x.new_empty((batch * weight_shape[0], *weight_shape[1:]))
    grads = torch.ops.aten.convolution_backward(
        delta.reshape(1, -1, *delta.shape[2:]), x.reshape(1, -1, *x.shape[2:]), weight, None, stride, padding,
        dilation, transposed, output_padding, batch * groups, [False, True, False],
    )[1]
    return grads.view(batch, *weight_shape)


def layer_norm_stats(output: Tensor, x: Tensor, module: nn.LayerNorm) -> tuple[Tensor, Tensor] | None:
    """At a LayerNorm's forward: the (mean, rstd) its autograd node saved, or None where it saved none we know."""
    node = output.grad_fn
    if type(node).__name__ != "NativeLayerNormBackward0" or _saved_tensor_hooks_active():
        return None  # under saved-tensor hooks (checkpointing, offloading) reading them would unpack: recompute
    mean, rstd = node._saved_result1, node._saved_result2  # type: ignore[union-attr]
    expected = (*x.shape[: x.dim() - len(module.normalized_shape)], *(1,) * len(module.normalized_shape))
    if tuple(mean.shape) != expected or tuple(rstd.shape) != expected:
        return None
    return mean, rstd


def _saved_tensor_hooks_active() -> bool:
    top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
    return top is None or top(False) is not None


def embedding(module: nn.Embedding, calls: Sequence[Call]) -> Tensor:
    """nn.Embedding: Σ_e Σ_{distinct tokens v of e} |Σ_{positions of v} δ|²; padding_idx rows get no gradient.

    Grouping by (example, token) is a sort and a segment sum: no per-example gradient, and off the CPU no host sync.
    Padding positions share one key (-1, sorted first) whose segment is zeroed: δ is never copied.
    """
    tokens = _sequence([x.reshape(x.shape[0], -1, 1) for x, _ in calls])[..., 0]
    delta = _wide(_sequence([d for _, d in calls]))
    batch, steps = tokens.shape
    flat = delta.reshape(batch * steps, -1)
    example = torch.arange(batch, device=tokens.device).unsqueeze(1)
    keys = (example * module.num_embeddings + tokens).reshape(-1)
    if module.padding_idx is not None:
        keys = keys.masked_fill(tokens.reshape(-1) == module.padding_idx, -1)
    if keys.is_cpu:  # the distinct keys' count is free to know here: one op for the segments, one row per segment
        distinct, segment = torch.unique(keys, return_inverse=True)  # 1.3–2× faster (bench_per_example_overhead's block)
        first, segments = distinct[0], distinct.shape[0]
    else:
        ordered, order = keys.sort()
        starts = torch.ones_like(ordered)
        starts[1:] = ordered[1:] != ordered[:-1]
        segment = torch.empty_like(order)
        segment[order] = starts.cumsum(0) - 1  # each position's segment, in the positions' own order
        first, segments = ordered[0], batch * steps
    sums = flat.new_zeros(segments, flat.shape[1]).index_add_(0, segment, flat)
    if module.padding_idx is not None:
        sums[0] *= first >= 0  # segment 0 is the padding key's if there is one
    return _sq(sums)


def normalisation(
    module: nn.LayerNorm | nn.RMSNorm, calls: Sequence[Call], stats: Sequence[tuple[Tensor, Tensor] | None] = ()
) -> tuple[Tensor | None, Tensor | None]:
    """nn.LayerNorm / nn.RMSNorm: weight Σ_pos δ ⊙ x̂, bias Σ_pos δ.

    x̂ = (x − mean)·rstd from a LayerNorm call's own saved (mean, rstd) where `stats` has them (bitwise
    what the forward used, ~4× cheaper than recomputing), else recomputed from the input.
    """
    shape = tuple(module.normalized_shape)
    size = math.prod(shape)
    weight_grad: Tensor | None = None
    bias_grad: Tensor | None = None
    for i, (x, d) in enumerate(calls):
        x, d = _wide(x), _wide(d)
        batch = x.shape[0]
        saved = stats[i] if i < len(stats) else None
        if module.weight is not None:
            if saved is not None:
                x_hat = (x - saved[0]).mul_(saved[1])
            elif isinstance(module, nn.LayerNorm):
                x_hat = F.layer_norm(x, shape, None, None, module.eps)
            else:
                eps = module.eps if module.eps is not None else torch.finfo(x.dtype).eps
                x_hat = F.rms_norm(x, shape, None, eps)
            # x̂ is a fresh tensor: in place, one temporary of x's size fewer (each a page-faulting allocation in the backward)
            term = (x_hat.mul_(d) if x_hat.dtype == d.dtype else x_hat * d).reshape(batch, -1, size).sum(1)
            weight_grad = term if weight_grad is None else weight_grad + term
        if getattr(module, "bias", None) is not None:
            term = d.reshape(batch, -1, size).sum(1)
            bias_grad = term if bias_grad is None else bias_grad + term
    return (
        _sq(weight_grad) if weight_grad is not None else None,
        _sq(bias_grad) if bias_grad is not None else None,
    )
