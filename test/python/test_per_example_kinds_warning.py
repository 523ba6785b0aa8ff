"""The warning for a model the per-example source cannot cover lists what it does cover, from its own table."""
from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

import noisescope
from noisescope import _per_example


def test_the_warning_for_an_uncoverable_model_names_every_covered_module_type(
    free_address: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="noisescope")
    model = nn.Bilinear(3, 4, 2)  # no per-example rule
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ns = noisescope.watch(model, optimizer, address=free_address, run="bilinear", source="per-example")
    ns.remove(timeout=0)
    warning = next(r.getMessage() for r in caplog.records if "covers none" in r.getMessage())
    kinds = warning.split("it knows ", 1)[1].split(";", 1)[0].split(", ")
    expected = [k.__name__ for k in (*_per_example._COVERED, *_per_example._FUNCTIONAL_PARENTS)]
    assert kinds == expected
    # The layers added since the list was first written are there, and the model's own layer is named as not covered.
    assert {"Conv3d", "ConvTranspose2d", "GroupNorm", "MultiheadAttention"} <= set(kinds)
    assert "weight" in warning.split("not covered: ", 1)[1]
