"""Planned inference: a model's eval-mode pass bound once per thread and batch size.

``predict`` on one row used to re-fold every BatchNorm into its Dense and call NumPy a
dozen times; the arithmetic was a small part of its time. Here, as for training
(:mod:`fastnn._plan`), each layer binds its eval-mode pass once
(:meth:`fastnn.layers.Layer.plan_infer`): the Dense product with its bias, the BatchNorm
from the live running statistics with the next activation fused, the final softmax in
place. A prediction is then a copy of the rows into the plan's input buffer (none when a
first Dense large enough for BLAS can read the caller's array in place), one call that
runs every op, and a copy of the output.

The ops read the model's live parameter and state views on every run, so a plan never
goes stale: ``fit``, ``set_weights`` and in-place edits of the weights are seen by the
next prediction. A plan belongs to one thread (its buffers are written by every run),
so concurrent predictions from many threads never share a buffer; each thread keeps
plans for its last few batch sizes. Anything a layer cannot plan (a user's layer, the
NumPy backend) predicts through the layers' ``infer`` instead.
"""

from __future__ import annotations

import threading

import numpy as np

from . import _threads, ops

_PLANS_PER_THREAD = 8  # batch sizes whose plans a thread keeps (least recently used go)


class InferencePlan:
    """The eval-mode pass of ``model`` on ``n`` rows (``logits``: without a fused final
    Softmax), bound to buffers of its own: ``run(rows)`` returns the output buffer."""

    __slots__ = ("x", "out", "program", "macs", "params", "checks", "first", "input")

    def __init__(self, model, n: int, logits: bool) -> None:
        self.params = model._params  # the buffers it is bound to (a rebuild replaces them)
        self.x = np.empty((n, model.input_dim), model.dtype)
        steps = layer_steps(model, self.x, logits)
        if isinstance(steps, str):
            raise ValueError(f"this model cannot plan its inference: {steps}")
        self.out = steps[-1].output if steps else self.x
        # The inputs and the outputs checked finite inside the same call. A NaN or inf
        # input makes every product it enters NaN or inf (inf * 0 is NaN), so when the
        # first layer is a Dense its (narrower) output is checked instead of the input.
        forward = [op for step in steps for op in step.forward]
        first = model.layers[0].units is not None and steps and len(steps[0].forward) == 1
        self.checks = (ops.plan_finite(steps[0].output if first else self.x),
                       ops.plan_finite(self.out))
        if first:
            forward.insert(1, self.checks[0])
        else:
            forward.insert(0, self.checks[0])
        # a packed product checks and normalises its output as it stores it
        self.program = ops.program(ops.fuse_epilogues([*forward, self.checks[1]]))
        # A first Dense large enough for BLAS reads a caller's array of the model's dtype
        # in place: no copy of the rows into self.x (at 1024 rows of 784 floats, 3.2 MB)
        self.first = (forward[0] if first and ops.rebind_matmul_input(forward[0], self.x,
                                                                      self.x) else None)
        self.input = self.x  # the rows a failed run read (for the caller's message)
        macs = n * _threads.macs_per_row(model.layers)
        # fastnn's own C loop computes the small products (no BLAS threads involved);
        # the thread count of the others is decided per run (the setting may change)
        self.macs = 0 if macs <= ops.SMALL_GEMM_MAX else macs

    def run(self, rows: np.ndarray) -> np.ndarray:
        """The outputs for ``rows`` (in the plan's own buffer, overwritten by the next
        run); None if an input or an output is not finite (the caller says which)."""
        first = self.first
        if first is not None and ops.rebind_matmul_input(first, rows, self.x):
            self.input = rows
        else:
            first = None
            self.input = self.x
            np.copyto(self.x, rows, casting="same_kind")  # the chunk's one cast
        try:
            if self.macs:  # NumPy's matmul (BLAS) may run: it would warn of an overflow
                # that the finite check below reports as an error
                with _threads.limited(_threads.threads_for(self.macs)), \
                        np.errstate(over="ignore", invalid="ignore"):
                    self.program.run(0)
            else:
                self.program.run(0)
        finally:
            if first is not None:
                ops.rebind_matmul_input(first, self.x, self.x)
        if self.checks[1].finite and self.checks[0].finite:
            self.input = self.x  # no reference to the caller's array outlives the call
            return self.out
        return None  # self.input: the rows read, for the caller's message


def layer_steps(model, x, logits: bool) -> list | str:
    """Each layer's eval-mode PlannedStep on buffer ``x``, or why one cannot plan."""
    layers = model._train_layers if logits else model.layers
    steps = []
    writable = True  # the input buffer is the plan's own
    i = 0
    while i < len(layers):
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        step = layers[i].plan_infer(x, writable, nxt)
        if isinstance(step, str):
            return step
        steps.append(step)
        x, writable = step.output, step.writable
        i += 2 if step.fused_next else 1
    return steps


class Plans(threading.local):
    """Per-thread plans of one model, by (batch size, logits)."""

    def __init__(self) -> None:
        self.by_key: dict[tuple, InferencePlan] = {}
        self.unsupported: dict[bool, str | None] = {}

    def get(self, model, n: int, logits: bool) -> InferencePlan | None:
        """The plan for ``n`` rows, built on first use; None if the model cannot plan."""
        if not ops.can_plan():  # the backend can change between calls
            return None
        key = (n, logits)
        plan = self.by_key.get(key)
        if plan is not None and plan.params is model._params:
            return plan
        why = self.unsupported.get(logits, False)
        if why is False:
            why = self.unsupported[logits] = unsupported(model, logits)
        if why is not None:
            return None
        if len(self.by_key) >= _PLANS_PER_THREAD:
            del self.by_key[next(iter(self.by_key))]
        plan = self.by_key[key] = InferencePlan(model, n, logits)
        return plan


def unsupported(model, logits: bool) -> str | None:
    """Why ``model`` cannot plan its inference (None if it can): a dry run on one row."""
    if not ops.can_plan():
        return f"the {ops.get_backend()!r} backend predicts per layer"
    built = layer_steps(model, np.zeros((1, model.input_dim), model.dtype), logits)
    return built if isinstance(built, str) else None
