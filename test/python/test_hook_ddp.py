"""DDP (gloo, CPU, spawned ranks): real training on load_digits through the hook into the real sidecar.

The communication hook's rank-local and all-reduced norms against exact values, every rank's
steps joined into one data-parallel step of 3 batch scales, parameters bitwise those of training
without noisescope, the user-comm-hook fallback, and a rank killed mid-run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import Sidecar
from ddp_support import K, assert_within_each_others_interval, reference, watch_one_process
from ddp_support import by_hand as _by_hand
from ddp_support import steps_of as _steps
from ddp_support import spawn as spawn_ranks

STEPS = 6


def spawn(world: int, address: str, out: Path, scenario: str, steps: int = STEPS) -> tuple[list[int | None], list[dict[str, Any]]]:
    return spawn_ranks(world, address, out, scenario, steps)


@pytest.mark.parametrize("world", [2, 3, 4])  # 3: 1/world size is inexact, so bitwise equality tests the scaling
def test_ddp_training_sends_three_scales_with_exact_norms_and_unchanged_numerics(
    sidecar: Sidecar, tmp_path: Path, world: int
) -> None:
    codes, results = spawn(world, sidecar.address, tmp_path, "train")
    assert codes == [0] * world, (codes, [r.get("log") for r in results])

    # Numerics: bitwise the parameters of the same DDP training without noisescope.
    assert all(r["bitwise"] for r in results)
    ref_model, ref_norms = reference(STEPS, world)
    for got, want in zip(results[0]["params"], ref_model.parameters()):
        torch.testing.assert_close(got, want.detach(), rtol=1e-5, atol=1e-6)
    assert any("communication hook measures" in line for line in results[0]["log"])

    for r, result in enumerate(results):
        assert [s["step"] for s in result["sent"]] == list(range(STEPS))
        assert result["stats"].steps_measured == STEPS and result["stats"].dropped == 0
        for s in result["sent"]:
            assert not s["skipped"], s["skip_reason"]
            # Reduced: the ranks' average of their (loss / k) sums, i.e. the one-process gradient of the whole batch.
            torch.testing.assert_close(torch.tensor(s["reduced"], dtype=torch.float64), ref_norms[s["step"]], rtol=1e-4, atol=0)
            # Rank-local: this rank's k micro-batches accumulated, by hand at step 0 (the initial parameters).
            if s["step"] == 0:
                local = _by_hand(r, world, K)
                torch.testing.assert_close(torch.tensor(s["accumulated"], dtype=torch.float64), local, rtol=1e-4, atol=0)
                assert len(s["micro"]) == K

    steps = _steps(sidecar, f"ddp-{world}", STEPS)
    assert [e["step"] for e in steps] == list(range(STEPS))
    for e in steps:
        assert (e["source"], e["levels"], e["ranks"], e["microBatches"]) == ("data-parallel", 3, world, world * K), e
        assert e["globalBatch"] == world * K * 16 and not e["skipped"]


def test_ranks_never_thin_their_measured_steps(sidecar: Sidecar, tmp_path: Path) -> None:
    """The per-example budget's thinning is one process's: each rank's own would measure different steps, which never
    join. With ranks, every step due is measured though the budget is at its floor (s = 4) and over its share."""
    steps = 12
    codes, results = spawn(2, sidecar.address, tmp_path, "per-example-thin", steps=steps)
    assert codes == [0, 0], [r.get("log") for r in results]
    for result in results:
        assert result["size"] == 4  # where one process would thin from
        assert (result["stats"].steps_measured, result["stats"].measuring_one_in) == (steps, 1)
        assert [s["step"] for s in result["sent"]] == list(range(steps))
    events = _steps(sidecar, "thin-2", steps)
    assert [e["step"] for e in events] == list(range(steps)) and all(e["source"] == "per-example" for e in events)


def test_ddp_with_gradient_as_bucket_view_sends_the_rank_local_norm_not_the_reduced_one(
    sidecar: Sidecar, tmp_path: Path
) -> None:
    """There .grad is all-reduced in place before the backward ends; the hook's figure is the bucket's input."""
    codes, results = spawn(2, sidecar.address, tmp_path, "bucket-view", steps=2)
    assert codes == [0, 0], [r.get("log") for r in results]
    for k in (2, 1):
        _, ref_norms = reference(1, 2, k)
        for r, result in enumerate(results):
            first = result[f"k{k}"][0]
            assert first["step"] == 0 and not first["skipped"]
            local = _by_hand(r, 2, k)
            assert not torch.allclose(local, ref_norms[0], rtol=1e-2)  # the two levels differ here
            torch.testing.assert_close(torch.tensor(first["accumulated"], dtype=torch.float64), local, rtol=1e-4, atol=0)
            torch.testing.assert_close(torch.tensor(first["reduced"], dtype=torch.float64), ref_norms[0], rtol=1e-4, atol=0)
            if k == 1:  # one micro-batch: its h_1 is the rank-local gradient too
                torch.testing.assert_close(torch.tensor(first["micro"][0], dtype=torch.float64), local, rtol=1e-4, atol=0)
        levels = {e["levels"] for e in _steps(sidecar, f"view-2-k{k}", 2)}
        assert levels == {3 if k == 2 else 2}


def test_ddp_estimate_agrees_with_one_process_accumulating_the_same_batch(sidecar: Sidecar, tmp_path: Path) -> None:
    """Per step, the sidecar's |G|² and tr(Σ) from the DDP run's three scales against the one-process run's two."""
    steps = 40
    codes, _ = spawn(2, sidecar.address, tmp_path, "train", steps=steps)
    assert codes == [0, 0]
    ddp = _steps(sidecar, "ddp-2", steps)

    watch_one_process(sidecar.address, "one-process", steps, 2)
    one = _steps(sidecar, "one-process", steps)
    assert one[-1]["source"] == "accumulation" and one[-1]["levels"] == 2

    assert_within_each_others_interval(ddp[-1]["smoothed"], one[-1]["smoothed"])


def test_ddp_with_a_user_comm_hook_falls_back_and_says_so(sidecar: Sidecar, tmp_path: Path) -> None:
    codes, results = spawn(2, sidecar.address, tmp_path, "fallback")
    assert codes == [0, 0], [r.get("log") for r in results]
    for result in results:
        assert sum("already has a communication hook" in line for line in result["log"]) == 1
        assert all(not s["skipped"] and len(s["reduced"]) == 6 for s in result["fallback_sent"])
        # Accumulating without no_sync() (our hook): no whole rank-local gradient, so skipped, and why.
        assert [(s["step"], s["skipped"]) for s in result["sent"]] == [(0, True), (1, True)]
        assert "more than one backward pass" in result["sent"][0]["skip_reason"]
    ref_model, ref_norms = reference(STEPS, 2)
    for s in results[0]["fallback_sent"]:
        # No clipping here: .grad at the step is the all-reduced gradient.
        torch.testing.assert_close(torch.tensor(s["reduced"], dtype=torch.float64), ref_norms[s["step"]], rtol=1e-4, atol=0)
    # Rank-local: .grad at the end of the last backward (gradient_as_bucket_view=False: DDP writes the
    # hook's result there only afterwards), by hand at step 0.
    for r, result in enumerate(results):
        local = _by_hand(r, 2, K)
        torch.testing.assert_close(
            torch.tensor(result["fallback_sent"][0]["accumulated"], dtype=torch.float64), local, rtol=1e-4, atol=0
        )
    steps = _steps(sidecar, "fallback-2", STEPS)
    assert all((e["source"], e["levels"], e["ranks"]) == ("data-parallel", 3, 2) for e in steps)


def test_a_rank_killed_mid_run_leaves_the_survivor_to_torch_and_the_run_partial(tmp_path: Path) -> None:
    sidecar = Sidecar("--partial-step-timeout", "1")
    try:
        codes, results = spawn(2, sidecar.address, tmp_path, "kill", steps=8)
        assert codes[1] == 17  # killed itself after step 3's all-reduce
        survivor = results[0]
        assert codes[0] == 0 and survivor["removed"]
        # The survivor's failure is DDP's all-reduce finding the peer gone (as without noisescope); the hook is still on.
        assert "Connection" in survivor["error"] and "by peer" in survivor["error"], survivor["error"]
        assert survivor["enabled_after_error"]
        assert [s["step"] for s in survivor["sent"]] == [0, 1, 2, 3]
        # Steps both ranks ended are joined; step 3 (only the survivor ended it) is given up after the timeout.
        steps = _steps(sidecar, "kill-2", 4)
        assert [(e["step"], e["skipped"]) for e in steps] == [(0, False), (1, False), (2, False), (3, True)]
        assert steps[3]["note"] == "skipped: partial: rank 1 of 2 never ended step 3 within 1 s — excluded"
    finally:
        sidecar.stop()
