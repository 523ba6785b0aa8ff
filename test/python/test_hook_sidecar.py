"""End to end: the hook streams a real accumulation run to the real TypeScript sidecar."""
from __future__ import annotations

import pytest

import noisescope
from test_hook_support import Loop, make_model, make_optimizer


@pytest.mark.parametrize("every", [1, 3])
def test_sidecar_reports_every_measured_step_of_an_accumulation_run(sidecar, every: int) -> None:
    loop = Loop(steps=7, sizes=(6, 6, 6, 6))
    model = make_model()
    optimizer = make_optimizer(model)
    run = f"hook-e2e-every-{every}"
    with noisescope.watch(model, optimizer, address=sidecar.address, run=run, every=every, dataset_size=4096) as ns:
        loop.run(model, optimizer)
    measured = list(range(0, loop.steps, every))
    sidecar.wait_for(lambda e: e["type"] == "step" and e["run"] == run and e["step"] == measured[-1])
    steps = [e for e in sidecar.of_type("step") if e["run"] == run]
    assert [e["step"] for e in steps] == measured
    for event in steps:
        assert event["microBatches"] == 4
        assert event["globalBatch"] == 4 * 6
        assert not event.get("skipped")
    stats = ns.stats
    assert (stats.dropped, stats.refusals) == (0, 0)
    assert stats.steps_measured == len(measured)
