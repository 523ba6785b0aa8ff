"""Dense mode under DDP (gloo, CPU, spawned ranks, load_digits): the sidecar joins every rank's chunks of a
step into one Gram over all world·K micro-batch gradients, so B_simple is norms mode's on the same training,
and a rank whose gradient disagrees with the rest is flagged by rank. Parameters stay bitwise those of
plain DDP (dense mode registers no communication hook: the Gram gives the all-reduced norm).

Measured (this file, 2 ranks × 2 micro-batches of 16, 6 steps): dense vs norms raw and smoothed |G|², tr(Σ),
B_simple differ by at most 5.6e-7 relative; with rank 1's gradients noisy, rank 1 is flagged at steps 1–5
(its mean cosine to rank 0's micro-batches 0.003–0.014 against rank 0's own 0.10–0.32) and rank 0 never; at
step 0 rank 0's two micro-batches agree only 0.085, under DISAGREEMENT.minAgreement, so nothing is flagged.
Sketch mode (4096 buckets) under DDP: smoothed B_simple within 1.9% of norms mode's, raw within 4.9%.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from conftest import Sidecar
from ddp_support import K, LR, _join, end_process_group, spawn, steps_of, train

STEPS = 6
NOISE = 0.05  # the corrupted rank's added gradient noise: ~20× its micro-batch gradient's own size here


def _add_noise(seed: int) -> Any:
    generator = torch.Generator().manual_seed(seed)
    return lambda grad: grad + NOISE * torch.randn(grad.shape, generator=generator)


def _fit(rank: int, world: int, address: str, run: str | None, mode: str, corrupt: bool = False, bad: int = -1) -> dict[str, Any]:
    """STEPS steps of DDP training (K micro-batches per rank, no_sync but the last), watched when `run`
    is given; with `corrupt`, rank `bad` adds noise to its gradients in a tensor hook (DDP still averages them)."""
    import noisescope
    from torch.nn.parallel import DistributedDataParallel as DDP
    from noisescope.demo import make_model

    model = make_model()
    ddp = DDP(model)
    if corrupt and rank == bad:
        for i, p in enumerate(model.parameters()):
            p.register_hook(_add_noise(1000 + i))
    opt = torch.optim.SGD(ddp.parameters(), lr=LR)
    handle = noisescope.watch(model, opt, address=address, run=run, mode=mode) if run else None
    train(model, ddp, opt, rank, world, STEPS)
    out: dict[str, Any] = {"params": [p.detach().clone() for p in model.parameters()]}
    if handle is not None:
        handle.remove(timeout=10)
        out["stats"] = handle.stats
    return out


def worker(rank: int, world: int, port: int, address: str, out: str, _scenario: str, _steps: int) -> None:
    """One rank: dense, norms and unwatched training of the same batches, then dense with rank world−1 noisy, then sketch."""
    from noisescope import _wire

    step_messages = _wire.step_messages
    lines, _ = _join(rank, world, port)
    _wire.step_messages = step_messages  # _join's recorder reads norms shards; dense steps have none
    result: dict[str, Any] = {"rank": rank}
    try:
        dense = _fit(rank, world, address, f"dense-{world}", "dense")
        norms = _fit(rank, world, address, f"norms-{world}", "norms")
        plain = _fit(rank, world, address, None, "norms")
        result["bitwise"] = all(torch.equal(a, b) for a, b in zip(dense["params"], plain["params"]))
        result["stats"] = [dense["stats"], norms["stats"]]
        result["noisy"] = _fit(rank, world, address, f"noise-{world}", "dense", True, world - 1)["stats"]
        result["sketch"] = _fit(rank, world, address, f"sketch-{world}", "sketch")["stats"]
    finally:
        result["log"] = lines.lines
        torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    end_process_group()  # barrier, destroy, os._exit: gloo's teardown can SIGABRT a rank after its results


def worst_relative(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> float:
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        assert x["step"] == y["step"] and not x["skipped"] and not y["skipped"]
        for which in ("raw", "smoothed"):
            for field in ("gradSqNorm", "traceSigma", "bSimple"):
                if y[which][field] is not None:
                    worst = max(worst, abs(x[which][field] - y[which][field]) / abs(y[which][field]))
    return worst


def flagged(steps: list[dict[str, Any]]) -> list[list[int]]:
    """Per step, the ranks whose gradient the sidecar said disagrees with the rest."""
    return [[d["rank"] for d in e["diversity"] if d["acrossRanks"]["disagrees"]] for e in steps]


def test_dense_under_ddp_matches_norms_mode_and_flags_a_noisy_rank(sidecar: Sidecar, tmp_path: Path) -> None:
    world = 2
    codes, results = spawn(world, sidecar.address, tmp_path, "dense", STEPS, target=worker)
    assert codes == [0] * world, [r.get("log") for r in results]
    for result in results:
        assert result["bitwise"]  # dense mode under DDP: parameters bitwise those of plain DDP
        for stats in (*result["stats"], result["noisy"], result["sketch"]):
            assert (stats.steps_measured, stats.dropped, stats.refusals) == (STEPS, 0, 0), stats

    dense, norms = steps_of(sidecar, "dense-2", STEPS), steps_of(sidecar, "norms-2", STEPS)
    # The same three scales (micro-batch, rank-local, all-reduced) from the cross-rank Gram as from the
    # communication hook's norms.
    for d, n in zip(dense, norms, strict=True):
        assert (d["source"], d["levels"], d["ranks"], d["microBatches"]) == (n["source"], n["levels"], n["ranks"], n["microBatches"]) == ("data-parallel", 3, world, world * K)
    assert worst_relative(dense, norms) < 1e-5
    for e in dense:
        assert [d["rank"] for d in e["diversity"]] == [0, 1]
        for d in e["diversity"]:
            cosines = d["acrossRanks"]["cosines"]
            assert cosines[d["rank"]] == 1 and 0 < cosines[1 - d["rank"]] < 1
    assert flagged(dense) == [[]] * STEPS

    # Rank 1's gradients drowned in noise (DDP still averages them): flagged by rank, rank 0 never.
    noisy = flagged(steps_of(sidecar, "noise-2", STEPS))
    assert all(ranks in ([], [1]) for ranks in noisy) and noisy.count([1]) >= STEPS - 2, noisy

    # Sketch mode reuses the path: the Gram of every rank's CountSketches (4096 buckets; the two large layers
    # sketched), so the same three scales and rank cosines, B_simple within the sketch's error of norms mode.
    sketch = steps_of(sidecar, "sketch-2", STEPS)
    for s, n in zip(sketch, norms, strict=True):
        assert (s["levels"], s["ranks"], len(s["diversity"])) == (3, world, world)
        assert abs(s["smoothed"]["bSimple"] / n["smoothed"]["bSimple"] - 1) < 0.1
    assert flagged(sketch) == [[]] * STEPS
