"""Dense mode: each micro-batch's gradient h_j, copied out per parameter and streamed as chunks.

The training thread only copies: a parameter's tensor hook (the meter's, before AccumulateGrad)
writes h_j into micro-batch j's flat host buffer (one copy_; on CUDA a non-blocking copy into
pinned memory, with one event recorded at step end). Buffers are reused from a pool and at most
`steps_held_limit` steps hold them; a step that finds none free is dropped and counted, never waited
for. The wire messages are framed by hand around the buffer's bytes on the sending side (the
gRPC request iterator's thread), so each chunk is copied once into its message.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Iterator, Sequence

import torch

from ._meter import LayerInfo

# Steps holding buffers at once (captured, queued or being sent): at least 2 (one sending, one behind
# it), more for small models while their buffers stay under HOST_BYTES, at most STEPS_HELD_MAX.
STEPS_HELD_MIN = 2
STEPS_HELD_MAX = 8
HOST_BYTES = 256 << 20
CHUNK_BYTES = 1 << 20  # data per message: well under the sidecar's 4 MiB gRPC limit

# Wire dtypes (noisescope.v1.DType) by the names watch(dtype=...) takes.
WIRE_DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "fp32": (torch.float32, 1),
    "fp16": (torch.float16, 2),
    "bf16": (torch.bfloat16, 3),
}


class DenseCapture:
    """Training-thread side: per measured step, micro-batch j's gradient into flat buffer j."""

    def __init__(
        self,
        params: Sequence[torch.nn.Parameter],
        layers: Sequence[LayerInfo],
        *,
        dtype: str,
        count_dropped: Callable[[int], None],
    ) -> None:
        self._dtype, self._wire_dtype = WIRE_DTYPES[dtype]
        self._numels = [layer.numel for layer in layers]
        self._offsets = [0] * len(layers)
        total = 0
        for i, numel in enumerate(self._numels):
            self._offsets[i] = total
            total += numel
        self._total = total
        self._pinned = any(p.is_cuda for p in params) and torch.cuda.is_available()
        self._count_dropped = count_dropped
        self._lock = threading.Lock()
        self._free: list[torch.Tensor] = []  # flat host buffers no step holds
        self._held = 0  # steps holding buffers (capturing, queued or being sent)
        self._step: _Capture | None = None
        self._dropping = False  # this measured step found no buffers free
        self._measuring = False
        self.steps_held_limit = self._limit(4)  # until a step's micro-batch count is known

    def _limit(self, micro_batches: int) -> int:
        step_bytes = max(1, micro_batches * self._total * torch.empty((), dtype=self._dtype).element_size())
        return max(STEPS_HELD_MIN, min(STEPS_HELD_MAX, HOST_BYTES // step_bytes))

    def begin_step(self, measuring: bool) -> None:
        """A step begins; its buffers are taken at its first gradient (if free then, else it is dropped)."""
        if self._step is not None:
            self._give_back(self._step.buffers)  # a step closed without a gradient
            self._step = None
        self._dropping = False
        self._measuring = measuring

    def _begin_capture(self) -> _Capture | None:
        if not self._measuring or self._dropping:
            return None
        with self._lock:
            if self._held >= self.steps_held_limit:
                self._dropping = True
                return None
            self._held += 1
        self._step = _Capture()
        return self._step

    def restart(self) -> None:
        """`.grad` was reset without an optimizer step: the captured micro-batches are discarded."""
        capture = self._step
        if capture is not None:
            capture.written = [bytearray(len(self._numels)) for _ in capture.buffers]

    def take(self, micro: int, index: int, grad: torch.Tensor) -> None:
        """Copies micro-batch `micro`'s gradient of parameter `index` (the meter's gradient hook)."""
        capture = self._step or self._begin_capture()
        if capture is None:
            return
        while len(capture.buffers) <= micro:
            capture.buffers.append(self._new_buffer())
            capture.written.append(bytearray(len(self._numels)))
        start = self._offsets[index]
        target = capture.buffers[micro][start : start + self._numels[index]].view(grad.shape)
        if capture.written[micro][index]:
            # A second gradient in one micro-batch (a nested backward): their sum is its contribution.
            target.add_(grad.detach().to("cpu", dtype=self._dtype))
        else:
            target.copy_(grad.detach(), non_blocking=self._pinned)
            capture.written[micro][index] = 1
        if grad.is_cuda:
            capture.devices.add(grad.device)

    def close(self, micro_batches: int, skipped: bool) -> DenseStep | None | bool:
        """At step end: the step's shards to send; None when sent without them (skipped); False: dropped."""
        capture, self._step = self._step, None
        if capture is None:
            if self._dropping:
                self._dropping = False
                self._count_dropped(1)
                return False
            return None
        self.steps_held_limit = self._limit(micro_batches)
        if skipped:
            self._give_back(capture.buffers)
            return None
        while len(capture.buffers) < micro_batches:
            capture.buffers.append(self._new_buffer())
            capture.written.append(bytearray(len(self._numels)))
        for buffer, written in zip(capture.buffers, capture.written):
            for i, done in enumerate(written):
                if not done:  # no gradient reached this parameter in this micro-batch: it contributed zero
                    buffer[self._offsets[i] : self._offsets[i] + self._numels[i]].zero_()
        ready = []  # one event per device copied from, after its copies on its current stream
        for device in capture.devices:
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(device))
            ready.append(event)
        return DenseStep(self, capture.buffers[:micro_batches], capture.buffers[micro_batches:], ready)

    def _new_buffer(self) -> torch.Tensor:
        with self._lock:
            if self._free:
                return self._free.pop()
        return torch.empty(self._total, dtype=self._dtype, pin_memory=self._pinned)

    def _give_back(self, buffers: list[torch.Tensor]) -> None:
        with self._lock:
            self._free.extend(buffers)
            self._held -= 1


class _Capture:
    __slots__ = ("buffers", "written", "devices")

    def __init__(self) -> None:
        self.buffers: list[torch.Tensor] = []  # [micro-batch]: flat, in Hello.layers order
        self.written: list[bytearray] = []  # [micro-batch][layer]: a gradient was copied in
        self.devices: set[torch.device] = set()  # CUDA devices copied from (non-blocking)


class DenseStep:
    """One step's K flat buffers on their way to the wire; gives them back to the pool once, when done."""

    def __init__(
        self, capture: DenseCapture, buffers: list[torch.Tensor], spare: list[torch.Tensor], ready: list[Any]
    ) -> None:
        self._capture = capture
        self._buffers = buffers
        self._spare = spare
        self._ready = ready
        self._released = False
        self._release_lock = threading.Lock()
        self.step = 0
        self.examples: Sequence[int] = ()

    @property
    def micro_batches(self) -> int:
        return len(self._buffers)

    def frames(self) -> Iterator[bytes]:
        """Serialised RankMessages: for each layer and chunk offset, every micro-batch's chunk (so the
        sidecar can reduce each block as soon as it has all K), framed around the buffer's bytes."""
        try:
            for event in self._ready:
                event.synchronize()  # the copy-out; blocks this thread only
            capture = self._capture
            size = self._buffers[0].element_size()
            chunk = max(1, CHUNK_BYTES // size)
            views = [memoryview(b.view(torch.uint8).numpy()) for b in self._buffers]
            k = len(self._buffers)
            for layer, (start, numel) in enumerate(zip(capture._offsets, capture._numels)):
                for offset in range(0, numel, chunk):
                    n = min(chunk, numel - offset)
                    first, last = (start + offset) * size, (start + offset + n) * size
                    for j, view in enumerate(views):
                        yield dense_frame(
                            self.step, j, self.examples[j], layer, k, offset, capture._wire_dtype, view[first:last]
                        )
        finally:
            self.release()

    def release(self) -> None:
        with self._release_lock:
            if self._released:
                return
            self._released = True
        self._capture._give_back(self._buffers + self._spare)

    def __del__(self) -> None:  # a step lost on the way (a stream that ended) still frees its slot
        try:
            self.release()
        except Exception:
            pass


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def dense_frame(
    step: int, micro_batch: int, examples: int, layer: int, micro_batches: int, offset: int, dtype: int, data: memoryview
) -> bytes:
    """RankMessage{shard: GradientShard{step, micro_batch, examples, layer, micro_batches, dense: DenseChunk}}
    in protobuf wire format, written around `data` (one copy of it)."""
    chunk_head = b"\x08" + _varint(offset) + b"\x10" + _varint(dtype) + b"\x1a" + _varint(len(data))
    chunk_len = len(chunk_head) + len(data)
    shard_head = (
        b"\x08" + _varint(step) + b"\x10" + _varint(micro_batch) + b"\x18" + _varint(examples)
        + b"\x20" + _varint(layer) + b"\x30" + _varint(micro_batches) + b"\x5a" + _varint(chunk_len)
    )
    shard_len = len(shard_head) + chunk_len
    return b"".join((b"\x12", _varint(shard_len), shard_head, chunk_head, data))


def serialize_request(message: Any) -> bytes:
    """The Attach request serializer: pre-framed dense chunks as they are, RankMessages serialised."""
    return message if isinstance(message, bytes) else message.SerializeToString()
