"""What the hook puts on the wire, read by a small Python Attach server (the proto's own stubs)."""
from __future__ import annotations

import logging
import math
import threading
import time
from concurrent import futures
from typing import Callable, Iterator

import grpc
import pytest
import torch

import noisescope
from noisescope.v1 import noisescope_pb2 as pb
from noisescope.v1 import noisescope_pb2_grpc as pb_grpc
from test_hook_support import Loop, make_model, make_optimizer


class AttachServer(pb_grpc.NoiseScopeServicer):
    """Records every RankMessage; answers Hello with Welcome and anything else via `reply`."""

    def __init__(self, port: int = 0, reply: Callable[[pb.RankMessage], list[pb.SidecarMessage]] | None = None):
        self.messages: list[pb.RankMessage] = []
        self.reply = reply or (lambda message: [])
        self._changed = threading.Condition()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        pb_grpc.add_NoiseScopeServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        self.address = f"127.0.0.1:{self.port}"
        self.server.start()

    def Attach(self, request_iterator: Iterator[pb.RankMessage], context: grpc.ServicerContext):
        for message in request_iterator:
            with self._changed:
                self.messages.append(message)
                self._changed.notify_all()
            if message.WhichOneof("kind") == "hello":
                yield pb.SidecarMessage(
                    welcome=pb.Welcome(protocol_version=1, sidecar_version="test", run=message.hello.run, rank=0)
                )
            yield from self.reply(message)

    def kinds(self) -> list[str]:
        with self._changed:
            return [m.WhichOneof("kind") for m in self.messages]

    def wait_for(self, predicate: Callable[[list[pb.RankMessage]], bool], timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self.messages):
                left = deadline - time.monotonic()
                assert left > 0, f"timed out; received {[m.WhichOneof('kind') for m in self.messages]}"
                self._changed.wait(left)

    def stop(self) -> None:
        self.server.stop(grace=None).wait()


@pytest.fixture
def attach_server() -> Iterator[AttachServer]:
    server = AttachServer()
    yield server
    server.stop()


def connected(ns: noisescope.Watch, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not ns.stats.connected:
        assert time.monotonic() < deadline, "never welcomed"
        time.sleep(0.01)


def test_hello_then_shards_and_step_end_per_step_then_goodbye(attach_server: AttachServer) -> None:
    model = make_model()
    optimizer = make_optimizer(model)
    ns = noisescope.watch(model, optimizer, address=attach_server.address, run="wire", every=2, dataset_size=1797)
    connected(ns)
    Loop(steps=3, sizes=(3, 5, 3, 5)).run(model, optimizer)
    ns.remove()
    kinds = attach_server.kinds()
    assert kinds == ["hello"] + (["shard"] * 4 + ["step_end"]) * 2 + ["goodbye"]
    assert ns.stats.messages_sent == len(kinds)

    hello = attach_server.messages[0].hello
    assert hello.protocol_version == pb.PROTOCOL_VERSION_CURRENT
    assert (hello.run, hello.rank, hello.world_size, hello.every, hello.dataset_size) == ("wire", 0, 1, 2, 1797)
    assert (hello.mode, hello.source) == (pb.MODE_NORMS, pb.SOURCE_UNSPECIFIED)
    assert hello.framework == f"torch {torch.__version__}" and hello.hook_version == noisescope.__version__
    names = [name for name, _ in model.named_parameters()]
    assert [layer.name for layer in hello.layers] == names
    assert [layer.numel for layer in hello.layers] == [p.numel() for p in model.parameters()]
    assert [layer.kind for layer in hello.layers] == ["Linear", "Linear", "Linear", "Linear", "LayerNorm", "LayerNorm", "Linear", "Linear"]

    shards = [m.shard for m in attach_server.messages if m.WhichOneof("kind") == "shard"]
    ends = [m.step_end for m in attach_server.messages if m.WhichOneof("kind") == "step_end"]
    assert [s.step for s in shards] == [0] * 4 + [2] * 4
    assert [s.micro_batch for s in shards] == [0, 1, 2, 3] * 2
    assert [s.examples for s in shards] == [3, 5, 3, 5] * 2
    assert all(len(s.sq_norms.values) == len(names) and min(s.sq_norms.values) > 0 for s in shards)
    assert [e.step for e in ends] == [0, 2]
    for end in ends:
        assert (end.micro_batches, end.local_examples, end.global_examples) == (4, 16, 16)
        assert len(end.accumulated_sq_norms) == len(names) and not end.skipped
        assert end.lr == pytest.approx(0.05) and math.isnan(end.loss)
        assert abs(end.unix_ms - time.time() * 1000) < 60_000
    goodbye = attach_server.messages[-1].goodbye
    assert goodbye.dropped == 0


def test_refusals_are_logged_with_their_code_and_recommendations_reach_the_handle(
    attach_server: AttachServer, caplog
) -> None:
    def reply(message: pb.RankMessage) -> list[pb.SidecarMessage]:
        if message.WhichOneof("kind") != "step_end":
            return []
        step = message.step_end.step
        return [
            pb.SidecarMessage(refusal=pb.Refusal(code=3, message=f"step {step}: something is off", step=step)),
            pb.SidecarMessage(
                recommendation=pb.Recommendation(
                    run="r", step=step, current_global_batch=16, recommended_global_batch=64, micro_batch=4,
                    accumulation_steps=16, confidence=0.7, reason="knee",
                )
            ),
        ]

    attach_server.reply = reply
    model = make_model()
    optimizer = make_optimizer(model)
    caplog.set_level(logging.WARNING, logger="noisescope")
    ns = noisescope.watch(model, optimizer, address=attach_server.address)
    seen: list[noisescope.Recommendation] = []
    ns.on_recommendation(seen.append)
    connected(ns)
    Loop(steps=7, sizes=(4, 4)).run(model, optimizer)
    deadline = time.monotonic() + 10
    while len(seen) < 7 and time.monotonic() < deadline:
        time.sleep(0.01)
    ns.remove()
    assert [r.step for r in seen] == list(range(7))
    assert ns.recommendation == seen[-1] and seen[-1].recommended_global_batch == 64
    assert ns.stats.refusals == 7
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 5  # the first few, then only counted
    assert "gRPC status 3" in refusals[0] and "step 0: something is off" in refusals[0]


def test_reconnects_after_the_sidecar_restarts_with_one_warning(caplog) -> None:
    first = AttachServer()
    model = make_model()
    optimizer = make_optimizer(model)
    caplog.set_level(logging.WARNING, logger="noisescope")
    ns = noisescope.watch(model, optimizer, address=first.address)
    connected(ns)
    Loop(steps=1).run(model, optimizer)
    first.wait_for(lambda ms: any(m.WhichOneof("kind") == "step_end" for m in ms))
    first.stop()
    deadline = time.monotonic() + 5
    while ns.stats.connected and time.monotonic() < deadline:
        time.sleep(0.01)
    Loop(steps=2).run(model, optimizer)  # no sidecar: dropped
    second = AttachServer(port=first.port)
    try:
        connected(ns)
        Loop(steps=1).run(model, optimizer)
        second.wait_for(lambda ms: any(m.WhichOneof("kind") == "step_end" for m in ms))
        ns.remove()
        hello = second.messages[0].hello
        assert hello.dropped == 2
        assert [m.step_end.step for m in second.messages if m.WhichOneof("kind") == "step_end"] == [3]
        assert second.kinds()[-1] == "goodbye" and second.messages[-1].goodbye.dropped == 2
    finally:
        second.stop()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "lost the sidecar" in warnings[0]


def test_a_sidecar_that_ends_the_stream_with_an_error_is_reported_once(caplog) -> None:
    class Refusing(AttachServer):
        def Attach(self, request_iterator, context):  # type: ignore[override]
            next(request_iterator)
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "hook speaks protocol version 1, this sidecar speaks 2")

    server = Refusing()
    caplog.set_level(logging.WARNING, logger="noisescope")
    model = make_model()
    ns = noisescope.watch(model, make_optimizer(model), address=server.address)
    try:
        deadline = time.monotonic() + 5
        while "FAILED_PRECONDITION" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.7)  # one retry later: still one warning
        ns.remove()
    finally:
        server.stop()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "protocol version" in warnings[0]


def test_forked_data_loader_workers_do_not_disturb_the_stream(attach_server: AttachServer) -> None:
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    data = TensorDataset(torch.randn(96, 12), torch.randint(0, 5, (96,)))
    loader = DataLoader(data, batch_size=8, num_workers=2, multiprocessing_context="fork")
    model = make_model()
    optimizer = make_optimizer(model)
    ns = noisescope.watch(model, optimizer, address=attach_server.address)
    connected(ns)
    for epoch in range(2):
        for j, (x, y) in enumerate(loader):  # workers fork while the stream is open
            torch.nn.functional.cross_entropy(model(x), y).div(4).backward()
            if j % 4 == 3:
                optimizer.step()
                optimizer.zero_grad()
    ns.remove()
    ends = [m.step_end.step for m in attach_server.messages if m.WhichOneof("kind") == "step_end"]
    assert ends == list(range(6))
    assert attach_server.kinds()[-1] == "goodbye" and ns.stats.dropped == 0


def test_interpreter_exit_without_remove_flushes_and_returns_promptly(attach_server: AttachServer, tmp_path) -> None:
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "train.py"
    script.write_text(
        "import sys, torch, noisescope\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_hook_support import Loop, make_model, make_optimizer\n"
        "model = make_model(); optimizer = make_optimizer(model)\n"
        f"ns = noisescope.watch(model, optimizer, address={attach_server.address!r}, run='exit')\n"
        "Loop(steps=3).run(model, optimizer)\n"  # and exit without ns.remove()
    )
    started = time.monotonic()
    subprocess.run([sys.executable, str(script)], check=True, timeout=60)
    assert time.monotonic() - started < 30
    attach_server.wait_for(lambda ms: any(m.WhichOneof("kind") == "goodbye" for m in ms), timeout=5)
    assert attach_server.kinds().count("step_end") == 3
