"""Dense ingest end to end: the hook (watch(mode="dense")) → gRPC → the sidecar's Gram matrices → its
step line, in MB/s of gradient data, beside the raw gRPC figure measured in the same run
(`noisescope bench wire --clients python --sizes 1 --json`: a grpcio client streaming 1 MiB messages
to grpc-js, default and enlarged HTTP/2 window).

    .venv/bin/python test/python/bench_dense_ingest.py [--parameters 3] [--repeats 5] [--dtype fp32]

The model is an MLP of about `--parameters` million parameters trained with 4 micro-batches per step.
Each repeat trains a burst of as many steps as the hook holds buffers for (so none is dropped), then
waits for the sidecar's line for the last one: MB/s = the burst's dense bytes (steps × K × parameters
× bytes per value) over the time from the first step's end (its optimizer.step) to that line. The
training of later steps overlaps the sending of earlier ones, as in a real run. Alongside, the
sidecar's own ceiling: the same chunks, framed once beforehand, streamed by a bare grpcio client with
no training and no hook (where it lies between raw and hook says which side costs what). Prints one
JSON line per repeat and a summary line with the medians and dense/raw.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import noisescope  # noqa: E402
from conftest import CLI, ROOT, Sidecar  # noqa: E402

ACCUMULATION = 4
MICRO_BATCH = 8
WIDTH = 1024


def raw_wire() -> dict:
    """The wire benchmark's enlarged-window python → grpc-js row (and the default one)."""
    out = subprocess.run(
        ["node", str(CLI), "bench", "wire", "--clients", "python", "--sizes", "1", "--json"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    rows = {("enlarged" if "16 MiB" in row["lane"] else "default"): row["mbPerSecond"] for row in report["rows"]}
    return rows


def sidecar_ceiling(numels: list[int], steps: int = 12) -> float:
    """MB/s of a bare client streaming pre-framed fp32 dense steps (K micro-batches) into a fresh sidecar,
    from the end of step 1 (warm) to the end of the last."""
    import grpc

    from noisescope._dense import CHUNK_BYTES, dense_frame, serialize_request
    from noisescope.v1 import noisescope_pb2 as pb

    chunk = CHUNK_BYTES // 4
    starts = [sum(numels[:i]) for i in range(len(numels))]
    views = [memoryview(torch.randn(sum(numels)).view(torch.uint8).numpy()) for _ in range(ACCUMULATION)]
    frames = [  # every chunk of one step, framed once; the step number is patched per step below
        (layer, offset, j, views[j][(start + offset) * 4 : (start + offset + min(chunk, numel - offset)) * 4])
        for layer, (start, numel) in enumerate(zip(starts, numels))
        for offset in range(0, numel, chunk)
        for j in range(ACCUMULATION)
    ]
    framed = {step: [dense_frame(step, j, MICRO_BATCH, l, ACCUMULATION, o, pb.DTYPE_F32, v) for l, o, j, v in frames] for step in range(steps)}

    def requests():
        layers = [pb.Layer(name=f"layer{i}", numel=n, kind="Linear") for i, n in enumerate(numels)]
        yield pb.RankMessage(hello=pb.Hello(protocol_version=1, run="ceiling", rank=0, world_size=1, mode=pb.MODE_DENSE, every=1, session="s", layers=layers))
        for step in range(steps):
            yield from framed[step]
            examples = ACCUMULATION * MICRO_BATCH
            yield pb.RankMessage(step_end=pb.StepEnd(step=step, micro_batches=ACCUMULATION, local_examples=examples, global_examples=examples, lr=0.1))

    sidecar = Sidecar()
    channel = grpc.insecure_channel(sidecar.address)
    try:
        attach = channel.stream_stream(
            "/noisescope.v1.NoiseScope/Attach", request_serializer=serialize_request, response_deserializer=pb.SidecarMessage.FromString
        )
        call = attach(requests())
        def drain() -> None:
            try:
                for _ in call:
                    pass
            except grpc.RpcError:
                pass  # the channel closing at the end

        threading.Thread(target=drain, daemon=True).start()
        step_line = lambda step: lambda e: e["type"] == "step" and e.get("run") == "ceiling" and e["step"] == step  # noqa: E731
        sidecar.wait_for(step_line(1), 120)
        t0 = time.perf_counter()
        sidecar.wait_for(step_line(steps - 1), 120)
        return (steps - 2) * ACCUMULATION * sum(numels) * 4 / 1e6 / (time.perf_counter() - t0)
    finally:
        channel.close()
        sidecar.stop()


def dense_bursts(parameters_m: float, repeats: int, dtype: str) -> tuple[dict[str, list[float]], list[int], int]:
    """Per repeat, two bursts: "overlapped" (the sender streams while the next steps train) and "hook"
    (the sender is held until the burst is captured: the hook → sidecar → Gram path alone)."""
    torch.manual_seed(0)
    depth = max(1, round(parameters_m * 1e6 / (WIDTH * WIDTH)))
    model = nn.Sequential(*[m for _ in range(depth) for m in (nn.Linear(WIDTH, WIDTH), nn.Tanh())])
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    parameters = sum(p.numel() for p in model.parameters())
    value_bytes = {"fp32": 4, "fp16": 2, "bf16": 2}[dtype]
    sidecar = Sidecar()
    try:
        ns = noisescope.watch(model, optimizer, address=sidecar.address, run="bench-dense", mode="dense", dtype=dtype)
        while not ns.stats.connected:
            time.sleep(0.01)
        burst = ns._meter._dense.steps_held_limit  # type: ignore[union-attr]
        gate = threading.Event()
        ns._sender.tap = lambda record: gate.wait()  # type: ignore[union-attr]
        ends: list[float] = []
        optimizer.register_step_pre_hook(lambda *_: ends.append(time.perf_counter()))
        x = torch.randn(MICRO_BATCH, WIDTH)
        figures: dict[str, list[float]] = {"overlapped": [], "hook": []}
        step = 0
        for repeat in range(repeats + 1):  # the first round warms up (buffers, connection)
            for lane in ("overlapped", "hook"):
                ends.clear()
                if lane == "overlapped":
                    gate.set()
                else:
                    gate.clear()
                for _ in range(burst):
                    optimizer.zero_grad(set_to_none=True)
                    for _ in range(ACCUMULATION):
                        model(x).square().mean().backward()
                    optimizer.step()
                training = ends[-1] - ends[0]
                start = ends[0] if lane == "overlapped" else time.perf_counter()
                gate.set()
                last = step + burst - 1
                sidecar.wait_for(lambda e: e["type"] == "step" and e.get("run") == "bench-dense" and e["step"] == last, 120)
                seconds = time.perf_counter() - start
                step += burst
                mb = burst * ACCUMULATION * parameters * value_bytes / 1e6
                if repeat > 0:
                    figures[lane].append(mb / seconds)
                    print(json.dumps({"repeat": repeat, "lane": lane, "steps": burst, "mb": mb, "seconds": seconds, "mbPerSecond": mb / seconds, "trainingSeconds": training}))
        dropped = ns.stats.dropped
        ns.remove()
        return figures, [p.numel() for p in model.parameters()], dropped
    finally:
        sidecar.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parameters", type=float, default=3.0, help="millions of parameters (default 3)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32")
    args = parser.parse_args()
    figures, numels, dropped = dense_bursts(args.parameters, args.repeats, args.dtype)
    ceiling = sidecar_ceiling(numels)
    raw = raw_wire()
    hook = statistics.median(figures["hook"])
    overlapped = statistics.median(figures["overlapped"])
    print(json.dumps({
        "parameters": sum(numels),
        "microBatches": ACCUMULATION,
        "dtype": args.dtype,
        "denseMbPerSecond": hook,
        "denseOverlappedMbPerSecond": overlapped,
        "rawEnlargedMbPerSecond": raw.get("enlarged"),
        "rawDefaultMbPerSecond": raw.get("default"),
        "sidecarCeilingMbPerSecond": ceiling,
        "ofRawEnlarged": hook / raw["enlarged"] if raw.get("enlarged") else None,
        "overlappedOfRawEnlarged": overlapped / raw["enlarged"] if raw.get("enlarged") else None,
        "dropped": dropped,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
