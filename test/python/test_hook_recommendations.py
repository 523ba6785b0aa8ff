"""Recommendations from the sidecar reach the handle and its callbacks.

The real sidecar does not send Recommendation messages yet (a later issue), so these tests
use a small recording Attach server built on the proto's own stubs. Move them to the real
sidecar (conftest's `Sidecar`) once it recommends; everything else runs against the real one.
"""
from __future__ import annotations

import threading
import time
from concurrent import futures
from typing import Iterator

import grpc
import pytest

import noisescope
from noisescope.v1 import noisescope_pb2 as pb
from noisescope.v1 import noisescope_pb2_grpc as pb_grpc
from test_hook_support import Loop, make_model, make_optimizer, wait_connected


class RecommendingServer(pb_grpc.NoiseScopeServicer):
    """Welcomes a Hello and answers each StepEnd with a Recommendation for that step."""

    def __init__(self) -> None:
        self.step_ends = 0
        self._lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        pb_grpc.add_NoiseScopeServicer_to_server(self, self.server)
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()

    def Attach(self, request_iterator: Iterator[pb.RankMessage], context: grpc.ServicerContext):
        for message in request_iterator:
            kind = message.WhichOneof("kind")
            if kind == "hello":
                yield pb.SidecarMessage(
                    welcome=pb.Welcome(protocol_version=1, sidecar_version="test", run=message.hello.run, rank=0)
                )
            elif kind == "step_end":
                with self._lock:
                    self.step_ends += 1
                yield pb.SidecarMessage(
                    recommendation=pb.Recommendation(
                        run="r",
                        step=message.step_end.step,
                        current_global_batch=16,
                        recommended_global_batch=64,
                        micro_batch=4,
                        accumulation_steps=16,
                        confidence=0.7,
                        reason="knee",
                    )
                )

    def stop(self) -> None:
        self.server.stop(grace=None).wait()


@pytest.fixture
def recommending_server() -> Iterator[RecommendingServer]:
    server = RecommendingServer()
    yield server
    server.stop()


def test_each_recommendation_reaches_the_callbacks_and_the_handle(recommending_server: RecommendingServer) -> None:
    model = make_model()
    optimizer = make_optimizer(model)
    ns = noisescope.watch(model, optimizer, address=recommending_server.address)
    seen: list[noisescope.Recommendation] = []
    ns.on_recommendation(seen.append)
    wait_connected(ns)
    Loop(steps=7, sizes=(4, 4)).run(model, optimizer)
    deadline = time.monotonic() + 10
    while len(seen) < 7 and time.monotonic() < deadline:
        time.sleep(0.01)
    ns.remove()
    assert [r.step for r in seen] == list(range(7))
    assert ns.recommendation == seen[-1]
    assert (seen[-1].recommended_global_batch, seen[-1].accumulation_steps, seen[-1].reason) == (64, 16, "knee")
    assert seen[-1].confidence == pytest.approx(0.7)
