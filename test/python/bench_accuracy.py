"""Accuracy benchmark: the sidecar's smoothed |G|², tr(Σ), B_simple against the exact ones.

    .venv/bin/python test/python/bench_accuracy.py [--betas 0.9,0.95,0.98,0.99,0.995]
        [--ks 2,4,8] [--seeds 0,1,2] [--steps 500] [--micro-batch 16]
        [--sampling epoch|subsets|both] [--offline] [--json FILE]

For each (k, seed, sampling, beta) the demo's training runs through the hook
into a real sidecar started with `serve --json --beta <beta>`, exactly as in
test_accuracy_e2e.py, and the median absolute relative error over the second
half of training is computed for each quantity. The table shows, per (k, beta,
sampling), the median over seeds (and the worst seed for B_simple), and the
same for the replica (the estimator applied in float64 to the same batches,
without hook or sidecar: what the estimator itself can do; the sidecar should
match it).

sampling: "epoch" is a shuffling DataLoader (what people use); "subsets" draws
each step's batch as a fresh uniform subset, which removes the bias that epoch
order adds (examples not yet seen this epoch have larger gradients).

--offline skips hook and sidecar and reports only the replica (useful when the
sidecar is not built). Needs `npm run build` and the hook installed in .venv
otherwise (`sh .ci/bootstrap` does both).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import test_accuracy_e2e as acc  # noqa: E402
from exact_noise import smooth_ratio  # noqa: E402

KEYS = ("gradSqNorm", "traceSigma", "bSimple")


def replica_events(trace: acc.Trace, beta: float) -> list[dict]:
    sm = smooth_ratio([g for g, _ in trace.replica], [t for _, t in trace.replica], beta)
    return [
        {
            "step": s,
            "raw": {"gradSqNorm": g, "traceSigma": t},
            "smoothed": dict(zip(KEYS, sm[s])),
        }
        for s, (g, t) in enumerate(trace.replica)
    ]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--betas", default="0.9,0.95,0.98,0.99,0.995")
    p.add_argument("--ks", default="2,4,8", help="accumulation steps (micro-batches per step)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=acc.STEPS)
    p.add_argument("--micro-batch", type=int, default=acc.MICRO_BATCH)
    p.add_argument("--sampling", choices=("epoch", "subsets", "both"), default="epoch")
    p.add_argument("--offline", action="store_true", help="no hook or sidecar: replica only")
    p.add_argument("--json", type=Path, default=None, help="write every result here")
    args = p.parse_args()
    betas = [float(b) for b in args.betas.split(",")]
    ks = [int(k) for k in args.ks.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    samplings = ["epoch", "subsets"] if args.sampling == "both" else [args.sampling]

    import torch

    torch.set_num_threads(1)
    sidecars = {}
    if not args.offline:
        from conftest import Sidecar

        sidecars = {b: Sidecar("--beta", str(b)) for b in betas}
    results = []
    t_start = time.perf_counter()
    try:
        for sampling in samplings:
            for k in ks:
                for seed in seeds:
                    trace = None
                    for beta in betas:
                        run = f"bench-{sampling}-k{k}-s{seed}-b{beta}"
                        if trace is None or not args.offline:
                            # Without the hook, training does not depend on beta: one run serves all.
                            trace = acc.run_training(
                                address=None if args.offline else sidecars[beta].address,
                                steps=args.steps,
                                micro_batch=args.micro_batch,
                                accumulation=k,
                                seed=seed,
                                sampling=sampling,
                                run=run,
                            )
                        if args.offline:
                            events, layer_events = replica_events(trace, beta), None
                        else:
                            events, layer_events = acc.step_events(sidecars[beta], run, args.steps)
                        r = acc.compare(trace, events, beta, layer_events)
                        r.update(k=k, seed=seed, sampling=sampling)
                        results.append(r)
                        print(
                            f"  {sampling:7s} k={k} seed={seed} beta={beta}: B_simple err "
                            f"{'replica' if args.offline else 'sidecar'} {r['vs_truth']['bSimple']:.1%}, "
                            f"true B median {r['truth_b_simple_second_half']['median']:.0f} "
                            f"({r['seconds']['train_total']:.1f}s)",
                            file=sys.stderr,
                            flush=True,
                        )
    finally:
        for s in sidecars.values():
            s.stop()

    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    who = "replica" if args.offline else "sidecar"
    print(
        f"\nnoisescope accuracy: load_digits MLP, micro-batch {args.micro_batch}, {args.steps} steps, "
        f"seeds {args.seeds}; median |rel err| vs exact over the 2nd half, median over seeds "
        f"({time.perf_counter() - t_start:.0f}s)"
    )
    head = f"{'sampling':8s} {'k':>2s} {'batch':>5s} {'beta':>6s}  {who + ' |G|²':>13s} {'tr(Σ)':>7s} {'B_simple':>9s} {'(worst)':>8s}"
    if not args.offline:
        head += f"   {'replica |G|²':>12s} {'tr(Σ)':>7s} {'B_simple':>9s}"
    head += f"  {'true B':>7s}"
    print(head)
    print("-" * len(head))
    for sampling in samplings:
        for k in ks:
            for beta in betas:
                rs = [r for r in results if r["k"] == k and r["beta"] == beta and r["sampling"] == sampling]
                med = {key: statistics.median(r["vs_truth"][key] for r in rs) for key in KEYS}
                worst = max(r["vs_truth"]["bSimple"] for r in rs)
                line = (
                    f"{sampling:8s} {k:2d} {k * args.micro_batch:5d} {beta:6.3f}  {med['gradSqNorm']:13.1%} "
                    f"{med['traceSigma']:7.1%} {med['bSimple']:9.1%} {worst:8.1%}"
                )
                if not args.offline:
                    rep = {key: statistics.median(r["replica_vs_truth"][key] for r in rs) for key in KEYS}
                    line += f"   {rep['gradSqNorm']:12.1%} {rep['traceSigma']:7.1%} {rep['bSimple']:9.1%}"
                true_b = statistics.median(r["truth_b_simple_second_half"]["median"] for r in rs)
                line += f"  {true_b:7.0f}"
                print(line)
    # The sign of the errors: epoch order inflates tr(Σ) and |G|² (see the module docstring).
    sbeta = 0.99 if 0.99 in betas else betas[-1]
    print(f"\nmedian signed error vs exact (2nd half, median over seeds), {who}, beta {sbeta}")
    print(f"{'sampling':8s} {'k':>2s} {'beta':>6s}  {'|G|²':>7s} {'tr(Σ)':>7s} {'B_simple':>9s}")
    for sampling in samplings:
        for k in ks:
            for beta in [sbeta]:
                rs = [r for r in results if r["k"] == k and r["beta"] == beta and r["sampling"] == sampling]
                sg = {key: statistics.median(r["vs_truth_signed"][key] for r in rs) for key in KEYS}
                print(f"{sampling:8s} {k:2d} {beta:6.3f}  {sg['gradSqNorm']:+7.1%} {sg['traceSigma']:+7.1%} {sg['bSimple']:+9.1%}")
    if not args.offline:
        worst_pipe = max(max(r["pipeline_max_dev"]["smoothed"].values()) for r in results)
        print(f"\nlargest sidecar-vs-replica deviation of a smoothed value: {worst_pipe:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
