"""torch.compile'd models: the hook measures through their original parameters and never breaks the compiled graph.

Inductor on the CPU compiles C++ with the system compiler (gcc here); the models are tiny so each
compile stays short, and the bitwise comparisons use one backend for both runs.
"""
from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn

import noisescope
from conftest import Sidecar
from test_hook_support import (
    Loop,
    assert_matches_exact,
    exact_norms,
    make_model,
    make_optimizer,
    parameters_of,
    wait_for_events,
    watch_and_record,
)

LOOP = Loop(steps=3, sizes=(4, 6), clip=1e-3)


def _compiled(model: nn.Module, form: str, backend: str) -> nn.Module:
    if form == "wrapper":
        return torch.compile(model, backend=backend, fullgraph=True)
    model.compile(backend=backend)  # in place (nn.Sequential cannot be fullgraph in place on this torch)
    return model


@pytest.mark.parametrize("form, backend", [("wrapper", "inductor"), ("in place", "aot_eager")])
def test_a_compiled_model_is_measured_exactly_and_the_sidecar_gets_its_batches(
    sidecar: Sidecar, form: str, backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    model = make_model()
    reference = copy.deepcopy(model)
    trained = _compiled(model, form, backend)
    optimizer = make_optimizer(model)
    run = f"compiled-{form.replace(' ', '-')}"
    with caplog.at_level(logging.INFO, logger="noisescope"):
        ns, records = watch_and_record(trained, optimizer, sidecar.address, run=run)
    exact: dict[int, tuple[list[list[float]], list[float]]] = {}
    LOOP.run(trained, optimizer, on_step_start=lambda step: exact.setdefault(step, exact_norms(reference, model, step, LOOP)))
    ns.remove()

    assert f"torch.compile'd model ({form}): per-example norms need module hooks" in caplog.text
    assert [r.step for r in records] == list(range(LOOP.steps))
    for record in records:
        assert not record.skipped, record.skip_reason
        assert record.micro_examples == tuple(LOOP.sizes)
        assert_matches_exact(record, *exact[record.step])  # fused kernels: float32 rounding apart
    ended = sidecar.wait_for(lambda e: e["type"] == "run" and e["run"] == run and e["ended"])
    assert [layer["name"] for layer in ended["layers"]] == [name for name, _ in model.named_parameters()]
    for event in wait_for_events(sidecar, "step", run, LOOP.steps):
        assert (event["microBatches"], event["globalBatch"]) == (2, sum(LOOP.sizes))


@pytest.mark.parametrize("form", ["wrapper", "in place"])
def test_compiled_training_with_the_hook_is_bitwise_identical(free_address: str, form: str) -> None:
    plain = make_model()
    plain_compiled = _compiled(plain, form, "aot_eager")
    LOOP.run(plain_compiled, make_optimizer(plain))

    watched = make_model()
    trained = _compiled(watched, form, "aot_eager")
    optimizer = make_optimizer(watched)
    compiled_call = getattr(watched, "_compiled_call_impl", None)
    ns, records = watch_and_record(trained, optimizer, free_address)
    LOOP.run(trained, optimizer)
    ns.remove()
    assert len(records) == LOOP.steps and not any(r.skipped for r in records)
    assert getattr(watched, "_compiled_call_impl", None) is compiled_call  # in place: the compiled call put back
    for a, b in zip(parameters_of(plain), parameters_of(watched)):
        assert torch.equal(a, b)


def test_a_module_compiled_after_watch_keeps_training_under_fullgraph_and_says_why_steps_are_skipped(
    free_address: str, caplog: pytest.LogCaptureFixture
) -> None:
    model = make_model()
    optimizer = make_optimizer(model)
    # Per-example hooks too: inside compiled code every module hook of ours must stay out of the graph.
    ns, records = watch_and_record(model, optimizer, free_address, source="per-example")
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)  # would raise on a graph break
    with caplog.at_level(logging.WARNING, logger="noisescope"):
        LOOP.run(compiled, optimizer)
    ns.remove()
    assert len(records) == LOOP.steps and all(r.skipped for r in records)
    assert "ran inside torch.compile'd code, where its hook cannot run: watch the compiled wrapper" in caplog.text
    assert not any(r.levelno >= logging.ERROR for r in caplog.records)  # no internal error tripped
