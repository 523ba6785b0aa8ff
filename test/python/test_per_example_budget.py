"""per_example_sample="auto"'s Budget.observe on made-up cost / step sequences: when it decides, the first sampled
size, halving, doubling back to exact, giving up on sampling that saves too little (futility), settling for a cost
with a fixed part, and medians over a noisy window.

The constants are pinned (the `pinned` fixture) so the expected sizes below are worked out by hand from them; thinning
(MAX_STRIDE) is off in them but for the tests of it at the end, from `thinning` on."""
from __future__ import annotations

import pytest

from noisescope._per_example_budget import Budget

FRACTION, FLOOR_S, MIN_SAMPLE, WARMUP, WINDOW, FUTILE = 0.05, 0.5e-3, 4, 3, 4, 0.75


@pytest.fixture(autouse=True)
def pinned(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in dict(
        FRACTION=FRACTION, FLOOR_S=FLOOR_S, MIN_SAMPLE=MIN_SAMPLE, WARMUP=WARMUP, WINDOW=WINDOW, FUTILE=FUTILE,
        MAX_STRIDE=1,
    ).items():
        monkeypatch.setattr(Budget, name, value)


def feed(budget: Budget, cost_s: float, step_s: float, batch: int, n: int) -> list[bool]:
    """n observations of the same step; what observe() returned for each."""
    return [budget.observe(cost_s, step_s, batch) for _ in range(n)]


STEP = 0.1  # seconds: the share allowed is FRACTION · STEP = 5 ms, well above FLOOR_S
ALLOWED = FRACTION * STEP


def exact_cost(size: int) -> float:
    """The exact cost at batch 64 whose first sampled size is `size`: 64 · ALLOWED / cost = size (a power of two)."""
    return 64 * ALLOWED / size


def warmed(size: int | None = None) -> Budget:
    """A budget past its warm-up (the warm-up steps' costs, huge, must not count), then at `size` after one exact
    window costing exact_cost(size) (10 ms for 32 … 80 ms for 4: what sampled windows are held to for futility)."""
    budget = Budget()
    assert feed(budget, 10.0, 0.1, 64, WARMUP) == [False] * WARMUP and budget.size is None
    if size is not None:
        assert feed(budget, exact_cost(size), STEP, 64, WINDOW)[-1] and budget.size == size
    return budget


def test_nothing_is_decided_during_warm_up_or_before_a_full_window() -> None:
    budget = Budget()
    changed = feed(budget, 0.05, STEP, 64, WARMUP + WINDOW - 1)  # ten times the allowed share, every step
    assert changed == [False] * (WARMUP + WINDOW - 1) and budget.size is None
    assert budget.observe(0.05, STEP, 64) and budget.size is not None  # the window's last step decides


def test_warm_up_steps_do_not_count_towards_the_window() -> None:
    budget = Budget()
    feed(budget, 10.0, STEP, 64, WARMUP)  # a shape's first use: huge, ignored
    assert feed(budget, 0.1 * ALLOWED, STEP, 64, 10 * WINDOW) == [False] * (10 * WINDOW) and budget.size is None


@pytest.mark.parametrize(
    "cost_s, step_s, why",
    [
        (0.9 * ALLOWED, STEP, "under its share"),
        (ALLOWED, STEP, "at its share"),
        (0.9 * FLOOR_S, 1e-3, "45% of the step, but under FLOOR_S"),
        (FLOOR_S, 1e-4, "five times the step (the terms on another thread), but at FLOOR_S"),
    ],
)
def test_exact_stays_exact_while_cheap_or_under_the_floor(cost_s: float, step_s: float, why: str) -> None:
    budget = Budget()
    assert not any(feed(budget, cost_s, step_s, 64, WARMUP + 50 * WINDOW)) and budget.size is None, why


def test_just_over_both_the_share_and_the_floor_samples() -> None:
    """The other side of the cases above: the same comparisons, a little more cost."""
    for cost_s, step_s, size in ((1.01 * ALLOWED, STEP, 32), (1.01 * FLOOR_S, 1e-4, MIN_SAMPLE)):
        budget = Budget()
        assert any(feed(budget, cost_s, step_s, 64, WARMUP + WINDOW)) and budget.size == size, (cost_s, step_s)


@pytest.mark.parametrize(
    "batch, cost_s, size",
    [
        (64, 0.012, 16),  # 64 · 5 ms / 12 ms = 26.7 → 16
        (64, 0.030, 8),  # 10.7 → 8
        (64, 0.010, 32),  # exactly 32: a power of two is its own
        (64, 0.0101, 16),  # 31.7 → 16
        (256, 0.006, 128),  # 213 → 128
        (64, 0.070, 4),  # 4.57 → 4
        (64, 0.100, 4),  # 3.2: not below MIN_SAMPLE
        (64, 1.000, 4),  # 0.32
        (5, 0.050, 4),  # 0.5: MIN_SAMPLE, still under the batch
    ],
)
def test_the_first_sampled_size_is_the_power_of_two_below_the_affordable_share(batch: int, cost_s: float, size: int) -> None:
    budget = Budget()
    changed = feed(budget, cost_s, STEP, batch, WARMUP + WINDOW)
    assert changed[-1] and budget.size == size


def test_halves_while_over_a_quarter_above_the_share_down_to_min_sample() -> None:
    budget = warmed(32)
    sizes = []
    for _ in range(5):
        feed(budget, 1.3 * ALLOWED, STEP, 64, WINDOW)
        sizes.append(budget.size)
    assert sizes == [16, 8, 4, 4, 4]


def test_holds_between_the_doubling_and_halving_thresholds() -> None:
    for cost_s in (1.24 * ALLOWED, ALLOWED, 0.46 * ALLOWED):  # 2 · 0.46 > 0.9: doubling would overshoot
        budget = warmed(16)
        assert not any(feed(budget, cost_s, STEP, 64, 20 * WINDOW)) and budget.size == 16, cost_s


@pytest.mark.parametrize("batch, sizes", [(64, [8, 16, 32, None, None]), (48, [8, 16, 32, None, None]), (24, [8, 16, None, None, None])])
def test_doubles_while_twice_the_cost_fits_and_goes_exact_once_twice_the_size_covers_the_batch(batch: int, sizes: list) -> None:
    budget = warmed(4)
    seen = []
    for _ in range(5):
        changed = feed(budget, 0.44 * ALLOWED, STEP, batch, WINDOW)  # 2 · cost = 0.88 of the share: fits
        assert changed[:-1] == [False] * (WINDOW - 1)
        seen.append(budget.size)
    assert seen == sizes


def test_does_not_double_when_twice_the_cost_would_not_fit() -> None:
    budget = warmed(4)
    assert not any(feed(budget, 0.46 * ALLOWED, STEP, 64, 20 * WINDOW)) and budget.size == 4


def test_doubles_while_twice_the_cost_stays_under_the_floor_whatever_the_share() -> None:
    """A fast step (1 ms: share 50 µs): a cost at its share is over 0.9 of it doubled, but twice it is under FLOOR_S."""
    budget = warmed(4)
    feed(budget, 0.05e-3, 1e-3, 64, WINDOW)
    assert budget.size == 8
    budget = warmed(4)
    feed(budget, 0.26e-3, 5.2e-3, 64, WINDOW)  # at its share again, but twice the cost is over the floor: no change
    assert budget.size == 4


# ------------------------------------------------------------------ futility: sampling that saves too little


def test_futility_only_at_min_sample() -> None:
    """Exact 40 ms → 8. At 8, 35 ms (over FUTILE of exact: 30 ms) only halves, as any cost over the share does; at
    MIN_SAMPLE the same cost is futile: exact again."""
    budget = warmed(8)
    seen = []
    for _ in range(2):
        assert feed(budget, 0.035, STEP, 64, WINDOW)[-1]
        seen.append((budget.size, budget.futile))
    assert seen == [(4, False), (None, True)]


@pytest.mark.parametrize("share, futile", [(FUTILE, False), (0.76, True)])
def test_futility_only_above_futile_of_the_exact_cost(share: float, futile: bool) -> None:
    """At MIN_SAMPLE from an 80 ms exact window: 60 ms (exactly FUTILE of it, still 12× the share) keeps sampling."""
    budget = warmed(MIN_SAMPLE)
    changed = feed(budget, share * exact_cost(MIN_SAMPLE), STEP, 64, 10 * WINDOW)
    assert (any(changed), budget.size, budget.futile) == (futile, None if futile else MIN_SAMPLE, futile)


def test_futility_holds_while_the_batch_stays_and_clears_with_another_batch_size() -> None:
    budget = warmed(MIN_SAMPLE)
    assert feed(budget, 0.07, STEP, 64, WINDOW)[-1] and (budget.size, budget.futile) == (None, True)  # 70 > 60 ms
    # Exact again, as far over its share as the window that sampled first (80 ms), but futile: stays exact.
    assert not any(feed(budget, exact_cost(MIN_SAMPLE), STEP, 64, 20 * WINDOW)) and budget.futile
    # Another batch size: futility clears at its first step, and the next over-budget exact window samples again
    # (40 ms at 32: 4), judged against that window now: 35 ms at MIN_SAMPLE is over FUTILE of it (not of 80 ms).
    assert not budget.observe(0.04, STEP, 32) and not budget.futile
    assert feed(budget, 0.04, STEP, 32, WINDOW - 1)[-1] and budget.size == MIN_SAMPLE
    assert feed(budget, 0.035, STEP, 32, WINDOW)[-1] and (budget.size, budget.futile) == (None, True)


@pytest.mark.parametrize("batch", [1, 2, MIN_SAMPLE])
def test_a_batch_of_at_most_min_sample_never_samples(batch: int) -> None:
    budget = Budget()
    assert not any(feed(budget, 10.0, 1e-3, batch, WARMUP + 50 * WINDOW)) and budget.size is None


def test_the_median_ignores_one_outlier_a_window() -> None:
    cheap, costly = 0.1 * ALLOWED, 10 * ALLOWED
    budget = warmed()
    for _ in range(20):  # cheap, one step in four costly (a page fault, another process): stays exact
        for k in range(WINDOW):
            budget.observe(costly if k == 1 else cheap, STEP, 64)
    assert budget.size is None
    for _ in range(20):  # cheap terms, but one step in four very short: the share is the median step's
        for k in range(WINDOW):
            budget.observe(cheap, 1e-5 if k == 2 else STEP, 64)
    assert budget.size is None
    budget = warmed()
    for k in range(WINDOW):  # costly, one step in four cheap: samples as if all were costly
        budget.observe(cheap if k == 0 else costly, STEP, 64)
    assert budget.size == MIN_SAMPLE  # 64 · 5 ms / 50 ms = 6.4 → 4
    budget = warmed()
    for k in range(WINDOW):  # two of four costly: the median is their middle, the share's 5×
        budget.observe(cheap if k < 2 else costly, STEP, 64)
    assert budget.size is not None


# ------------------------------------------------------------------ a cost with a part fixed per layer

GRID = [
    (fixed, per_example, base, batch)
    for fixed in (0.0, 1e-5, 1e-4, 1e-3, 5e-3)
    for per_example in (1e-6, 1e-5, 5e-5, 1e-4, 1e-3)
    for base in (1e-3, 5e-3, 2e-2, 0.1, 1.0)
    for batch in (5, 8, 64, 256)
]


def simulate(fixed: float, per_example: float, base: float, batch: int, n: int = 200) -> tuple[list[int | None], bool]:
    """cost(s) = fixed + per_example · s (s = batch when exact); the step is base + cost (the terms on its thread).
    The sizes after each step, and whether the budget ended futile."""
    budget = Budget()
    sizes = []
    for _ in range(n):
        cost = fixed + per_example * (budget.size or batch)
        budget.observe(cost, base + cost, batch)
        sizes.append(budget.size)
    return sizes, budget.futile


def unsettled(monkeypatch: pytest.MonkeyPatch, floor_s: float) -> list[str]:
    """Every grid case whose size still changes in the last 100 of 200 steps, or that settles outside its budget (exact
    over it only where futile: sampling at MIN_SAMPLE costs more than FUTILE of exact)."""
    monkeypatch.setattr(Budget, "FLOOR_S", floor_s)
    bad = []
    for fixed, per_example, base, batch in GRID:
        sizes, futile = simulate(fixed, per_example, base, batch)
        case = f"cost {fixed:g} + {per_example:g}·s, base {base:g}, batch {batch}"
        if len(set(sizes[100:])) > 1:
            bad.append(f"{case}: never settles, last sizes {sizes[-3 * WINDOW::WINDOW]}")
            continue
        size = sizes[-1]
        cost = fixed + per_example * (size or batch)
        allowed = FRACTION * (base + cost)
        if size is None:
            within = cost <= allowed or cost <= floor_s or (futile and fixed + per_example * MIN_SAMPLE > FUTILE * cost)
        else:
            within = cost <= 1.25 * allowed or cost <= floor_s or size == MIN_SAMPLE
            within = within and size < batch and size & (size - 1) == 0
        if not within:
            bad.append(f"{case}: settles at {size}{' (futile)' * futile}, cost {cost:g} of a {base + cost:g} s step")
    return bad


def test_a_cost_linear_in_the_sample_settles_within_its_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """No floor: the share alone decides. Every case stops changing and ends within budget, at MIN_SAMPLE or futile."""
    assert unsettled(monkeypatch, 0.0) == []
    # Not vacuous: the grid takes every kind of ending, futile included.
    ends = {"futile" if futile else sizes[-1] for sizes, futile in (simulate(*case) for case in GRID)}
    assert {None, MIN_SAMPLE, "futile"} < ends and len(ends) >= 6, ends


def test_a_cost_linear_in_the_sample_settles_within_its_budget_with_the_floor(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the floor too: no 4 ↔ 8 oscillation (a cost over 1.25× the share but under FLOOR_S at 2·MIN_SAMPLE, e.g.
    5e-05·s with a 1 ms step at batch 64, doubled from 4 since twice it is under the floor, must not halve back)."""
    assert unsettled(monkeypatch, FLOOR_S) == []


# ------------------------------------------------------------------ thinning: fewer steps once s is at its floor


@pytest.fixture
def thinning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Budget, "MAX_STRIDE", 8)


def strides(budget: Budget, windows: list[float], inline: list[float] | None = None) -> list[int]:
    """The stride after each window of the given costs (inline: the training thread's share; None: all of it)."""
    seen = []
    for j, cost in enumerate(windows):
        for _ in range(WINDOW):
            budget.observe(cost, STEP, 64, None if inline is None else inline[j])
        seen.append(budget.stride)
    return seen


@pytest.mark.usefixtures("thinning")
def test_thins_only_once_sampling_is_at_min_sample_and_to_the_stride_that_fits_the_share() -> None:
    """From exact 80 ms: 40 ms halves 4 → … (no thinning while s can go down), then at MIN_SAMPLE 15 ms (three
    shares, not futile: under 60 ms) thins to 3 in the next window whose size did not change."""
    budget = warmed(16)
    assert strides(budget, [40e-3, 40e-3]) == [1, 1] and budget.size == MIN_SAMPLE
    assert strides(budget, [15e-3]) == [3] and budget.size == MIN_SAMPLE


@pytest.mark.usefixtures("thinning")
def test_the_stride_follows_the_cost_with_hysteresis_and_gives_way_to_doubling_at_one() -> None:
    budget = warmed(MIN_SAMPLE)
    # 15 ms: 3; 16 ms holds (under 1.25 shares a step: 18.75); 19 ms: 4; 11 ms holds (3 would be over 0.8 of the
    # share: 11/4 = 2.75 → 3 < 4: lowered to 3); 7.9 ms: 2 (7.9 / 4 → 2); under the floor: 1.
    assert strides(budget, [15e-3, 16e-3, 19e-3, 11e-3, 7.9e-3, 0.4e-3]) == [3, 3, 4, 3, 2, 1]
    assert budget.size == MIN_SAMPLE  # the stride moved, the size did not
    feed(budget, 0.44 * ALLOWED, STEP, 64, WINDOW)  # cheap again at stride 1: s doubles as before
    assert (budget.size, budget.stride) == (8, 1)


@pytest.mark.usefixtures("thinning")
def test_thinning_is_capped_at_max_stride_and_also_applies_to_futile_exact() -> None:
    budget = warmed(MIN_SAMPLE)
    assert strides(budget, [50e-3]) == [8]  # ten shares: capped
    budget = warmed(MIN_SAMPLE)
    assert strides(budget, [70e-3]) == [1] and budget.futile  # over FUTILE of 80 ms: exact (a size change)
    assert strides(budget, [exact_cost(MIN_SAMPLE)]) == [8]  # exact and still 16 shares: thinned


@pytest.mark.usefixtures("thinning")
def test_only_the_training_threads_share_counts_and_every_spreads_the_share() -> None:
    budget = warmed(MIN_SAMPLE)
    assert strides(budget, [15e-3, 15e-3], inline=[0.0, 4e-3]) == [1, 1]  # on the worker / within the share: none
    assert strides(budget, [15e-3], inline=[15e-3]) == [3]
    budget = warmed(MIN_SAMPLE)
    budget.every = 4  # steps due are 4 apart already: a share of 20 ms between two
    assert strides(budget, [24e-3, 30e-3]) == [1, 2]  # 24 under 1.25 × 20; 30 → 2


@pytest.mark.usefixtures("thinning")
def test_a_cost_linear_in_the_sample_settles_within_its_budget_with_thinning(monkeypatch: pytest.MonkeyPatch) -> None:
    """The grid again with thinning: sizes and strides stop changing, and each case's cost per step due (a measured
    step's over the stride) ends within 1.25 shares, under the floor, or at MAX_STRIDE."""
    monkeypatch.setattr(Budget, "FLOOR_S", 0.0)
    bad, thinned = [], 0
    for fixed, per_example, base, batch in GRID:
        budget = Budget()
        seen = []
        for _ in range(200):
            cost = fixed + per_example * (budget.size or batch)
            budget.observe(cost, base + cost, batch)
            seen.append((budget.size, budget.stride))
        case = f"cost {fixed:g} + {per_example:g}·s, base {base:g}, batch {batch}"
        if len(set(seen[100:])) > 1:
            bad.append(f"{case}: never settles, last {seen[-3 * WINDOW::WINDOW]}")
            continue
        size, stride = seen[-1]
        cost = fixed + per_example * (size or batch)
        if stride > 1 and not (size == MIN_SAMPLE or budget.futile):
            bad.append(f"{case}: thinned at {size}")
        if not (cost / stride <= 1.25 * FRACTION * (base + cost) or stride == Budget.MAX_STRIDE):
            bad.append(f"{case}: settles at {size}, stride {stride}: {cost:g} of a {base + cost:g} s step")
        thinned += stride > 1
    assert bad == []
    assert thinned >= 20  # not vacuous
