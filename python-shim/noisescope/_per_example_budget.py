"""per_example_sample="auto": exact per-example sums while they are cheap, importance-sampled ones once they are not.

Exact per-example norms of a convolution or a sequence Linear cost about one more weight-gradient pass of the
layer: on the benchmark CNN (CPU) +49% a step without a free core, +12% with one (fixed malloc thresholds; with
glibc's defaults, page faults came on top). Sampled sums are unbiased and, at s ≥ 4 of the batch, cost the
smoothed B_simple almost no accuracy: the per-step noise of tr(Σ) is dominated by the batch's own
(bench_per_example_sampled_accuracy.py --sizes 16,8,4,2,1 on load_digits, 40 seeds, B = 64: median / p90
error 10.2% / — exact, 10.1 / 12.3% at s = 16, 9.1 / 13.0% at 8, 10.2 / 13.7% at 4, 8.5 / 18.1% at 1).
So "auto" measures what the sampleable layers' terms cost (thread CPU, wherever they run) against the step's
wall time, and halves s while they cost more than FRACTION of it, down to MIN_SAMPLE, or doubles it back (to
exact) while twice the cost would fit; where sampling at MIN_SAMPLE does not save a quarter of the exact cost (small layers,
whose fixed per-layer part dominates), it goes back to exact while the batch size stays. Row Linears (every MLP layer) stay exact and
cost nothing here. On a GPU the terms are asynchronous kernels: their thread CPU is the launches', so the budget
rarely samples there (unmeasured: no GPU yet).

Where even MIN_SAMPLE costs more than the share on the training thread (a CNN or a transformer block on a CPU with no
core free: the terms' fixed part per layer), "auto" thins the measured steps instead: only 1 in `stride` of the steps
due is measured at all (one chosen at random in each block of `stride`, so a periodic pattern in the data is not
aliased), so the terms' inline cost per step due stays within the share. A step without per-example sums has no
second batch size (no estimate) anyway; skipping it outright saves the norms too. The price: the sidecar's smoothing
(beta per measured step) spans `stride` times as many steps. Terms on a worker thread beside the backward do not
count towards thinning (they overlap it); one process only (ranks must measure the same steps).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field


@dataclass
class Budget:
    """Decides each measured step's sample size from the ones before: None is exact (every example)."""

    FRACTION = 0.05  # the sampleable terms' CPU, as a share of the step's wall time
    FLOOR_S = 0.5e-3  # exact sums costing less than this a step stay exact, whatever the share (tiny models)
    MIN_SAMPLE = 4  # never fewer examples a micro-batch: accuracy holds to here (module docstring)
    WARMUP = 3  # measured steps ignored first: a shape's first use times its candidate forms (`fastest`)
    WINDOW = 4  # measured steps at one size before deciding (medians: a noisy machine's outliers)
    FUTILE = 0.75  # sampling at MIN_SAMPLE that costs more than this share of exact is not worth its noise
    MAX_STRIDE = 4  # thinning: at least 1 in this many steps due is measured (1: never thins); past 4 the smoothed
    # estimate over a short run spreads (bench_per_example_sampled_accuracy.py --thin: p90 13.7% every step, 16.9% at 4, 34% at 8)

    size: int | None = None  # None: exact
    stride: int = 1  # 1 in this many steps due is measured (1: every one)
    every: int = 1  # watch()'s every: steps due are already this far apart
    futile: bool = False  # sampling at MIN_SAMPLE saved less than FUTILE of the exact cost: exact at this batch
    _futile_batch: int = 0
    _exact_cost: float = 0.0  # the median cost of the last window at exact
    _seen: int = 0
    _costs: list[float] = field(default_factory=list)
    _inline: list[float] = field(default_factory=list)
    _steps: list[float] = field(default_factory=list)

    def observe(self, cost_s: float, step_s: float, batch: int, inline_s: float | None = None) -> bool:
        """One measured step's sampleable terms' CPU seconds (`inline_s` of them on the training thread; None: all),
        its wall seconds and its micro-batch's examples (the largest). True when `size` or `stride` changed (the
        next step uses them)."""
        self._seen += 1
        if self.futile and batch != self._futile_batch:
            self.futile = False  # another batch size: sampling may pay now
        if self._seen <= self.WARMUP or batch <= self.MIN_SAMPLE or step_s <= 0:
            return False
        self._costs.append(cost_s)
        self._inline.append(cost_s if inline_s is None else inline_s)
        self._steps.append(step_s)
        if len(self._costs) < self.WINDOW:
            return False
        cost, inline, step = (statistics.median(v) for v in (self._costs, self._inline, self._steps))
        self._costs.clear()
        self._inline.clear()
        self._steps.clear()
        allowed = self.FRACTION * step
        if self.stride > 1:
            return self._thin(inline, allowed)  # sampling is at its floor: only the stride moves, until it is back at 1
        size = self.size
        if size is None:
            self._exact_cost = cost
            if cost > allowed and cost > self.FLOOR_S and not self.futile:
                # Proportional to the examples, less a part fixed per layer: a first guess on the small side.
                size = max(self.MIN_SAMPLE, _power_of_two_below(batch * allowed / cost))
        elif size == self.MIN_SAMPLE and cost > self.FUTILE * self._exact_cost:
            # The layers' fixed costs dominate (small ones): sampling's noise buys too little.
            size, self.futile, self._futile_batch = None, True, batch
        elif cost > 1.25 * allowed and cost > self.FLOOR_S and size > self.MIN_SAMPLE:
            size = max(self.MIN_SAMPLE, size // 2)
        elif 2 * cost <= 0.9 * allowed or 2 * cost <= self.FLOOR_S:
            size = None if 2 * size >= batch else 2 * size
        if size is not None and size >= batch:
            size = None
        if size != self.size:
            self.size = size
            return True
        if size == self.MIN_SAMPLE or (size is None and self.futile):
            return self._thin(inline, allowed)  # nothing cheaper per step: measure fewer steps
        return False

    def _thin(self, inline: float, allowed: float) -> bool:
        """The stride that keeps the terms' training-thread CPU per step due within the share: raised at once, lowered
        only once the lower one would hold a fifth under it (no flapping), never raised for a cost under FLOOR_S."""
        spacing = allowed * self.every  # the share's seconds between two steps due
        stride = self.stride
        if inline > 1.25 * spacing * stride and inline > self.FLOOR_S:
            stride = min(self.MAX_STRIDE, math.ceil(inline / spacing))
        elif stride > 1 and (inline <= self.FLOOR_S or math.ceil(inline / (0.8 * spacing)) < stride):
            stride = max(1, math.ceil(inline / (0.8 * spacing))) if inline > self.FLOOR_S else 1
        stride = max(1, min(self.MAX_STRIDE, stride))
        changed, self.stride = stride != self.stride, stride
        return changed


def _power_of_two_below(x: float) -> int:
    n = 1
    while 2 * n <= x:
        n *= 2
    return n
