"""Hugging Face Transformers: one callback, real Trainer training of a tiny GPT-2 built from a config (no
downloads) on random tokens, against the real sidecar."""
from __future__ import annotations

import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from conftest import Sidecar
from noisescope.integrations.transformers import NoiseScopeCallback
from test_hook_support import wait_for_events

EXAMPLES, MICRO_BATCH, ACCUMULATION, STEPS = 64, 8, 2, 4
CLIP = 1e-3  # the Trainer clips at this norm; the hook must have measured before


class RandomTokens(torch.utils.data.Dataset):
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(5)
        self.tokens = torch.randint(0, 64, (EXAMPLES, 16), generator=g)

    def __len__(self) -> int:
        return EXAMPLES

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.tokens[i], "labels": self.tokens[i]}


def _train(tmp_path, callbacks: list, **options) -> tuple[GPT2LMHeadModel, list[dict]]:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(config)
    resume = options.pop("resume_from_checkpoint", None)
    settings = dict(
        output_dir=str(tmp_path), per_device_train_batch_size=MICRO_BATCH, gradient_accumulation_steps=ACCUMULATION,
        max_steps=STEPS, learning_rate=1e-3, max_grad_norm=CLIP, logging_steps=1, save_strategy="no",
        report_to=[], use_cpu=True, seed=0, disable_tqdm=True, dataloader_num_workers=0,
    )
    args = TrainingArguments(**{**settings, **options})
    trainer = Trainer(model=model, args=args, train_dataset=RandomTokens(), callbacks=callbacks)
    trainer.train(resume_from_checkpoint=resume)
    return model, [entry for entry in trainer.state.log_history if "grad_norm" in entry]


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "torch_compile"])
def test_trainer_steps_are_measured_before_clipping_and_the_sidecar_gets_micro_batch_times_accumulation(
    sidecar: Sidecar, tmp_path, compiled: bool
) -> None:
    callback = NoiseScopeCallback(address=sidecar.address, run="hf")
    records: list = []
    start = callback.on_train_begin

    def tapped(*args, **kwargs) -> None:
        start(*args, **kwargs)
        callback.watch._sender.tap = records.append

    callback.on_train_begin = tapped  # type: ignore[method-assign]
    options = {"torch_compile": True, "torch_compile_backend": "aot_eager"} if compiled else {}
    model, logged = _train(tmp_path, [callback], **options)

    assert callback.watch is None and callback.last_watch is not None  # removed when training ended
    assert [r.step for r in records] == list(range(STEPS))
    for record, log in zip(records, logged):
        assert not record.skipped, record.skip_reason
        assert record.micro_examples == (MICRO_BATCH,) * ACCUMULATION
        # The Trainer's logged grad_norm is clip_grad_norm_'s total norm before clipping.
        assert math.isclose(math.sqrt(sum(record.accumulated_sq_norms)), log["grad_norm"], rel_tol=1e-5), log
        assert log["grad_norm"] > 100 * CLIP

    ended = sidecar.wait_for(lambda e: e["type"] == "run" and e["run"] == "hf" and e["ended"])
    assert ended["datasetSize"] == EXAMPLES
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    assert [layer["name"] for layer in ended["layers"]] == names  # the tied lm_head counted once
    events = wait_for_events(sidecar, "step", "hf", STEPS)
    assert [e["step"] for e in events] == list(range(STEPS))
    for event in events:
        assert (event["microBatches"], event["globalBatch"], event["ranks"]) == (ACCUMULATION, 16, 1)
        assert event["lr"] > 0


def test_training_resumed_from_a_checkpoint_numbers_its_steps_on_from_the_trainers(sidecar: Sidecar, tmp_path) -> None:
    _train(tmp_path, [], save_strategy="steps", save_steps=STEPS)
    callback = NoiseScopeCallback(address=sidecar.address, run="hf-resumed")
    _train(tmp_path, [callback], max_steps=2 * STEPS, resume_from_checkpoint=True)

    assert callback.last_watch.stats.steps_measured == STEPS
    events = wait_for_events(sidecar, "step", "hf-resumed", STEPS)
    assert [e["step"] for e in events] == list(range(STEPS, 2 * STEPS))  # state.global_step went on from STEPS


def test_trainer_training_with_the_callback_is_bitwise_identical(sidecar: Sidecar, tmp_path) -> None:
    # A real sidecar: with none reachable the hook stops measuring, and nothing would be compared.
    plain, _ = _train(tmp_path, [])
    callback = NoiseScopeCallback(address=sidecar.address)
    watched, _ = _train(tmp_path, [callback])
    assert callback.last_watch.stats.steps_measured == STEPS
    for a, b in zip(plain.parameters(), watched.parameters()):
        assert torch.equal(a, b)


def test_a_bad_keyword_is_refused_by_name() -> None:
    with pytest.raises(TypeError, match="unknown keyword 'scaler'"):
        NoiseScopeCallback(scaler=None)
