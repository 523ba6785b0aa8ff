"""GPU-only check of sketch mode: run it on a machine with CUDA (pytest does not collect it by default).

    .venv/bin/python -m pytest test/python/gpu_check_sketch.py

On CUDA the hook sketches each micro-batch's gradient inside the gradient hooks (scatter_add_ kernels on the
device, hashes drawn by the CUDA generator) and copies only the sketches to pinned host memory; this checks
that training stays bitwise identical and that the sketches carry the gradients' norms (layers of at most m
elements exactly, the others within the CountSketch error). It fails (rather than skips) without CUDA.
"""
from __future__ import annotations

import math

import torch

from test_hook_support import Loop, make_model, make_optimizer, parameters_of, watch_and_record

SKETCH_SIZE = 64


def test_on_cuda_sketches_carry_the_norms_and_training_is_bitwise_identical(free_address: str) -> None:
    assert torch.cuda.is_available(), "this check needs a CUDA device"
    loop = Loop(steps=6, sizes=(6, 9, 6, 5), clip=0.05, device="cuda")
    plain = make_model().cuda()
    loop.run(plain, make_optimizer(plain))
    model = make_model().cuda()
    optimizer = make_optimizer(model)
    ns, records = watch_and_record(model, optimizer, free_address, mode="sketch", sketch_size=SKETCH_SIZE)
    sketches: list[tuple[object, list[torch.Tensor]]] = []
    ns._sender.tap = lambda record: sketches.append((record, [row.clone() for row in record.dense.rows()]))
    assert ns._meter._dense._copy is None  # the device path
    loop.run(model, optimizer)
    ns.remove()
    for a, b in zip(parameters_of(plain), parameters_of(model)):
        assert torch.equal(a, b)
    sizes = [min(p.numel(), SKETCH_SIZE) for p in model.parameters()]
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    z = []
    assert len(sketches) == loop.steps
    for record, rows in sketches:
        for j, row in enumerate(rows):
            for layer, (p, m, start) in enumerate(zip(model.parameters(), sizes, offsets)):
                sketched = float(row[start : start + m].double().square().sum())
                exact = record.micro_sq_norms[j][layer]
                if m == p.numel():
                    assert math.isclose(sketched, exact, rel_tol=1e-5), (record.step, j, layer)
                else:
                    z.append((sketched - exact) / (math.sqrt(2 / m) * exact))
    assert z and abs(sum(z) / len(z)) < 3 / math.sqrt(len(z))
    assert math.sqrt(sum(v * v for v in z) / len(z)) < 1.3
