"""A real, small, CPU-fast training run to watch with noisescope.

    python -m noisescope.demo [--address A] [--steps N] [--micro-batch b]
                              [--accumulation k] [--lr LR] [--seed S] [--every E]
                              [--step-time SECONDS] [--no-hook]
                              [--adaptive [--apply-lr-hint] [--max-batch B]]

An MLP (64→128→128→10, ReLU) learns scikit-learn's `load_digits` (1797 8×8
images, shipped with scikit-learn: no download), features standardised. A
shuffling DataLoader runs over the whole set; each optimizer step accumulates
k micro-batches (loss / k, k backward passes), clips the gradient norm and
steps SGD with momentum and weight decay. The only noisescope line is

    ns = noisescope.watch(model, optimizer, dataset_size=len(dataset), address=...)

With --adaptive the training follows the sidecar's batch-size advice: it starts
from a small batch (16 × 2 unless --accumulation says otherwise) and
`ns.adaptive_accumulation(...)` changes the number of micro-batches per step at
step boundaries, printing each change.

The pieces (`make_data`, `make_model`, `make_optimizer`, `train`) are functions
so tests and benchmarks train exactly the same way.
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from typing import TYPE_CHECKING, Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

if TYPE_CHECKING:
    from noisescope import AdaptiveAccumulation

# Defaults (the demo and the accuracy tests share them).
MICRO_BATCH = 16
ACCUMULATION = 4
ADAPTIVE_START = 2  # --adaptive starts from 16 × 2 = 32, well below this task's noise scale
LR = 0.05
MOMENTUM = 0.9
WEIGHT_DECAY = 0.02
CLIP = 1.0
STEPS = 600
STEP_TIME = 0.04  # seconds per optimizer step in the demo, so a person can watch the dashboard


def make_data() -> TensorDataset:
    """load_digits as a TensorDataset: standardised float32 features, int64 labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise SystemExit("noisescope.demo needs scikit-learn (pip install scikit-learn)") from e
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float64)
    mean, std = x.mean(0), x.std(0)
    x = (x - mean) / torch.where(std > 0, std, torch.ones_like(std))  # constant pixels stay 0
    y = torch.tensor(digits.target, dtype=torch.int64)
    return TensorDataset(x.float(), y)


def make_model(seed: int = 0, hidden: int = 128) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(64, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, 10),
    )


def make_optimizer(
    model: nn.Module, lr: float = LR, momentum: float = MOMENTUM, weight_decay: float = WEIGHT_DECAY
) -> torch.optim.Optimizer:
    """SGD with momentum and weight decay (applied by the optimizer, not part of the loss).

    Weight decay keeps |G|² of the loss from collapsing once the training set
    is fitted, so B_simple settles at a few times the batch instead of growing
    past N. The hook measures the loss gradient; decay is not part of it."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)


def make_loader(dataset: TensorDataset, micro_batch: int = MICRO_BATCH, seed: int = 0) -> DataLoader:
    """Shuffles every epoch; drops the short last batch so every micro-batch has b examples.

    (With b = 16 an epoch is 112 micro-batches: for k = 2, 4, 8 no optimizer
    step straddles two epochs, so its k·b examples are distinct.)"""
    return DataLoader(
        dataset,
        batch_size=micro_batch,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(seed),
    )


def _forever(loader: DataLoader) -> Iterator:
    for _epoch in itertools.count():
        yield from loader


def _fresh_subsets(dataset: TensorDataset, micro_batch: int, accumulation: int, seed: int) -> Iterator:
    """Each optimizer step's k·b examples are a fresh uniform subset (without
    replacement within the step, independent across steps). Not what people
    train with; it is the sampling the noise-scale identity assumes at the
    current parameters, for measuring how much epoch shuffling matters."""
    x, y = dataset.tensors
    gen = torch.Generator().manual_seed(seed)
    while True:
        idx = torch.randperm(len(dataset), generator=gen)[: micro_batch * accumulation]
        for part in idx.view(accumulation, micro_batch):
            yield x[part], y[part]


def train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    dataset: TensorDataset,
    *,
    steps: int = STEPS,
    micro_batch: int = MICRO_BATCH,
    accumulation: int = ACCUMULATION,
    clip: Optional[float] = CLIP,
    seed: int = 0,
    sampling: str = "epoch",
    before_step: Optional[Callable[[int, nn.Module], None]] = None,
    on_micro_batch: Optional[Callable[[int, int, torch.Tensor, torch.Tensor], None]] = None,
    log_every: int = 0,
    log: Callable[[str], None] = print,
    step_time: float = 0.0,
    adaptive: Optional[AdaptiveAccumulation] = None,
    after_step: Optional[Callable[[int, nn.Module], Optional[bool]]] = None,
) -> list[dict]:
    """Train for `steps` optimizer steps of `accumulation` micro-batches each.

    With `adaptive` (a noisescope helper) each step has `adaptive.steps`
    micro-batches instead, read when the step begins; with `log_every` its
    changes are logged.

    `before_step(step, model)` runs after the step's last backward pass and
    before clipping and `optimizer.step()`: the parameters are those the step's
    gradient was taken at. `on_micro_batch(step, index, x, y)` runs after each
    micro-batch's backward pass. `after_step(step, model)` runs after
    `optimizer.step()`; returning True ends the training. `sampling` is "epoch" (a shuffling DataLoader,
    as people train) or "subsets" (see `_fresh_subsets`). Returns one record per
    step (loss, accuracy, micro-batches)."""
    model.train()
    if adaptive is not None and sampling != "epoch":
        raise ValueError("adaptive accumulation needs sampling='epoch' (the subsets sampler fixes the step's size)")
    if sampling == "epoch":
        batches = _forever(make_loader(dataset, micro_batch, seed))
    elif sampling == "subsets":
        batches = _fresh_subsets(dataset, micro_batch, accumulation, seed)
    else:
        raise ValueError(f"unknown sampling {sampling!r}")
    history = []
    seen = correct = 0
    loss_sum = 0.0
    changes = 0
    for step in range(steps):
        t0 = time.perf_counter()
        if adaptive is not None:
            accumulation = adaptive.steps  # changes only between optimizer steps
        optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        step_correct = 0
        for i in range(accumulation):
            x, y = next(batches)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            (loss / accumulation).backward()
            step_loss += loss.item() / accumulation
            step_correct += int((logits.detach().argmax(1) == y).sum())
            if on_micro_batch is not None:
                on_micro_batch(step, i, x, y)
        if before_step is not None:
            before_step(step, model)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        n = accumulation * micro_batch
        history.append({"step": step, "loss": step_loss, "accuracy": step_correct / n, "micro_batches": accumulation})
        if adaptive is not None and log_every and len(adaptive.history) > changes:
            for change in adaptive.history[changes:]:
                log(
                    f"adaptive: from step {change.step}: batch {change.previous_global_batch} → {change.global_batch} "
                    f"({change.accumulation_steps} × {micro_batch}), lr {change.lr:g}: {change.reason}"
                )
            changes = len(adaptive.history)
        seen += n
        correct += step_correct
        loss_sum += step_loss * n
        if log_every and ((step + 1) % log_every == 0 or step + 1 == steps):
            log(f"step {step + 1:5d}/{steps}  loss {loss_sum / seen:.4f}  train accuracy {correct / seen:6.1%}")
            seen = correct = 0
            loss_sum = 0.0
        if step_time > 0:
            left = step_time - (time.perf_counter() - t0)
            if left > 0:
                time.sleep(left)
        if after_step is not None and after_step(step, model):
            break
    return history


@torch.no_grad()
def evaluate(model: nn.Module, dataset: TensorDataset) -> tuple[float, float]:
    """(mean loss, accuracy) over the whole data set."""
    x, y = dataset.tensors
    was_training = model.training
    model.eval()
    logits = model(x)
    model.train(was_training)
    return float(F.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m noisescope.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--address", default=None, help="sidecar address (default: NOISESCOPE_ADDRESS or 127.0.0.1:50051)")
    p.add_argument("--steps", type=int, default=STEPS, help=f"optimizer steps (default {STEPS})")
    p.add_argument("--micro-batch", type=int, default=MICRO_BATCH, help=f"examples per micro-batch (default {MICRO_BATCH})")
    p.add_argument("--accumulation", type=int, default=None,
                   help=f"micro-batches per optimizer step (default {ACCUMULATION}; with --adaptive, the first count: {ADAPTIVE_START})")
    p.add_argument("--lr", type=float, default=LR, help=f"learning rate (default {LR})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--every", type=int, default=1, help="measure every N optimizer steps (default 1)")
    p.add_argument("--step-time", type=float, default=STEP_TIME,
                   help=f"pace each optimizer step to at least this many seconds so the dashboard can be watched; 0 = full speed (default {STEP_TIME})")
    p.add_argument("--no-hook", action="store_true", help="train without noisescope (for comparison)")
    p.add_argument("--adaptive", action="store_true",
                   help="follow the sidecar's batch-size advice by changing the gradient accumulation at step boundaries")
    p.add_argument("--apply-lr-hint", action="store_true", help="with --adaptive: also scale the learning rate as each hint says")
    p.add_argument("--max-batch", type=int, default=None, help="the run's largest global batch (its BatchPolicy); default: the sidecar's")
    args = p.parse_args(argv)
    if args.accumulation is None:
        args.accumulation = ADAPTIVE_START if args.adaptive else ACCUMULATION
    if args.steps < 1 or args.micro_batch < 1 or args.accumulation < 1 or args.every < 1:
        p.error("--steps, --micro-batch, --accumulation and --every must be positive")
    if args.adaptive and args.no_hook:
        p.error("--adaptive follows the sidecar's advice: it needs the hook (drop --no-hook)")
    if args.apply_lr_hint and not args.adaptive:
        p.error("--apply-lr-hint only applies with --adaptive")

    torch.set_num_threads(1)  # a tiny MLP: more threads only contend with the sidecar
    dataset = make_data()
    model = make_model(args.seed)
    optimizer = make_optimizer(model, lr=args.lr)
    ns = None
    adaptive = None
    if not args.no_hook:
        import noisescope

        try:
            policy = noisescope.BatchPolicy(max_batch=args.max_batch) if args.max_batch is not None else None
            ns = noisescope.watch(
                model, optimizer, dataset_size=len(dataset), address=args.address, every=args.every, policy=policy
            )
            if args.adaptive:
                adaptive = ns.adaptive_accumulation(
                    steps=args.accumulation, micro_batch=args.micro_batch, apply_lr_hint=args.apply_lr_hint
                )
        except ValueError as error:
            p.error(str(error))
    print(
        f"noisescope demo: load_digits (N={len(dataset)}), MLP 64-128-128-10, SGD lr {args.lr} momentum {MOMENTUM} weight decay {WEIGHT_DECAY}, "
        f"batch {args.micro_batch}x{args.accumulation}={args.micro_batch * args.accumulation}, {args.steps} steps"
        + (f", paced to {args.step_time * 1000:.0f} ms/step (--step-time 0: full speed)" if args.step_time > 0 else "")
        + (", adaptive: following the sidecar's batch-size advice" if adaptive is not None else ""),
        flush=True,
    )
    try:
        train(
            model,
            optimizer,
            dataset,
            steps=args.steps,
            micro_batch=args.micro_batch,
            accumulation=args.accumulation,
            seed=args.seed,
            log_every=max(1, args.steps // 10),
            log=lambda s: print(s, flush=True),
            step_time=args.step_time,
            adaptive=adaptive,
        )
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    finally:
        if ns is not None:
            ns.remove()
    loss, acc = evaluate(model, dataset)
    print(f"done: full-set loss {loss:.4f}, accuracy {acc:.1%}", flush=True)
    if adaptive is not None:
        path = " → ".join([str(args.micro_batch * args.accumulation), *(str(c.global_batch) for c in adaptive.history)])
        print(f"adaptive: {len(adaptive.history)} batch changes: {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
