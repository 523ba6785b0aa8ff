"""noisescope: live gradient-noise-scale measurements from PyTorch training.

    import noisescope
    ns = noisescope.watch(model, optimizer)   # the whole integration
    ...                                       # train as usual
    ns.remove()                               # or: with noisescope.watch(...) as ns:

The hook measures per-micro-batch gradient norms and streams them to the noisescope
sidecar (`noisescope serve`), which estimates the gradient noise scale and recommends a
batch size. Importing this package does not import torch or grpc.
"""
from ._types import Recommendation, WatchStats
from ._version import __version__
from ._watch import Watch, watch

__all__ = ["Recommendation", "Watch", "WatchStats", "__version__", "watch"]
