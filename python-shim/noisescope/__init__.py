"""noisescope: live gradient-noise-scale measurements from PyTorch training.

    import noisescope
    ns = noisescope.watch(model, optimizer)   # the whole integration
    ...                                       # train as usual
    ns.remove()                               # or: with noisescope.watch(...) as ns:

The hook measures per-micro-batch gradient norms and streams them to the noisescope
sidecar (`noisescope serve`), which estimates the gradient noise scale and recommends a
batch size: `ns.recommendation`, `ns.on_recommendation(callback)`, and, opt-in,
`ns.adaptive_accumulation(...)` to follow it by changing the gradient-accumulation count.
Importing this package does not import torch or grpc.
"""
from ._adaptive import AccumulationChange, AdaptiveAccumulation
from ._policy import BatchPolicy
from ._types import LearningRateHint, Recommendation, WatchStats
from ._version import __version__
from ._watch import Watch, watch

__all__ = [
    "AccumulationChange",
    "AdaptiveAccumulation",
    "BatchPolicy",
    "LearningRateHint",
    "Recommendation",
    "Watch",
    "WatchStats",
    "__version__",
    "watch",
]
