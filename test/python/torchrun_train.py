"""A training script for torchrun (`python -m torch.distributed.run --standalone --nproc-per-node N`):
DDP over gloo on load_digits, gradient accumulation under no_sync(), and noisescope's one-line watch.

The batches are ddp_support's (one seeded global batch per step), so one process accumulating the same
micro-batches trains the same model. The sidecar's address comes from $NOISESCOPE_ADDRESS and the run's
name is the hook's default, which every rank of one torchrun job (restarts included) derives alike.

--crash-step S: on torchrun's first attempt only ($TORCHELASTIC_RESTART_COUNT 0), rank 1 exits after step S's
all-reduce, before its optimizer step, once rank 0 has ended step S and sent it (a marker file); rank 0 then
fails in step S + 1's all-reduce. With
--checkpoint, rank 0 saves the parameters after every step (atomically) and a restarted group resumes after
the last one saved, so the crash and restart change nothing in the numerics, and tells the watch its first step
(first_step), so the run's step numbers continue.

Each rank writes what it saw to <out>/attempt<a>-rank<r>.pt.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ddp_support import LR, train  # noqa: E402

CRASH_EXIT = 17


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--crash-step", type=int, default=None)
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--no-watch", action="store_true", help="the same training without noisescope")
    args = parser.parse_args()

    import noisescope
    from noisescope.demo import make_model

    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))  # env:// from torchrun
    rank, world = dist.get_rank(), dist.get_world_size()
    attempt = int(os.environ["TORCHELASTIC_RESTART_COUNT"])

    model = make_model()
    first = 0
    if args.checkpoint is not None and args.checkpoint.exists():
        saved = torch.load(args.checkpoint, weights_only=True)
        model.load_state_dict(saved["model"])
        first = int(saved["step"]) + 1
    ddp = DDP(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=LR)
    # Resumed: the steps continue the run's numbering (the sidecar sees one training, not a new one at step 0).
    handle = None if args.no_watch else noisescope.watch(ddp, opt, first_step=first)

    crashing = attempt == 0 and args.crash_step is not None
    sent = args.out / "rank0-sent-crash-step"

    def flush() -> None:
        """Lets the sender hand every ended step to gRPC, and gRPC put it on the wire."""
        deadline = time.monotonic() + 10
        while handle is not None and handle.stats.queued and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(1.0)

    def crash(step: int) -> None:
        if rank != 1 or not crashing or step != args.crash_step:
            return
        # Which steps the sidecar joins must not depend on timing: rank 0 has ended this step and sent it.
        flush()
        deadline = time.monotonic() + 60
        while not sent.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        os._exit(CRASH_EXIT)

    for step in range(first, args.steps):
        train(model, ddp, opt, rank, world, 1, first=step, stop=crash)
        if args.checkpoint is not None and rank == 0:
            partial = args.checkpoint.with_suffix(".tmp")
            torch.save({"model": model.state_dict(), "step": step}, partial)
            os.replace(partial, args.checkpoint)
        if crashing and rank == 0 and step == args.crash_step:
            flush()
            sent.touch()  # then blocks in the next step's all-reduce until rank 1's exit breaks it

    result: dict[str, Any] = {"rank": rank, "world": world, "attempt": attempt, "first": first}
    if handle is not None:
        result["run"] = handle.run
        handle.remove(timeout=10)
        result["stats"] = handle.stats
    result["params"] = [p.detach().clone() for p in model.parameters()]
    torch.save(result, args.out / f"attempt{attempt}-rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
