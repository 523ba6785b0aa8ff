"""Benchmark: what sampling costs in accuracy — sampled per-example sums at every=1 against exact ones at every=4.

Run: .venv/bin/python test/python/bench_per_example_sampled_accuracy.py [--steps N] [--seeds K] [--sizes S,…] [--thin K,…]

The e2e test's training (test_per_example_sampled: load_digits as 8×8 images, an all-convolution model,
one micro-batch of 64 per step, SGD + momentum, clipping) runs once without the hook; at every step the
whole-set truth (float32, ExactNoise) and each example's squared gradient norm per parameter tensor
(torch.func) are kept. Offline, the per-example estimator (batch of one vs the batch, as the sidecar
computes it) is then formed from: every example at every step ("exact every=1"); every example on one
step in 4 ("exact every=4", each offset); and, K seeds each, s of the 64 at every step: what the hook
does (watch(per_example_sample=s)), s drawn with replacement from the hook's own proposal at the head's δ
(noisescope._per_example.Sampler.proposal: ∝ |δ_i|² = |softmax − onehot|²/B², mixed with α/B), weighted
1/(s·p_i), every layer — for several α; and, for comparison, a uniformly random s without
replacement scaled by B/s (what per_example_sample meant before). Nothing is floored (the hook no longer
floors: an unbiased estimate may fall below |h|²/B). Sampled s = 16 at every=1 does the per-example work of
exact every=4 (a quarter of the examples per step). Reported: the per-step spread of tr(Σ) (std over
steps of estimate/truth − 1) and the median |error| of the smoothed B_simple over the second half
(beta 0.99 per measured step; every=4 also with 0.99^4, the same horizon in steps).
--thin K,…: also the hook's importance rows (its α) thinned as per_example_sample="auto" thins at its floor: one
step at random in each block of K measured, beta 0.99 per measured step as the sidecar smooths (so over K times
the steps); each seed draws both the samples and the steps.
"""
from __future__ import annotations

import argparse
import statistics
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call, grad, vmap

from exact_noise import ExactNoise, smooth_ratio
from noisescope import demo
from noisescope._per_example import Sampler
from test_per_example_sampled import E2E_BATCH, E2E_STEPS, DigitsConv

BETA = 0.99


def record(steps: int) -> tuple[list[tuple[float, float]], list[Tensor], list[Tensor], list[Tensor], int]:
    """Per step: the truth (|G|², tr(Σ)), each example's squared norm per tensor [L, B], |ḡ|² per tensor [L], and
    δ at the head's output (softmax − onehot)/B [B, 10] (the hook's first δ)."""
    dataset = demo.make_data()
    model = DigitsConv()
    reference = ExactNoise(model, *dataset.tensors, dtype=torch.float32)
    optimizer = demo.make_optimizer(model, lr=demo.LR)
    truth: list[tuple[float, float]] = []
    per_example: list[Tensor] = []
    mean_sq: list[Tensor] = []
    logit_sq: list[Tensor] = []
    batch: list[tuple[Tensor, Tensor]] = []

    def before_step(step: int, m: torch.nn.Module) -> None:
        t = reference.compute(m)
        truth.append((t.grad_sq_norm, t.trace_sigma))
        x, y = batch.pop()
        params = {k: p.detach() for k, p in m.named_parameters()}

        def loss(p: dict[str, Tensor], xe: Tensor, ye: Tensor) -> Tensor:
            return F.cross_entropy(functional_call(m, p, (xe.unsqueeze(0),)), ye.unsqueeze(0))

        flat = [g.reshape(x.shape[0], -1).double() for g in vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y).values()]
        per_example.append(torch.stack([f.square().sum(1) for f in flat]))
        mean_sq.append(torch.stack([f.mean(0).square().sum() for f in flat]))
        with torch.no_grad():
            at_logits = (torch.softmax(m(x), 1) - F.one_hot(y, 10)) / x.shape[0]
        logit_sq.append(at_logits)

    demo.train(
        model, optimizer, dataset, steps=steps, micro_batch=E2E_BATCH, accumulation=1, clip=demo.CLIP, seed=0,
        before_step=before_step, on_micro_batch=lambda step, j, x, y: batch.append((x, y)),
    )
    return truth, per_example, mean_sq, logit_sq, len(dataset)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=E2E_STEPS)
    parser.add_argument("--seeds", type=int, default=40)
    parser.add_argument("--mixtures", default="0,0.1,0.2,0.3,0.5", help="α values for the importance rows")
    parser.add_argument("--sizes", default="16,8", help="sample sizes s of the sampled rows")
    parser.add_argument("--thin", default="", help="strides K: the hook's rows thinned to 1 step in K (auto's floor)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    steps = args.steps
    truth, per_example, mean_sq, head_delta, n = record(steps)
    batch, inv_n = E2E_BATCH, 1.0 / n
    x_small, x_big = 1.0 - inv_n, 1.0 / batch - inv_n

    def estimate(step: int, drawn: Tensor | None, weights: Tensor | None = None) -> tuple[float, float]:
        per, big = per_example[step], mean_sq[step]
        if drawn is None:
            sums = per.sum(1)
        elif weights is None:
            sums = per[:, drawn].sum(1) * (batch / len(drawn))
        else:
            sums = (per[:, drawn] * weights).sum(1)
        y_small, y_big = float(sums.sum()) / batch, float(big.sum())
        trace = (y_small - y_big) / (x_small - x_big)
        return y_big - trace * x_big, trace

    def b_simple_error(measured: list[int], series: dict[int, tuple[float, float]], beta: float = BETA) -> float:
        est = smooth_ratio([series[s][0] for s in measured], [series[s][1] for s in measured], beta)
        true = smooth_ratio([truth[s][0] for s in measured], [truth[s][1] for s in measured], beta)
        return statistics.median(abs(est[i][2] / true[i][2] - 1) for i, s in enumerate(measured) if s >= steps // 2)

    def spread(measured: list[int], series: dict[int, tuple[float, float]]) -> float:
        return statistics.pstdev([series[s][1] / truth[s][1] - 1 for s in measured])

    every_step = list(range(steps))
    exact = {s: estimate(s, None) for s in every_step}

    def sampling_noise(series: dict[int, tuple[float, float]]) -> float:
        """What the sample adds: std over steps of (sampled − exact per-example tr(Σ)) / true tr(Σ)."""
        return statistics.pstdev([(series[s][1] - exact[s][1]) / truth[s][1] for s in every_step])

    print(f"sampled vs exact per-example sums: DigitsConv on load_digits, {steps} steps of {batch}, beta {BETA}")
    print(f"{'estimator':<42} {'per-step tr(Σ) spread':>22} {'B_simple error (median |rel|, 2nd half)':>42} {'sampling noise':>14}")
    print(f"{'exact every=1':<42} {spread(every_step, exact):>22.1%} {b_simple_error(every_step, exact):>42.1%}")
    for offset in range(4):
        measured = list(range(offset, steps, 4))
        print(
            f"{f'exact every=4 (offset {offset})':<42} {spread(measured, exact):>22.1%} "
            f"{f'{b_simple_error(measured, exact):.1%} (beta^4: {b_simple_error(measured, exact, BETA ** 4):.1%})':>42}"
        )
    def uniform(size: int, generator: torch.Generator) -> dict[int, tuple[float, float]]:
        return {s: estimate(s, torch.randperm(batch, generator=generator)[:size].sort().values) for s in every_step}

    def importance(mixture: float) -> Callable[[int, torch.Generator], dict[int, tuple[float, float]]]:
        def draw(size: int, generator: torch.Generator) -> dict[int, tuple[float, float]]:
            out = {}
            for s in every_step:
                share = (Sampler.proposal(head_delta[s]) - Sampler.MIXTURE / batch) / (1 - Sampler.MIXTURE)  # q/Σq
                p = (1 - mixture) * share + mixture / batch
                drawn = torch.multinomial(p, size, replacement=True, generator=generator)
                out[s] = estimate(s, drawn, 1.0 / (size * p[drawn].double()))
            return out

        return draw

    rows: list[tuple[str, Callable[[int, torch.Generator], dict[int, tuple[float, float]]], int]] = []
    for size in map(int, args.sizes.split(",")):
        rows.append((f"uniform s={size} (before)", uniform, size))
        for mixture in map(float, args.mixtures.split(",")):
            marker = " (the hook's)" if mixture == Sampler.MIXTURE else ""
            rows.append((f"importance s={size} α={mixture:g}{marker}", importance(mixture), size))
    def thinned(stride: int, generator: torch.Generator) -> list[int]:
        """One step at random in each block of `stride` (the meter's _due_after_thinning)."""
        picks = torch.randint(stride, ((steps + stride - 1) // stride,), generator=generator).tolist()
        return [b * stride + pick for b, pick in enumerate(picks) if b * stride + pick < steps]

    def report(label: str, draw: Callable[[int, torch.Generator], dict[int, tuple[float, float]]], size: int, stride: int) -> None:
        errors, spreads, noises = [], [], []
        for seed in range(args.seeds):
            generator = torch.Generator().manual_seed(seed)
            sampled = draw(size, generator)
            measured = thinned(stride, generator) if stride > 1 else every_step
            errors.append(b_simple_error(measured, sampled))
            spreads.append(spread(measured, sampled))
            noises.append(sampling_noise(sampled))
        errors.sort()
        q90 = errors[min(len(errors) - 1, int(0.9 * len(errors)))]
        print(
            f"{label:<42} {statistics.median(spreads):>22.1%} "
            f"{f'median {statistics.median(errors):.1%}, p90 {q90:.1%}, max {errors[-1]:.1%}':>42} "
            f"{statistics.median(noises):>14.1%}"
        )
    for label, draw, size in rows:
        report(label, draw, size, 1)
    for size in map(int, args.sizes.split(",")):
        for stride in (int(k) for k in args.thin.split(",") if k):
            report(f"hook's s={size} (α={Sampler.MIXTURE:g}) 1 step in {stride}", importance(Sampler.MIXTURE), size, stride)
    print(f"(sampled rows: {args.seeds} seeds, medians over them; s = {batch // 4} at every=1 does the per-example work of exact "
          "every=4; sampling noise: std over steps of (sampled − exact every=1 tr(Σ)) / true tr(Σ))")


if __name__ == "__main__":
    main()
