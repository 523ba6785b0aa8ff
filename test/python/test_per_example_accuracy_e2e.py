"""End to end: B_simple from the per-example source (one micro-batch per step) against the exact value.

The demo's training (load_digits, MLP, SGD + momentum + weight decay, clipping) runs with ONE
micro-batch of 64 per optimizer step through `noisescope.watch` (source "auto", which picks
per-example on one process) into a real sidecar. At every step, before clipping and
`optimizer.step()`, un-hooked copies give:

- the truth: exact |G|² and tr(Σ) over the whole training set (exact_noise, float64);
- the replica: the two-scale estimate from this step's own batch, batch of one vs batch of 64,
  from per-example gradients (torch.func, the training's dtype).

Both are smoothed like the sidecar (same beta). Checks, as in test_accuracy_e2e: the sidecar
equals the replica (pipeline: the hook's sums and the sidecar's batch-of-one level), and its
smoothed B_simple is within 25% of the smoothed truth (goal 15%; median over the second half).

Measured (seed 0, 500 steps of 64, beta 0.99): B_simple 2.8% (|G|² 11.4%, tr(Σ) 12.9%, both biased
upwards by the epoch sampling test_accuracy_e2e explains); sidecar vs replica ≤ 7e-8.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from exact_noise import ExactNoise, LayerNoise
from test_accuracy_e2e import (  # noqa: F401 (beta_sidecar: a fixture)
    BETA,
    Trace,
    assert_complete_and_accurate,
    beta_sidecar,
    compare,
    format_report,
    step_events,
)

STEPS = 500
BATCH = 64
SEED = 0
CLIP = 0.5


def per_example_estimate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, dataset_size: int) -> LayerNoise:
    """Batch of one vs the batch: y_small = mean_e |g_e|² at x = 1 − 1/N, y_big = |ḡ|² at x = 1/B − 1/N."""
    params = {n: p.detach() for n, p in model.named_parameters()}

    def loss(p: dict[str, torch.Tensor], xe: torch.Tensor, ye: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(model, p, (xe.unsqueeze(0),)), ye.unsqueeze(0))

    grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    flat = torch.cat([g.reshape(g.shape[0], -1).double() for g in grads.values()], 1)
    batch, inv_n = flat.shape[0], 1.0 / dataset_size
    y_small = float(flat.square().sum(1).mean())
    y_big = float(flat.mean(0).square().sum())
    x_small, x_big = 1.0 - inv_n, 1.0 / batch - inv_n
    trace = (y_small - y_big) / (x_small - x_big)
    return LayerNoise(grad_sq_norm=y_big - trace * x_big, trace_sigma=trace)


def run_training(
    address: str, run: str, model: torch.nn.Module | None = None, steps: int = STEPS, truth_dtype: torch.dtype = torch.float64
) -> Trace:
    """The demo's MLP by default; another `model` for load_digits (64 features → 10 logits) may be given."""
    import copy

    import noisescope
    from noisescope import demo

    dataset = demo.make_data()
    n = len(dataset)
    model = demo.make_model(SEED) if model is None else model
    reference = ExactNoise(model, *dataset.tensors, dtype=truth_dtype)  # built before watch(): an un-hooked copy
    replica_model = copy.deepcopy(model)
    optimizer = demo.make_optimizer(model, lr=demo.LR)
    # Units of the pipeline check: the small scale is one example, the big one the step's batch.
    trace = Trace(micro_batch=1, accumulation=BATCH, dataset_size=n)
    batch: list[tuple[torch.Tensor, torch.Tensor]] = []
    spent = 0.0

    def before_step(step: int, m: torch.nn.Module) -> None:
        nonlocal spent
        t0 = time.perf_counter()
        truth = reference.compute(m)
        trace.exact.append((truth.grad_sq_norm, truth.trace_sigma))
        replica_model.load_state_dict(m.state_dict())
        est = per_example_estimate(replica_model, *batch.pop(), n)
        trace.replica.append((est.grad_sq_norm, est.trace_sigma))
        total = sum(float(p.grad.double().pow(2).sum()) for p in m.parameters()) ** 0.5
        trace.clipped.append(total > CLIP)
        spent += time.perf_counter() - t0

    # Exact sums: this checks the exact estimator (per_example_sample='auto' may sample a costly model's).
    handle = noisescope.watch(model, optimizer, address=address, run=run, dataset_size=n, per_example_sample=None)
    assert handle._sender._info.per_example, "auto should pick the per-example source here"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    try:
        demo.train(
            model,
            optimizer,
            dataset,
            steps=steps,
            micro_batch=BATCH,
            accumulation=1,
            clip=CLIP,
            seed=SEED,
            before_step=before_step,
            on_micro_batch=lambda step, j, x, y: batch.append((x, y)),
        )
    finally:
        torch.set_num_threads(threads)
        handle.remove()
    trace.seconds = {"train_total": time.perf_counter() - t0, "reference": spent}
    return trace


def test_per_example_b_simple_matches_exact_noise_scale_with_one_micro_batch_per_step(beta_sidecar) -> None:
    run = "per-example-accuracy-e2e"
    trace = run_training(beta_sidecar.address, run)
    events, layer_events = step_events(beta_sidecar, run, STEPS)
    report = compare(trace, events, BETA, layer_events)
    print("\n" + format_report(report).replace("accuracy e2e", "per-example accuracy e2e"))

    assert_complete_and_accurate(report, events, steps=STEPS, source="per-example", global_batch=BATCH, micro_batches=1)
