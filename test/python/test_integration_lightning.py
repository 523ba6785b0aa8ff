"""PyTorch Lightning: one callback, real training on load_digits through L.Trainer, against the real sidecar."""
from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning.pytorch.plugins import MixedPrecision

from conftest import Sidecar
from noisescope.integrations.lightning import NoiseScopeCallback
from test_hook_support import assert_close, wait_for_events

EXAMPLES, MICRO_BATCH, ACCUMULATION = 320, 16, 2
STEPS = EXAMPLES // (MICRO_BATCH * ACCUMULATION)  # optimizer steps in the one epoch
CLIP = 1e-3  # Lightning clips after on_before_optimizer_step; the hook must have measured before


class Digits(pl.LightningModule):
    """An MLP whose training_step calls its layers directly (not self(x)), recording the pre-clip gradient."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))
        self.pre_clip: list[list[float]] = []  # [step][layer]: |.grad|² as Lightning is about to clip it

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.pre_clip.append([p.grad.double().pow(2).sum().item() for p in self.parameters()])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def _loader() -> DataLoader:
    digits = load_digits()
    x = torch.tensor(digits.data[:EXAMPLES] / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target[:EXAMPLES], dtype=torch.long)
    return DataLoader(TensorDataset(x, y), batch_size=MICRO_BATCH, shuffle=True, generator=torch.Generator().manual_seed(3))


def _fit(tmp_path, callbacks: list, plugins: list | None = None, epochs: int = 1, ckpt_path=None, save=None) -> Digits:
    module = Digits()
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=epochs, accumulate_grad_batches=ACCUMULATION, gradient_clip_val=CLIP,
        plugins=plugins, callbacks=callbacks, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )
    trainer.fit(module, _loader(), ckpt_path=ckpt_path)
    if save is not None:
        trainer.save_checkpoint(save)
    return module


def _records(callback: NoiseScopeCallback) -> list:
    """The sender's tap, set as the watch starts (on_train_start), collecting every finished StepRecord."""
    records: list = []
    start = callback.on_train_start

    def tapped(trainer, module) -> None:
        start(trainer, module)
        callback.watch._sender.tap = records.append

    callback.on_train_start = tapped  # type: ignore[method-assign]
    return records


def test_lightning_training_is_measured_before_clipping_and_the_sidecar_gets_micro_batch_times_accumulation(
    sidecar: Sidecar, tmp_path
) -> None:
    callback = NoiseScopeCallback(address=sidecar.address, run="lightning")
    records = _records(callback)
    module = _fit(tmp_path, [callback])

    assert callback.watch is None and callback.last_watch is not None  # removed when fit ended
    assert [r.step for r in records] == list(range(STEPS))
    for record, pre_clip in zip(records, module.pre_clip):
        assert not record.skipped, record.skip_reason
        assert record.micro_examples == (MICRO_BATCH,) * ACCUMULATION
        for i, value in enumerate(record.accumulated_sq_norms):
            assert_close(value, pre_clip[i], 1e-5, f"step {record.step} layer {i}")
        assert sum(record.accumulated_sq_norms) > 100 * CLIP**2  # clipping bit after the measurement

    ended = sidecar.wait_for(lambda e: e["type"] == "run" and e["run"] == "lightning" and e["ended"])
    assert ended["datasetSize"] == EXAMPLES
    assert [layer["name"] for layer in ended["layers"]] == [name for name, _ in module.named_parameters()]
    events = wait_for_events(sidecar, "step", "lightning", STEPS)
    assert [e["step"] for e in events] == list(range(STEPS))
    for event in events:
        assert (event["microBatches"], event["globalBatch"], event["ranks"]) == (ACCUMULATION, EXAMPLES // STEPS, 1)
        assert event["lr"] == pytest.approx(0.1)


def test_a_fit_resumed_from_a_checkpoint_numbers_its_steps_on_from_the_trainers(sidecar: Sidecar, tmp_path) -> None:
    checkpoint = tmp_path / "epoch1.ckpt"
    _fit(tmp_path, [], save=checkpoint)
    callback = NoiseScopeCallback(address=sidecar.address, run="lightning-resumed")
    records = _records(callback)
    _fit(tmp_path, [callback], epochs=2, ckpt_path=checkpoint)

    assert [r.step for r in records] == list(range(STEPS, 2 * STEPS))  # trainer.global_step went on from STEPS
    events = wait_for_events(sidecar, "step", "lightning-resumed", STEPS)
    assert [e["step"] for e in events] == list(range(STEPS, 2 * STEPS))


def test_lightning_training_with_the_callback_is_bitwise_identical(free_address: str, tmp_path) -> None:
    plain = _fit(tmp_path, [])
    callback = NoiseScopeCallback(address=free_address)
    records = _records(callback)
    watched = _fit(tmp_path, [callback])
    assert len(records) == STEPS
    for a, b in zip(plain.parameters(), watched.parameters()):
        assert torch.equal(a, b)


def test_lightning_16_mixed_divides_the_scalers_changing_scale_out(free_address: str, tmp_path) -> None:
    # float16 autocast on the CPU with a GradScaler (the "16-mixed" flag alone falls back to bf16 on a CPU).
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**14, growth_interval=1)
    callback = NoiseScopeCallback(address=free_address)
    records = _records(callback)
    module = _fit(tmp_path, [callback], plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    assert scaler.get_scale() != 2.0**14  # it moved while training
    assert "step" not in vars(scaler)  # nothing of ours left on it
    measured = [r for r in records if not r.skipped]
    assert len(measured) >= STEPS - 2, [r.skip_reason for r in records]
    for record in measured:  # Lightning unscales before on_before_optimizer_step: pre_clip is unscaled
        for i, value in enumerate(record.accumulated_sq_norms):
            assert_close(value, module.pre_clip[record.step][i], 1e-5, f"step {record.step} layer {i}")
    for record in records:
        if record.skipped:
            assert "non-finite" in record.skip_reason
            assert not all(math.isfinite(v) for v in module.pre_clip[record.step])


def test_a_bad_keyword_is_refused_by_name() -> None:
    with pytest.raises(TypeError, match="unknown keyword 'adress'"):
        NoiseScopeCallback(adress="127.0.0.1:1")
    with pytest.raises(TypeError, match="on_recommendation must be callable or None, got int"):
        NoiseScopeCallback(on_recommendation=3)


def _fit_all_digits(tmp_path, callback: NoiseScopeCallback, epochs: int) -> tuple[pl.Trainer, DataLoader]:
    """All 1797 digits, long enough for the sidecar's advice to come."""
    digits = load_digits()
    x, y = torch.tensor(digits.data / 16.0, dtype=torch.float32), torch.tensor(digits.target, dtype=torch.long)
    loader = DataLoader(TensorDataset(x, y), batch_size=MICRO_BATCH, shuffle=True, generator=torch.Generator().manual_seed(3))
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=epochs, accumulate_grad_batches=ACCUMULATION, callbacks=[callback],
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(Digits(), loader)
    return trainer, loader


def test_recommendations_reach_on_recommendation_and_are_not_applied(sidecar: Sidecar, tmp_path) -> None:
    received: list = []
    callback = NoiseScopeCallback(address=sidecar.address, run="lightning-advice", on_recommendation=received.append)
    trainer, loader = _fit_all_digits(tmp_path, callback, epochs=2)

    made = [e for e in sidecar.of_type("recommendation") if e["run"] == "lightning-advice"]
    assert made, "the sidecar made no recommendation in 2 epochs"
    made_ids = [(e["sequence"], e["step"], e["recommendedGlobalBatch"]) for e in made]
    # Advice made just before the stream closed may not have reached the hook: the ones received are a prefix.
    assert [(r.sequence, r.step, r.recommended_global_batch) for r in received] == made_ids[: len(received)]
    assert received and callback.recommendation == received[-1]
    assert trainer.accumulate_grad_batches == ACCUMULATION and loader.batch_size == MICRO_BATCH  # not applied
    # Each epoch: 56 steps of 16 × 2, then Lightning steps on the last batch alone (1797 = 56 · 32 + 5).
    sizes = {(e["microBatches"], e["globalBatch"]) for e in sidecar.of_type("step") if e["run"] == "lightning-advice"}
    assert sizes == {(ACCUMULATION, MICRO_BATCH * ACCUMULATION), (1, len(loader.dataset) % (MICRO_BATCH * ACCUMULATION))}


def test_asked_to_apply_the_advice_changes_accumulation_at_epoch_starts(sidecar: Sidecar, tmp_path) -> None:
    callback = NoiseScopeCallback(address=sidecar.address, run="lightning-apply", apply=True)
    trainer, loader = _fit_all_digits(tmp_path, callback, epochs=3)

    assert callback.changes, "no advice applied in 3 epochs"
    made = {(e["step"], e["recommendedGlobalBatch"]) for e in sidecar.of_type("recommendation") if e["run"] == "lightning-apply"}
    assert all(any(after * MICRO_BATCH == batch for _, batch in made) for _, _, after in callback.changes)
    assert trainer.accumulate_grad_batches == callback.changes[-1][2]
    steps = {e["step"]: e for e in sidecar.of_type("step") if e["run"] == "lightning-apply"}
    for first, before, after in callback.changes:  # the first step of the epoch runs the new count
        assert steps[first]["microBatches"] == after and steps[first - 1]["microBatches"] in (before, 1)
        assert steps[first]["globalBatch"] == after * MICRO_BATCH


def test_apply_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="apply must be a bool, got str"):
        NoiseScopeCallback(apply="yes")
