"""Exact gradient noise statistics over a whole training set (the ground truth).

For parameters θ and a training set of N examples with per-example loss ℓ_i(θ)
(the per-example term of the training loss: cross-entropy of example i), the
per-example gradients g_i = ∇ℓ_i(θ) give

    G      = (1/N) Σ_i g_i                       (the full-batch gradient)
    |G|²                                          (its squared norm)
    tr(Σ)  = 1/(N−1) Σ_i |g_i − G|²               (unbiased, N−1 normalised)

so that a batch of B examples drawn *without replacement* has
E|g_B|² = |G|² + tr(Σ)·(1/B − 1/N) exactly. Both |G|² and tr(Σ) are sums over
coordinates, hence over parameter tensors ("layers"); we report each tensor and
the total.

Two exact methods, float64 by default:

- "vmap": per-example gradients from torch.func (`vmap(grad(...))` over
  `functional_call`), in chunks; chunk statistics are merged with Chan's
  parallel-variance formula so nothing of size N × P is held at once. Works for
  any model whose forward treats examples independently. It materialises every
  per-example gradient, which is memory-bound: ≈ 0.3 s for the demo's MLP over
  1797 examples on 2 cores (float64), too slow to run at every step of a test.
- "factored": for models whose parameters all live in `nn.Linear` layers fed
  2-D inputs (an MLP), the per-example gradient of a layer is the outer
  product δ_i a_iᵀ (δ_i: gradient of ℓ_i at the layer's output, a_i: its
  input), so |g_i|² = |δ_i|²·|a_i|² (+ |δ_i|² for the bias) and Σ_i g_i = δᵀa:
  one forward/backward over the set (a few ms). Same numbers as "vmap" to
  float64 round-off (test_exact_noise checks it); tr(Σ) here is
  (Σ|g_i|² − N|G|²)/(N−1), whose cancellation costs ~1e-16·(1 + N/B_simple)
  relative precision: irrelevant in float64.

"auto" (the default) takes "factored" where it applies, else "vmap".

The model given to `ExactNoise` is deep-copied at construction. Build it
*before* `noisescope.watch(model, ...)` attaches hooks: calling a hooked module
would fire the hook's forward/tensor hooks (and vmap through them). Afterwards
pass the live model's current parameters to `compute`; they are detached and
cast, so the live model and its `.grad` are never touched.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

__all__ = ["ExactNoise", "NoiseStats", "LayerNoise", "BiasCorrectedEMA", "smooth_ratio", "two_scale_estimate"]


@dataclass(frozen=True)
class LayerNoise:
    grad_sq_norm: float
    trace_sigma: float

    @property
    def b_simple(self) -> float:
        return self.trace_sigma / self.grad_sq_norm if self.grad_sq_norm > 0 else float("nan")


@dataclass(frozen=True)
class NoiseStats:
    grad_sq_norm: float  # |G|², total over layers
    trace_sigma: float  # tr(Σ), total over layers
    layers: dict[str, LayerNoise] = field(default_factory=dict)
    n: int = 0

    @property
    def b_simple(self) -> float:
        return self.trace_sigma / self.grad_sq_norm if self.grad_sq_norm > 0 else float("nan")


def _has_hooks(module: nn.Module) -> list[str]:
    found = []
    for name, m in module.named_modules():
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
            if getattr(m, attr, None):
                found.append(f"{name or '<root>'}.{attr}")
    return found


class ExactNoise:
    """Exact |G|² and tr(Σ) of a classifier's cross-entropy over a fixed data set."""

    def __init__(
        self,
        model: nn.Module,
        inputs: Tensor,
        targets: Tensor,
        *,
        dtype: torch.dtype = torch.float64,
        chunk: int = 1024,
        method: str = "auto",
    ) -> None:
        hooked = _has_hooks(model)
        if hooked:
            raise ValueError(
                "ExactNoise needs an un-hooked model (build it before noisescope.watch); "
                f"found module hooks: {hooked}"
            )
        self.model = copy.deepcopy(model).to(dtype)
        self.model.eval()  # the reference is a pure function of θ; no dropout/BN state changes
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.dtype = dtype
        self.inputs = inputs.detach().to(dtype)
        self.targets = targets.detach().long()
        self.n = int(self.inputs.shape[0])
        if self.n < 2:
            raise ValueError("need at least two examples")
        self.chunk = int(chunk)
        self.names = [n for n, _ in self.model.named_parameters()]
        self.buffers = {n: b for n, b in self.model.named_buffers()}
        self._per_example = vmap(grad(self._loss), in_dims=(None, 0, 0))
        self._linears = self._linear_layers()
        if method == "auto":
            method = "factored" if self._linears is not None else "vmap"
        if method == "factored" and self._linears is None:
            raise ValueError("method='factored' needs every parameter in an nn.Linear (weight, bias)")
        if method not in ("vmap", "factored"):
            raise ValueError(f"unknown method {method!r}")
        self.method = method

    def _linear_layers(self) -> dict[str, tuple[str, str | None]] | None:
        """{module name: (weight name, bias name)} if every parameter is a Linear's, else None."""
        layers: dict[str, tuple[str, str | None]] = {}
        owned = set()
        for mname, m in self.model.named_modules():
            if isinstance(m, nn.Linear):
                prefix = f"{mname}." if mname else ""
                w = prefix + "weight"
                b = prefix + "bias" if m.bias is not None else None
                layers[mname] = (w, b)
                owned.update(x for x in (w, b) if x)
        return layers if layers and owned == set(self.names) else None

    # -- the per-example loss: the training loss's per-example term ----------
    def _loss(self, params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        logits = functional_call(self.model, {**params, **self.buffers}, (x.unsqueeze(0),))
        return F.cross_entropy(logits, y.unsqueeze(0))

    def params_from(self, source: nn.Module | Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Detached copies, in the reference dtype, of a model's (or mapping's) parameters."""
        named = dict(source.named_parameters()) if isinstance(source, nn.Module) else dict(source)
        missing = [n for n in self.names if n not in named]
        if missing:
            raise KeyError(f"parameters missing: {missing}")
        return {n: named[n].detach().to(self.dtype).clone() for n in self.names}

    def per_example_grads(self, source: nn.Module | Mapping[str, Tensor], index: Tensor | slice | None = None) -> dict[str, Tensor]:
        """Per-example gradients {name: [n, *shape]} for the selected examples."""
        params = self.params_from(source)
        sel = slice(None) if index is None else index
        return self._per_example(params, self.inputs[sel], self.targets[sel])

    def full_batch_loss(self, params: Mapping[str, Tensor], index: Tensor | slice | None = None) -> Tensor:
        """Mean cross-entropy over the selected examples (plain autograd, no vmap)."""
        sel = slice(None) if index is None else index
        logits = functional_call(self.model, {**params, **self.buffers}, (self.inputs[sel],))
        return F.cross_entropy(logits, self.targets[sel])

    def batch_gradient(self, source: nn.Module | Mapping[str, Tensor], x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """The mean-cross-entropy gradient of one batch (x, y), plain autograd, reference dtype."""
        params = {n: p.requires_grad_(True) for n, p in self.params_from(source).items()}
        with torch.enable_grad():
            logits = functional_call(self.model, {**params, **self.buffers}, (x.detach().to(self.dtype),))
            loss = F.cross_entropy(logits, y.detach().long())
            grads = torch.autograd.grad(loss, list(params.values()))
        return dict(zip(params, grads))

    def compute(self, source: nn.Module | Mapping[str, Tensor]) -> NoiseStats:
        """Exact |G|² and tr(Σ), per parameter tensor and in total, at `source`'s parameters."""
        if self.method == "factored":
            return self._compute_factored(self.params_from(source))
        return self._compute_vmap(self.params_from(source))

    def _compute_factored(self, params: dict[str, Tensor]) -> NoiseStats:
        modules = dict(self.model.named_modules())
        inputs: dict[str, Tensor] = {}
        outputs: dict[str, Tensor] = {}

        def capture(name: str):
            def hook(mod: nn.Module, args: tuple, out: Tensor) -> None:
                if args[0].dim() != 2:
                    raise ValueError(f"factored method needs 2-D inputs to Linear {name!r}")
                inputs[name], outputs[name] = args[0], out

            return hook

        handles = [modules[n].register_forward_hook(capture(n)) for n in self._linears]
        try:
            x = self.inputs.clone().requires_grad_(True)  # so every layer output is in the graph
            with torch.enable_grad():
                logits = functional_call(self.model, {**params, **self.buffers}, (x,))
                # Sum of per-example losses: d/dz_i of it is example i's own δ_i.
                total = F.cross_entropy(logits, self.targets, reduction="sum")
                names = list(self._linears)
                deltas = torch.autograd.grad(total, [outputs[n] for n in names])
        finally:
            for h in handles:
                h.remove()
        n = self.n
        layers = {}
        with torch.no_grad():
            for name, delta in zip(names, deltas):
                a = inputs[name].detach()
                wname, bname = self._linears[name]
                d2 = delta.pow(2).sum(1)  # |δ_i|²
                a2 = a.pow(2).sum(1)  # |a_i|²
                gw = delta.T @ a / n  # full-batch gradient of the weight
                layers[wname] = self._layer(float(gw.pow(2).sum()), float((d2 * a2).sum()), n)
                if bname is not None:
                    gb = delta.mean(0)
                    layers[bname] = self._layer(float(gb.pow(2).sum()), float(d2.sum()), n)
        layers = {k: layers[k] for k in self.names}
        return self._total(layers, n)

    @staticmethod
    def _layer(grad_sq_norm: float, sum_sq: float, n: int) -> LayerNoise:
        # Σ_i |g_i − G|² = Σ_i |g_i|² − N |G|²
        return LayerNoise(grad_sq_norm, (sum_sq - n * grad_sq_norm) / (n - 1))

    @staticmethod
    def _total(layers: dict[str, LayerNoise], n: int) -> NoiseStats:
        return NoiseStats(
            grad_sq_norm=sum(l.grad_sq_norm for l in layers.values()),
            trace_sigma=sum(l.trace_sigma for l in layers.values()),
            layers=layers,
            n=n,
        )

    @torch.no_grad()
    def _compute_vmap(self, params: dict[str, Tensor]) -> NoiseStats:
        # Running per-layer (count, mean vector, M2 = Σ|g_i − mean|²), merged per chunk.
        count = 0
        mean: dict[str, Tensor] = {}
        m2: dict[str, Tensor] = {}
        for start in range(0, self.n, self.chunk):
            x = self.inputs[start : start + self.chunk]
            y = self.targets[start : start + self.chunk]
            with torch.enable_grad():
                g = self._per_example(params, x, y)
            nb = int(x.shape[0])
            for name in self.names:
                gi = g[name].reshape(nb, -1)
                mb = gi.mean(0)
                m2b = (gi - mb).pow(2).sum()
                if count == 0:
                    mean[name], m2[name] = mb, m2b
                else:
                    delta = mb - mean[name]
                    tot = count + nb
                    mean[name] = mean[name] + delta * (nb / tot)
                    m2[name] = m2[name] + m2b + delta.pow(2).sum() * (count * nb / tot)
            count += nb
        layers = {}
        for name in self.names:
            gsq = float(mean[name].pow(2).sum())
            tr = float(m2[name]) / (count - 1)
            layers[name] = LayerNoise(gsq, tr)
        return self._total(layers, count)


class BiasCorrectedEMA:
    """m_t = β m_{t−1} + (1−β) x_t, reported as m_t / (1 − β^t) (Adam-style)."""

    def __init__(self, beta: float) -> None:
        if not 0 <= beta < 1:
            raise ValueError("beta must be in [0, 1)")
        self.beta = beta
        self.m = 0.0
        self.t = 0

    def update(self, x: float) -> float:
        self.t += 1
        self.m = self.beta * self.m + (1 - self.beta) * x
        return self.value

    @property
    def value(self) -> float:
        return self.m / (1 - self.beta**self.t) if self.t else float("nan")


def smooth_ratio(grad_sq_norms: list[float], trace_sigmas: list[float], beta: float) -> list[tuple[float, float, float]]:
    """Smooth |G|² and tr(Σ) separately with a bias-corrected EMA and divide.

    Returns (smoothed |G|², smoothed tr(Σ), smoothed B_simple) per step."""
    g, t = BiasCorrectedEMA(beta), BiasCorrectedEMA(beta)
    out = []
    for gs, tr in zip(grad_sq_norms, trace_sigmas):
        sg, st = g.update(gs), t.update(tr)
        out.append((sg, st, st / sg if sg > 0 else float("nan")))
    return out


def two_scale_estimate(micro_grads: list[dict[str, Tensor]], micro_batch: int, dataset_size: int | None) -> LayerNoise:
    """The per-step accumulation estimator, from the micro-batch gradients themselves.

    Each g_i averages `micro_batch` examples; their mean averages k·b. With
    x = 1/B − 1/N (x = 1/B when N is unknown), E|g_B|² = |G|² + tr(Σ)·x, so the
    two scales (mean of |g_i|² at x_small, |mean g_i|² at x_big) give
    tr(Σ) = (ȳ_small − y_big)/(x_small − x_big), |G|² = y_big − tr(Σ)·x_big.
    This is what the sidecar should compute from the hook's squared norms (sums
    in float64 here): a check of the pipeline, not of the estimator's accuracy.
    Give it gradients in the training's dtype: recomputed in float64, a ReLU
    whose float32 pre-activation is ~1e-8 can flip and change a step by ~0.5%."""
    k = len(micro_grads)
    if k < 2:
        raise ValueError("need at least two micro-batches")
    inv_n = 1.0 / dataset_size if dataset_size else 0.0
    names = list(micro_grads[0])
    y_small = sum(sum(float(g[n].double().pow(2).sum()) for n in names) for g in micro_grads) / k
    y_big = sum(float((sum(g[n].double() for g in micro_grads) / k).pow(2).sum()) for n in names)
    x_small = 1.0 / micro_batch - inv_n
    x_big = 1.0 / (k * micro_batch) - inv_n
    trace = (y_small - y_big) / (x_small - x_big)
    return LayerNoise(grad_sq_norm=y_big - trace * x_big, trace_sigma=trace)
