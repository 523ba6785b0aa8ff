"""Sketch mode: each micro-batch's gradient per layer, compressed on its device into a CountSketch of m buckets.

Element i of a layer goes to bucket b(i) with sign s(i), both drawn by torch's generator on the
gradient's device, seeded from the step's seed, the layer and the chunk: every micro-batch and rank of a
step sketch with the same (b, s) (the same torch version and device type draw the same numbers), so
E⟨S h_i, S h_j⟩ = ⟨h_i, h_j⟩ with variance (|x|²|y|² + ⟨x,y⟩² − 2Σx_i²y_i²)/m. (A linear hash mod a prime
was tried first: pairs of elements at the same distance collide together, and the row × column structure
of a Linear layer's gradient showed 1.8× that standard deviation; a cubic sign hash fixed it but cost 36 ms
per million elements on one CPU thread, the generator 4 ms.) A new seed each step makes the sketching
errors independent across steps, so smoothing averages them out. A layer of at most m elements is sent
whole (its "sketch" is the identity: exact).

On CUDA the training thread only queues the sketching (a scatter_add_ per layer on the gradient's device)
into a small per-micro-batch buffer, copied to pinned host memory once at step end (non-blocking); the
full gradient never leaves the device. On the CPU the sketching itself would cost the training thread
~5 ms per million elements and step plus ~1.5 ms per million and micro-batch, so there the gradients are
copied out as dense mode does (its buffer pool, a memcpy per parameter, its drop-and-count when every
buffer is held) and sketched on the sender thread. Either way serialisation is on the sender thread.
"""
from __future__ import annotations

import hashlib
from typing import Any, Callable, Iterator, Sequence

import torch

from ._dense import CHUNK_BYTES, WIRE_DTYPES, DenseCapture, DenseStep
from ._meter import LayerInfo

DEFAULT_SKETCH_SIZE = 4096
MAX_SKETCH_SIZE = CHUNK_BYTES // 4  # one layer's fp32 sketch fits one message
HASH_CHUNK = 1 << 20  # elements drawn at once (bounds the temporaries)
# Hashes kept for the rest of a step (reused by its later micro-batches), in elements; beyond it they are
# drawn again per micro-batch. 12 bytes each (int64 bucket, fp32 sign).
CACHE_ELEMENTS = 1 << 23
_MASK64 = (1 << 64) - 1
SEED_BITS = 53  # the sidecar reads uint64 as a JavaScript number


def _mix(x: int) -> int:
    """splitmix64's finaliser: a well-spread 64-bit function of x."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def run_seed(run: str) -> int:
    """The same on every rank of a run (ranks share its name), different between runs."""
    return int.from_bytes(hashlib.sha256(run.encode()).digest()[:8], "little")


def step_seed(base: int, step: int) -> int:
    return _mix(base ^ _mix(step)) & ((1 << SEED_BITS) - 1)


def chunk_seed(seed: int, layer: int, start: int) -> int:
    return _mix(seed ^ _mix((layer << 40) ^ start)) >> 1  # torch takes seeds below 2^63


def sketch_sizes(layers: Sequence[LayerInfo], size: int) -> list[int]:
    return [min(layer.numel, size) for layer in layers]


def hash_chunk(seed: int, layer: int, start: int, length: int, m: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Buckets (int64: scatter_add_ is 2× index_add_ with int32 on the CPU) and signs (fp32 ±1) of elements
    [start, start + length) of a layer, from one draw in [0, 2m)."""
    generator = torch.Generator(device=device)
    generator.manual_seed(chunk_seed(seed, layer, start))
    r = torch.randint(0, 2 * m, (length,), generator=generator, device=device, dtype=torch.int32)
    return (r >> 1).long(), (r & 1).to(torch.float32).mul_(-2.0).add_(1.0)


def count_sketch(flat: torch.Tensor, m: int, seed: int, layer: int) -> torch.Tensor:
    """The CountSketch of a 1-D tensor as the hook sends it (fp32): for tests and tools."""
    out = torch.zeros(m, dtype=torch.float32, device=flat.device)
    if flat.numel() <= m:
        out[: flat.numel()] = flat
        return out
    for start in range(0, flat.numel(), HASH_CHUNK):
        piece = flat[start : start + HASH_CHUNK].to(torch.float32)
        bucket, sign = hash_chunk(seed, layer, start, piece.numel(), m, flat.device)
        out.scatter_add_(0, bucket, piece * sign)
    return out


class SketchCapture:
    """Training-thread side, in DenseCapture's place: micro-batch j's gradients sketched into buffer j."""

    def __init__(
        self,
        params: Sequence[torch.nn.Parameter],
        layers: Sequence[LayerInfo],
        *,
        run: str,
        size: int,
        dtype: str,
        count_dropped: Callable[[int], None],
    ) -> None:
        self._dtype, self.wire_dtype = WIRE_DTYPES[dtype]
        self.sizes = sketch_sizes(layers, size)
        self._numels = [layer.numel for layer in layers]
        self._offsets = [0] * len(layers)
        total = 0
        for i, m in enumerate(self.sizes):
            self._offsets[i] = total
            total += m
        self.total = total
        self._base_seed = run_seed(run)
        # CPU training: copy out (dense mode's pool), sketch on the sender thread.
        on_device = any(p.is_cuda for p in params) and torch.cuda.is_available()
        self._copy = None if on_device else DenseCapture(params, layers, dtype="fp32", count_dropped=count_dropped)
        self._measuring = False
        self._step_index = 0  # optimizer steps begun: the seed's step (the meter's step count)
        self._seed = 0
        self._micro: list[dict[torch.device, torch.Tensor]] = []  # [micro-batch][device]: flat sketches
        self._hashes: dict[tuple[int, int, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}
        self._cached = 0

    def begin_step(self, measuring: bool) -> None:
        self._micro = []
        self._hashes.clear()
        self._cached = 0
        self._measuring = measuring
        self._seed = step_seed(self._base_seed, self._step_index)
        self._step_index += 1
        if self._copy is not None:
            self._copy.begin_step(measuring)

    def restart(self) -> None:
        """`.grad` was reset without an optimizer step: the sketched micro-batches are discarded."""
        self._micro = []
        if self._copy is not None:
            self._copy.restart()

    def take(self, micro: int, index: int, grad: torch.Tensor) -> None:
        """Adds micro-batch `micro`'s gradient of parameter `index` to its sketch (the meter's gradient hook)."""
        if not self._measuring:
            return
        if self._copy is not None:
            self._copy.take(micro, index, grad)
            return
        while len(self._micro) <= micro:
            self._micro.append({})
        device = grad.device
        buffers = self._micro[micro]
        target = buffers.get(device)
        if target is None:
            target = buffers[device] = torch.zeros(self.total, dtype=torch.float32, device=device)
        m, start = self.sizes[index], self._offsets[index]
        out = target[start : start + m]
        flat = grad.detach().reshape(-1)  # logical element order whatever the memory format
        if flat.numel() <= m:
            out.add_(flat)  # exact; a second gradient of the micro-batch (nested backward) adds to it
            return
        for offset in range(0, flat.numel(), HASH_CHUNK):
            piece = flat[offset : offset + HASH_CHUNK]
            bucket, sign = self._hash(index, offset, piece.numel(), device)
            out.scatter_add_(0, bucket, piece.to(torch.float32) * sign)

    def _hash(self, layer: int, start: int, length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (layer, start, device)
        cached = self._hashes.get(key)
        if cached is not None:
            return cached
        pair = hash_chunk(self._seed, layer, start, length, self.sizes[layer], device)
        if self._cached + length <= CACHE_ELEMENTS:
            self._hashes[key] = pair
            self._cached += length
        return pair

    def close(self, micro_batches: int, skipped: bool) -> SketchStep | None | bool:
        """At step end: the step's sketches to send; None when sent without them (skipped); False: dropped."""
        micro, self._micro = self._micro, []
        self._hashes.clear()
        self._cached = 0
        if self._copy is not None:
            copied = self._copy.close(micro_batches, skipped)
            return copied if copied is None or copied is False else SketchStep(self, [], [], self._seed, copied)
        if skipped or not micro:
            return None
        while len(micro) < micro_batches:
            micro.append({})  # no gradient reached the model in this micro-batch: a zero sketch
        hosts: list[list[torch.Tensor]] = []
        ready: dict[torch.device, Any] = {}
        for buffers in micro[:micro_batches]:
            row = []
            for device, sketch in buffers.items():
                if sketch.is_cuda:
                    host = torch.empty(self.total, dtype=torch.float32, pin_memory=True)
                    host.copy_(sketch, non_blocking=True)
                    row.append(host)
                    ready.setdefault(device, None)
                else:
                    row.append(sketch if sketch.device.type == "cpu" else sketch.to("cpu"))
            hosts.append(row)
        events = []
        for device in ready:
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(device))
            events.append(event)
        return SketchStep(self, hosts, events, self._seed)

    def sketch_rows(self, buffers: Sequence[torch.Tensor], seed: int) -> list[torch.Tensor]:
        """The sketches of K flat host gradients (Hello.layers order), each layer's hash drawn once for all K."""
        rows = [torch.zeros(self.total, dtype=torch.float32) for _ in buffers]
        start = 0
        for layer, (numel, m, offset) in enumerate(zip(self._numels, self.sizes, self._offsets)):
            for row, buffer in zip(rows, buffers):
                if numel <= m:
                    row[offset : offset + m] = buffer[start : start + numel]
            if numel > m:
                for chunk in range(0, numel, HASH_CHUNK):
                    length = min(HASH_CHUNK, numel - chunk)
                    bucket, sign = hash_chunk(seed, layer, chunk, length, m, torch.device("cpu"))
                    for row, buffer in zip(rows, buffers):
                        piece = buffer[start + chunk : start + chunk + length]
                        row[offset : offset + m].scatter_add_(0, bucket, piece * sign)
            start += numel
        return rows


class SketchStep(DenseStep):
    """One step's K sketches on their way to the wire (the sender treats it as a DenseStep)."""

    def __init__(
        self, capture: SketchCapture, hosts: list[list[torch.Tensor]], ready: list[Any], seed: int, copied: DenseStep | None = None
    ) -> None:
        self._sketch = capture
        self._hosts = hosts  # [micro-batch][device]: sketches (device path)
        self._ready = ready
        self._copied = copied  # CPU path: the gradients themselves, sketched in rows()
        self._rows: list[torch.Tensor] | None = None
        self.seed = seed
        self.step = 0
        self.examples: Sequence[int] = ()

    @property
    def micro_batches(self) -> int:
        return self._copied.micro_batches if self._copied is not None else len(self._hosts)

    def rows(self) -> list[torch.Tensor]:
        """The K sketches (fp32, host), computed once; on the sender thread."""
        if self._rows is None:
            copied = self._copied
            if copied is not None:
                try:
                    self._rows = self._sketch.sketch_rows(copied._buffers, self.seed)
                finally:
                    copied.release()
            else:
                for event in self._ready:
                    event.synchronize()  # the copy-out; blocks this thread only
                rows = []
                for parts in self._hosts:
                    total = torch.zeros(self._sketch.total, dtype=torch.float32) if not parts else parts[0]
                    for extra in parts[1:]:  # layers on several devices: each buffer holds its own, zeros elsewhere
                        total = total + extra
                    rows.append(total)
                self._rows, self._hosts = rows, []
        return self._rows

    def frames(self) -> Iterator[Any]:
        """RankMessages: consecutive layers' sketches of ≤ CHUNK_BYTES per message, every micro-batch's in turn."""
        from .v1 import noisescope_pb2 as pb

        capture = self._sketch
        wire_dtype = capture._dtype
        rows = [memoryview(row.to(wire_dtype).view(torch.uint8).numpy()) for row in self.rows()]
        self._rows = []
        size = torch.empty((), dtype=wire_dtype).element_size()
        k = len(rows)
        for first, count in self._groups(size):
            start = capture._offsets[first]
            end = capture._offsets[first + count - 1] + capture.sizes[first + count - 1]
            for j, row in enumerate(rows):
                yield pb.RankMessage(
                    shard=pb.GradientShard(
                        step=self.step,
                        micro_batch=j,
                        examples=self.examples[j],
                        layer=first,
                        micro_batches=k,
                        sketch=pb.Sketch(
                            seed=self.seed,
                            size=end - start,
                            dtype=capture.wire_dtype,
                            data=bytes(row[start * size : end * size]),
                            layers=count,
                        ),
                    )
                )

    def _groups(self, element_size: int) -> Iterator[tuple[int, int]]:
        """(first layer, layers) runs of consecutive layers whose sketches fit one message."""
        sizes = self._sketch.sizes
        first, data = 0, 0
        for i, m in enumerate(sizes):
            if i > first and (data + m) * element_size > CHUNK_BYTES:
                yield first, i - first
                first, data = i, 0
            data += m
        yield first, len(sizes) - first

    def release(self) -> None:
        self._hosts, self._rows = [], []
        if self._copied is not None:
            self._copied.release()

    def __del__(self) -> None:  # a step lost on the way still gives its copy buffers back
        try:
            self.release()
        except Exception:
            pass
