"""A measured step's StepBundle written straight as bytes (`_wire.bundle_bytes`, what the request iterator sends
to a sidecar that takes StepBundles) is byte for byte what the protobuf messages serialise to."""
from __future__ import annotations

import math
import random

from noisescope import _wire
from noisescope._meter import StepRecord
from noisescope.v1 import noisescope_pb2 as pb


def _record(rng: random.Random) -> StepRecord:
    k, layers = rng.choice((1, 1, 2, 4)), rng.choice((1, 3, 7))
    skipped = rng.random() < 0.2

    def norms() -> tuple[float, ...]:
        return tuple(rng.choice((0.0, -0.0, 1e-300, 3.5e38, rng.random() * 10 ** rng.randint(-30, 30))) for _ in range(layers))

    return StepRecord(
        step=rng.choice((0, 1, 127, 128, 300, 2**32 + 5, 2**53 - 1)),
        micro_examples=tuple(rng.choice((0, 1, 64, 200, 70000)) for _ in range(k)) if not skipped or rng.random() < 0.5 else (),
        micro_sq_norms=() if skipped else tuple(norms() for _ in range(k)),
        accumulated_sq_norms=() if skipped else norms(),
        lr=rng.choice((0.0, -0.0, 0.01, math.nan, 1e-9)),
        unix_ms=rng.choice((0.0, 1.7e12 + rng.random())),
        skipped=skipped,
        skip_reason=rng.choice(("", "non-finite gradient norm in layer 'ä.w' (e.g. an AMP overflow)", "x" * 300)) if skipped else "",
        per_example_sums=() if skipped or rng.random() < 0.5 else tuple(norms() for _ in range(k)),
        reduced_sq_norms=() if skipped or rng.random() < 0.5 else norms(),
        reduced_is_shard=rng.random() < 0.5,
    )


def test_bundle_bytes_are_the_protobuf_serialisation_of_the_steps_bundle_and_several_bundles_one_message() -> None:
    rng = random.Random(7)
    for world_size in (1, 4):
        records = [_record(rng) for _ in range(400)]
        bundles = [_wire.one_bundle(_wire.bundled(_wire.step_messages(r, world_size))[0]) for r in records]
        for record, bundle in zip(records, bundles):
            assert bundle is not None
            assert _wire.bundle_bytes(record, world_size) == bundle.SerializeToString(), record
        for start in range(0, 400, 37):
            group = slice(start, start + rng.randint(1, 40))
            expected = _wire.several(bundles[group]).SerializeToString()
            actual = _wire.several_bytes([_wire.bundle_bytes(r, world_size) for r in records[group]])  # type: ignore[misc]
            assert actual == expected
            assert pb.RankMessage.FromString(actual) == _wire.several(bundles[group])


def test_a_dense_step_has_no_bundle_bytes() -> None:
    record = StepRecord(step=1, micro_examples=(2,), micro_sq_norms=((1.0,),), accumulated_sq_norms=(1.0,), lr=0.1,
                        unix_ms=1.0, dense=object())
    assert _wire.bundle_bytes(record, 1) is None
