"""``hydra/launcher=batched``: run a sweep's jobs that differ only in scalar loss weights and/or
the initial image (seed) as ONE compiled program (see :mod:`nst.batch`).

    nst -m hydra/launcher=batched loss.ab_ratio=1e-5,1e-4,1e-3,1e-2 seed=0,1,2,3

Every job still goes through Hydra's ``run_job`` and nst's ``run()`` in its own thread, so run
directories, metrics, summaries, W&B runs and the sweep report are exactly those of the basic
launcher; only the optimization is shared: the job threads meet in a :class:`nst.batch.Coordinator`
which batches the jobs whose structure matches and runs the others one by one.
"""
# No `from __future__ import annotations`: Hydra's plugin scan executes this module outside
# sys.modules, where dataclasses cannot resolve string annotations.

import logging
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)


@dataclass
class BatchedLauncherConf:
    _target_: str = "hydra_plugins.nst_launcher.batched_launcher.BatchedLauncher"
    # Jobs handled together (at most this many images per batched program; also how many job
    # threads exist at once). Larger sweeps run in chunks of this size.
    batch_size: int = 16


ConfigStore.instance().store(
    group="hydra/launcher", name="batched", node=BatchedLauncherConf, provider="nst"
)


class BatchedLauncher(Launcher):
    def __init__(self, batch_size: int = 16) -> None:
        if batch_size < 1:
            raise ValueError(f"hydra.launcher.batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        from nst import batch
        from nst.run import stop_on_signals

        setup_globals()
        assert self.config is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        log.info(f"Launching {len(job_overrides)} jobs batched (up to {self.batch_size} at once)")
        runs: list[JobReturn] = []
        with stop_on_signals() as stop:
            for start in range(0, len(job_overrides), self.batch_size):
                chunk = list(job_overrides[start : start + self.batch_size])
                runs += self._launch_chunk(chunk, initial_job_idx + start, stop.is_set, batch)
                if stop.is_set():
                    break
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        if stop.is_set():
            sys.exit(128 + int(stop.signum))  # as with the basic launcher: a signal stops the sweep
        return runs

    def _launch_chunk(
        self, chunk: list[Sequence[str]], first: int, should_stop: Any, batch: Any
    ) -> list[JobReturn]:
        assert self.config is not None and self.hydra_context is not None
        coordinator = batch.Coordinator(len(chunk), should_stop=should_stop)
        results: list[Any] = [None] * len(chunk)
        # Hydra keeps the job's config in a process-wide singleton (HydraConfig) that run_job
        # sets and the task reads first thing: one job at a time passes that point.
        setup = threading.Lock()

        def job(i: int, overrides: Sequence[str]) -> None:
            idx = first + i
            released = threading.Event()

            def started() -> None:
                if not released.is_set():
                    released.set()
                    setup.release()

            batch.set_current_job(batch.JobSlot(coordinator, i, started))
            try:
                sweep_config = self.hydra_context.config_loader.load_sweep_config(
                    self.config, list(overrides)
                )
                with open_dict(sweep_config):
                    sweep_config.hydra.job.id = idx
                    sweep_config.hydra.job.num = idx
                results[i] = run_job(
                    hydra_context=self.hydra_context,
                    task_function=self.task_function,
                    config=sweep_config,
                    job_dir_key="hydra.sweep.dir",
                    job_subdir_key="hydra.sweep.subdir",
                )
            except BaseException as e:  # noqa: BLE001 - recorded as the job's failure
                results[i] = e
            finally:
                started()
                coordinator.leave(i)
                batch.set_current_job(None)

        threads = []
        for i, overrides in enumerate(chunk):
            log.info(f"\t#{first + i} : {' '.join(filter_overrides(overrides))}")
            setup.acquire()
            t = threading.Thread(target=job, args=(i, overrides), name=f"nst-job-{first + i}")
            t.start()
            threads.append(t)
        for t in threads:
            t.join()
        if len(coordinator.groups) < len(chunk):
            sizes = sorted((len(g) for g in coordinator.groups), reverse=True)
            log.info(f"batched {len(chunk)} jobs as {len(sizes)} program(s) of {sizes} images")
        out = []
        for r in results:
            if isinstance(r, SystemExit):
                continue  # the job was interrupted by a signal; the sweep stops after the chunk
            if isinstance(r, BaseException):
                raise r
            out.append(r)
        return out
