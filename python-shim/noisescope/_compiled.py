"""torch.compile'd models: measured through their original module and parameters.

Gradient hooks on parameters run in eager autograd whatever was compiled, so norms, dense and
sketch modes work unchanged. Module hooks are different: inside compiled code they are traced
(a lock or any Python side effect breaks the graph, and `fullgraph=True` turns that into an error
in the training loop). So our module hooks do nothing while Dynamo traces (see _meter._ModuleHook),
the examples-per-micro-batch hook runs outside the compiled code (on the `torch.compile(model)`
wrapper, or around a `module.compile()`d call), and per-example norms, whose hooks sit on inner
modules, are off for compiled models.
"""
from __future__ import annotations

from typing import Any, Callable


def compiled_form(model: Any) -> str:
    """'wrapper' (torch.compile(model)), 'in place' (model.compile()), or '' (not compiled)."""
    if hasattr(model, "_orig_mod") and type(model).__name__ == "OptimizedModule":
        return "wrapper"
    if getattr(model, "_compiled_call_impl", None) is not None:
        return "in place"
    return ""


def original_module(model: Any) -> Any:
    """The module a torch.compile(model) wrapper compiles (its parameters, with their own names)."""
    return model._orig_mod if compiled_form(model) == "wrapper" else model


class _Restore:
    """A RemovableHandle-like handle for the wrapped compiled call; remove() is idempotent."""

    def __init__(self, module: Any, wrapper: Callable[..., Any], compiled: Callable[..., Any]) -> None:
        self._module, self._wrapper, self._compiled = module, wrapper, compiled

    def remove(self) -> None:
        if self._module is not None and getattr(self._module, "_compiled_call_impl", None) is self._wrapper:
            self._module._compiled_call_impl = self._compiled
        self._module = None


def register_forward_pre_hook(module: Any, hook: Callable[..., None]) -> Any:
    """module.register_forward_pre_hook(hook, with_kwargs=True), but eager for a module.compile()d module:
    there the hook runs just before the compiled call instead of inside it."""
    compiled = getattr(module, "_compiled_call_impl", None)
    if compiled is None:
        return module.register_forward_pre_hook(hook, with_kwargs=True)

    def call(*args: Any, **kwargs: Any) -> Any:
        hook(module, args, kwargs)
        return compiled(*args, **kwargs)

    module._compiled_call_impl = call
    return _Restore(module, call, compiled)
