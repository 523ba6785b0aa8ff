"""GPU-only check of the hook: run it on a machine with CUDA (pytest does not collect it by default).

    .venv/bin/python -m pytest test/python/gpu_check_hook.py

On CUDA the norms are computed by asynchronous kernels and reach the host through one pinned,
non-blocking copy per step; this checks they are still exact and training still bitwise identical.
It fails (rather than skips) without a CUDA device, so running it by mistake on a CPU says so.
"""
from __future__ import annotations

import copy

import torch

from test_hook_support import Loop, assert_matches_exact, exact_norms, make_model, make_optimizer, parameters_of, watch_and_record


def test_on_cuda_norms_are_exact_and_training_is_bitwise_identical(free_address: str) -> None:
    assert torch.cuda.is_available(), "this check needs a CUDA device"
    loop = Loop(steps=3, sizes=(6, 9, 6, 5), clip=0.05, device="cuda")
    plain = make_model().cuda()
    loop.run(plain, make_optimizer(plain))
    model = make_model().cuda()
    reference = copy.deepcopy(model)
    optimizer = make_optimizer(model)
    ns, records = watch_and_record(model, optimizer, free_address)
    exact: dict[int, tuple[list[list[float]], list[float]]] = {}
    loop.run(model, optimizer, on_step_start=lambda step: exact.__setitem__(step, exact_norms(reference, model, step, loop)))
    ns.remove()
    for a, b in zip(parameters_of(plain), parameters_of(model)):
        assert torch.equal(a, b)
    for record in records:
        micro, accumulated = exact[record.step]
        assert_matches_exact(record, micro, accumulated)
