"""BatchPolicy: checked when it is made, refused by watch() before anything is attached, carried by Hello;
and the Recommendation message mapped field by field."""
from __future__ import annotations

import math

import pytest

import noisescope
from noisescope import _wire
from noisescope.v1 import noisescope_pb2 as pb
from test_hook_support import make_model, make_optimizer


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(objective="fast"), "objective must be one of 'balanced', 'time', 'compute'"),
        (dict(min_batch=0), "min_batch must be an int from 1"),
        (dict(min_batch=2.5), "min_batch must be an int from 1"),
        (dict(max_batch=-4), "max_batch must be an int from 1"),
        (dict(max_batch=True), "max_batch must be an int from 1"),
        (dict(max_batch=2**60), "max_batch must be an int from 1 to 9007199254740991"),
        (dict(min_batch=64, max_batch=32), "max_batch 32 is below min_batch 64: bounds cannot be satisfied"),
        (dict(max_micro_batch=0), "max_micro_batch must be an int from 1"),
        (dict(max_factor=1), "max_factor must be a finite number above 1"),
        (dict(max_factor=math.inf), "max_factor must be a finite number above 1"),
        (dict(max_factor="2"), "max_factor must be a finite number above 1"),
        (dict(window=0), "window must be an int from 1"),
        (dict(monotone=1), "monotone must be True or False"),
    ],
)
def test_a_bad_field_is_refused_naming_it(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        noisescope.BatchPolicy(**fields)


def test_a_policy_is_frozen_and_every_field_may_be_left_to_the_sidecar() -> None:
    policy = noisescope.BatchPolicy(objective="time", min_batch=32, max_batch=32, max_factor=1.5, window=1)
    with pytest.raises(AttributeError):
        policy.window = 3  # type: ignore[misc]
    assert noisescope.BatchPolicy() == noisescope.BatchPolicy(None, None, None, None, None, None, False)


def test_watch_refuses_a_policy_of_another_type_before_attaching_anything(free_address: str) -> None:
    model = make_model()
    optimizer = make_optimizer(model)
    with pytest.raises(TypeError, match="policy must be a noisescope.BatchPolicy"):
        noisescope.watch(model, optimizer, address=free_address, policy={"max_batch": 64})  # type: ignore[arg-type]
    assert not any(p._backward_hooks for p in model.parameters())
    assert not optimizer._optimizer_step_pre_hooks
    noisescope.watch(model, optimizer, address=free_address).remove()  # and the model is not taken


def info(**fields) -> _wire.RankInfo:
    return _wire.RankInfo(
        run="r", rank=0, world_size=1, layers=(), dataset_size=0, every=1, framework="torch", session="s", **fields
    )


def test_hello_carries_the_optimizer_and_the_policy_with_unset_fields_as_zero() -> None:
    policy = noisescope.BatchPolicy(objective="compute", max_batch=512, max_factor=1.5, window=4, monotone=True)
    hello = _wire.hello(info(optimizer="AdamW", policy=policy), dropped=0).hello
    assert hello.optimizer == "AdamW"
    assert (hello.policy.objective, hello.policy.min_batch, hello.policy.max_batch, hello.policy.max_micro_batch) == (
        pb.OBJECTIVE_COMPUTE, 0, 512, 0
    )
    assert (hello.policy.max_factor, hello.policy.window, hello.policy.monotone) == (1.5, 4, True)
    unset = _wire.hello(info(), dropped=0).hello
    assert not unset.HasField("policy") and unset.policy == pb.BatchPolicy()


def test_a_recommendation_message_maps_to_every_field() -> None:
    message = pb.Recommendation(
        run="r", step=40, current_global_batch=32, recommended_global_batch=64, micro_batch=16,
        accumulation_steps=4, confidence=0.9, reason="B_noise ≈ 70 is above the batch.", action=pb.ACTION_INCREASE,
        sequence=3, noise_scale=70.5, noise_scale_interval=pb.Interval(low=50, high=math.inf), target_batch=70.5,
        objective=pb.OBJECTIVE_BALANCED, steps_factor=0.66, examples_factor=1.33,
        lr_hint=pb.LearningRateHint(current_lr=0.05, suggested_lr=0.1, rule="linear", note="a heuristic"),
        world_size=1, unix_ms=1.5e12,
    )
    r = _wire.recommendation(message)
    assert r == noisescope.Recommendation(
        run="r", step=40, current_global_batch=32, recommended_global_batch=64, micro_batch=16,
        accumulation_steps=4, confidence=pytest.approx(0.9), reason="B_noise ≈ 70 is above the batch.",
        action="increase", sequence=3, noise_scale=70.5, interval=(50.0, math.inf), target_batch=70.5,
        objective="balanced", steps_factor=pytest.approx(0.66), examples_factor=pytest.approx(1.33),
        lr_hint=noisescope.LearningRateHint(0.05, 0.1, "linear", "a heuristic"), world_size=1, unix_ms=1.5e12,
    )
    hold = _wire.recommendation(pb.Recommendation(run="r", action=pb.ACTION_HOLD))
    assert (hold.action, hold.lr_hint) == ("hold", None)
    assert _wire.recommendation(pb.Recommendation(action=pb.ACTION_DECREASE)).action == "decrease"
    assert _wire.recommendation(pb.Recommendation()).action == "hold"  # unspecified: nothing to act on
