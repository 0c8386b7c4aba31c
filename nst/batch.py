"""Batched grid mode: many jobs that differ only in scalar loss weights (α, β, TV, per-layer
weights) and/or their initial image, optimized together as ONE compiled program.

The single-job update (:meth:`nst.engine.Program.update_fn`) is vmapped over the optimization state
and the weights; the backbone params and the content/style targets are shared (``in_axes=None``),
so a batch of B images costs one forward/backward over an (B, H, W, 3) batch instead of B
separate programs, and each job's numbers are those of its own sequential run up to float
reassociation.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from nst.engine import (
    RunResult,
    balance_scale,
    balanced,
    build,
    call_boundaries,
    default_steps_per_call,
    drive_calls,
    learning_rate_fn,
    metric_order,
    planned,
    stylize,
)
from nst.tracking.base import MetricWriter

# --- Running many jobs' stylize() calls as one program. --------------------------------------

_current = threading.local()


@dataclass
class JobSlot:
    """What a job thread of the batched launcher knows: its coordinator, its index, and the
    callback that tells the launcher the job has read Hydra's (process-global) config."""

    coordinator: Coordinator
    index: int
    started: Callable[[], None]
    calls: int = 0

    def stylize(self, *args: Any, **kwargs: Any) -> RunResult:
        # One rendezvous per job: a job that optimizes more than once (the finer levels of a
        # pyramid) runs its later calls on its own, in its thread.
        self.calls += 1
        if self.calls > 1:
            return stylize(*args, **kwargs)
        return self.coordinator.submit(self.index, args, kwargs)


def current_job() -> JobSlot | None:
    """The batched-launcher slot of the calling thread (None outside the batched launcher)."""
    return getattr(_current, "slot", None)


def set_current_job(slot: JobSlot | None) -> None:
    _current.slot = slot


def _structure_key(kw: dict[str, Any]) -> tuple:
    """Everything that must be equal for jobs to share one program; scalar weights and the
    initial image may differ. Jobs that resume, stop early or checkpoint on their own run alone."""
    loss = kw["loss"]
    solo = (
        kw.get("resume_state") is not None
        or kw.get("early_stop_patience", 0) > 0
        or kw.get("content_mask") is not None
    )
    return (
        id(kw) if solo else 0,
        kw["content"].shape,
        tuple(np.shape(x) for x in jax.tree.leaves(kw["style"])),
        tuple(kw.get("style_blend") or ()),
        kw["init"].shape,
        kw["backbone"],
        tuple(loss.content_layers),
        tuple(loss.style_layers),
        loss.gram_norm,
        loss.content_norm,
        loss.style,
        kw["optimizer"],
        kw["steps"],
        kw.get("log_every", 10),
        kw.get("save_every", 0),
        kw.get("steps_per_call", 0),
        kw.get("checkpoint_every", 0),
        kw.get("image_metrics_every", 0),
    )


def _same_arrays(a: Any, b: Any) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(
        x is y or (np.shape(x) == np.shape(y) and np.array_equal(x, y))
        for x, y in zip(la, lb, strict=True)
    )


def group_requests(requests: dict[int, dict[str, Any]]) -> list[list[int]]:
    """Job indices grouped so that each group can run as one batched program: same structure
    (:func:`_structure_key`) and identical content, style and backbone weights."""
    groups: list[list[int]] = []
    for i in sorted(requests):
        kw = requests[i]
        for g in groups:
            ref = requests[g[0]]
            if (
                _structure_key(ref) == _structure_key(kw)
                and _same_arrays(ref["content"], kw["content"])
                and _same_arrays(ref["style"], kw["style"])
                and _same_arrays(ref["params"], kw["params"])
            ):
                g.append(i)
                break
        else:
            groups.append([i])
    return groups


class Coordinator:
    """Rendezvous of the job threads of one launcher chunk. Each job calls :meth:`submit` with
    the arguments of :func:`nst.engine.stylize` (or :meth:`leave` if it ends without getting
    there); when every job of the chunk has done one or the other, the thread that completed the
    set runs the groups (:func:`group_requests`) -- batched where a group has several jobs --
    and every job gets its own result (or its own exception)."""

    def __init__(self, n_jobs: int, should_stop: Callable[[], bool] | None = None):
        self._n = n_jobs
        self._cv = threading.Condition()
        self._requests: dict[int, dict[str, Any]] = {}
        self._left: set[int] = set()
        self._results: dict[int, Any] = {}
        self._started = False
        self._should_stop = should_stop
        self.groups: list[list[int]] = []

    def submit(self, index: int, args: tuple, kwargs: dict[str, Any]) -> RunResult:
        names = ("content", "style", "init", "params")
        kw = {**dict(zip(names, args, strict=False)), **kwargs}
        with self._cv:
            if index in self._requests or index in self._left:
                raise RuntimeError(f"job {index} met the batch coordinator twice")
            self._requests[index] = kw
            leader = self._ready()
        if leader:
            self._run_all()
        with self._cv:
            self._cv.wait_for(lambda: index in self._results)
            out = self._results[index]
        if isinstance(out, BaseException):
            raise out
        return out

    def leave(self, index: int) -> None:
        with self._cv:
            if index in self._requests or index in self._left:
                return
            self._left.add(index)
            leader = self._ready()
        if leader:
            self._run_all()

    def _ready(self) -> bool:
        if self._started or len(self._requests) + len(self._left) < self._n:
            return False
        self._started = True
        return True

    def _run_all(self) -> None:
        self.groups = group_requests(self._requests)
        for g in self.groups:
            try:
                if len(g) == 1:
                    kw = dict(self._requests[g[0]])
                    if self._should_stop is not None:
                        kw["should_stop"] = self._should_stop
                    outs: list[Any] = [_call(stylize, kw)]
                else:
                    outs = stylize_batch(
                        [self._requests[i] for i in g], should_stop=self._should_stop
                    )
            except BaseException as e:  # a failure of the whole group fails each of its jobs
                outs = [e] * len(g)
            with self._cv:
                self._results.update(zip(g, outs, strict=True))
                self._cv.notify_all()


def _call(fn: Callable[..., Any], kw: dict[str, Any]) -> Any:
    try:
        return fn(**kw)
    except Exception as e:
        return e


def stylize_batch(
    requests: Sequence[dict[str, Any]], should_stop: Callable[[], bool] | None = None
) -> list[RunResult | Exception]:
    """Run several :func:`nst.engine.stylize` requests of the same structure (see
    :func:`group_requests`) as one vmapped program. Each job logs to its own writer, snapshots and
    checkpoints its own slice, and gets its own :class:`RunResult` -- or its own
    :class:`~nst.engine.Diverged` / :class:`~nst.engine.Interrupted`, without stopping the others."""
    r0 = requests[0]
    backbone, loss, optimizer = r0["backbone"], r0["loss"], r0["optimizer"]
    steps = int(r0["steps"])
    save_every = int(r0.get("save_every", 0))
    ckpt_every = int(r0.get("checkpoint_every", 0))

    prog = build(
        backbone,
        loss,
        optimizer,
        r0["params"],
        r0["content"],
        r0["style"],
        style_blend=r0.get("style_blend"),
        batch=len(requests),
    )
    losses = [r["loss"] for r in requests]
    scales = [
        balance_scale(prog, r["init"]) if r["loss"].balance == "grad" else None for r in requests
    ]
    weights = prog.weights(
        [balanced(x, c) if c is not None else x for x, c in zip(losses, scales, strict=True)]
    )
    k = int(r0.get("steps_per_call", 0)) or default_steps_per_call()
    state = prog.init_state(np.stack([np.asarray(r["init"], np.float32) for r in requests]))
    ends = call_boundaries(steps, k, save_every, ckpt_every)
    compiled, evaluate, compile_s = prog.compile(state, weights, ends)

    outs = drive_calls(
        compiled,
        evaluate,
        state,
        (prog.params, prog.targets, weights),
        batched=True,
        writers=[r.get("writer") or MetricWriter() for r in requests],
        checkpoint_paths=[r.get("checkpoint_path") for r in requests],
        checkpoint_meta=[r.get("checkpoint_meta", "") for r in requests],
        order=metric_order(loss),
        steps=steps,
        ends=ends,
        log_every=int(r0.get("log_every", 10)),
        save_every=save_every,
        checkpoint_every=ckpt_every,
        should_stop=should_stop,
        progress=any(r.get("progress", True) for r in requests),
        desc=f"nst x{len(requests)}",
        compile_s=compile_s,
        step_metrics=learning_rate_fn(optimizer),
        image_metrics=[r.get("image_metrics") for r in requests],
        image_metrics_every=int(r0.get("image_metrics_every", 0)),
    )
    for out, scale in zip(outs, scales, strict=True):
        if isinstance(out, RunResult):
            out.balance_scale = scale
            out.conv_plan = planned(prog)
    return outs
