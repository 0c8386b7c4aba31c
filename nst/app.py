"""The ``nst`` command: a thin Hydra entry point around :func:`nst.run.run`."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from nst import hostmem
from nst.config import is_run_only, register_configs
from nst.errors import NstError, RunInterrupted

if TYPE_CHECKING:
    from nst.tracking import JobInfo

# The config tree ships inside the package (package data), so installed wheels find it too.
CONFIG_DIR = str(Path(__file__).resolve().parent / "conf")


def _swept_keys(hc: DictConfig) -> set[str]:
    """Keys the sweep varies: sweep syntax on the `nst -m` command line (a,b / range() / choice())
    or in hydra.sweeper.params (sweep= configs). Read from the sweep's multirun.yaml."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    keys = set(hc.sweeper.get("params") or {})
    path = Path(hc.sweep.dir) / "multirun.yaml"
    if path.exists():
        task = list(OmegaConf.load(path).hydra.overrides.task)
        for o in OverridesParser.create().parse_overrides(task):
            if o.is_sweep_override():
                keys.add(o.get_key_element().lstrip("+~"))
    return keys


def job_info(hc: DictConfig) -> JobInfo:
    """Name, group and type of the job for trackers, from Hydra's runtime config. In a sweep the
    name lists the swept values (``beta=1000,layers=gatys2016``) and the group is the sweep."""
    from nst.tracking import JobInfo

    pairs = [o.split("=", 1) for o in hc.overrides.task if "=" in o]
    pairs = [(k.lstrip("+~"), v) for k, v in pairs if not is_run_only(k)]
    multirun = hc.mode == RunMode.MULTIRUN
    group = None
    if multirun:
        parts = Path(hc.sweep.dir).resolve().parts
        group = "_".join(parts[-2:])  # e.g. 2026-11-23_04-20-00: one per `nst -m` invocation
        swept = _swept_keys(hc)
        named = [(k, v) for k, v in pairs if k in swept] or pairs
    else:
        named = pairs
    name = ",".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in named)
    choices = {
        k: str(v)
        for k, v in hc.runtime.choices.items()
        if not k.startswith("hydra") and v is not None
    }
    return JobInfo(
        name=name or None,
        group=group,
        job_type=choices.get("experiment", "default"),
        overrides=[f"{k}={v}" for k, v in pairs],
        choices=choices,
        num=hc.job.num if multirun else None,
    )


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    from nst.batch import current_job
    from nst.run import run  # after Hydra has parsed the command line: keeps --help fast

    hc = HydraConfig.get()
    run_dir = hc.runtime.output_dir
    multirun = hc.mode == RunMode.MULTIRUN
    info = job_info(hc)
    slot = current_job()  # set by hydra/launcher=batched: this job runs in a thread of a batch
    if slot is not None:
        slot.started()  # done with Hydra's global config: the next job may set up
    try:
        summary = run(cfg, run_dir, info, stylize_fn=slot.stylize if slot else None)
    except Exception as e:
        if cfg.get("debug", False) or not (multirun or isinstance(e, NstError)):
            raise  # a bug in a single run keeps its traceback
        if isinstance(e, NstError):
            print(f"nst: error: {e}", file=sys.stderr, flush=True)
        else:
            print(
                f"nst: error: job {info.num} failed: {type(e).__name__}: {e} "
                f"(traceback in {run_dir}/error.json)",
                file=sys.stderr,
                flush=True,
            )
        if multirun and not isinstance(e, RunInterrupted):
            return  # recorded in error.json: the other jobs run, the sweep ends non-zero
        sys.exit(2)  # a signal stops the whole sweep, not just this job
    final = summary["final"]
    print(
        f"nst: wrote {summary['result']}  (total {final['total']:.4g}, content {final['content']:.4g},"
        f" style {final['style']:.4g}; {summary['steps']} steps in {summary['wall_s']:.0f} s)"
    )


def check_output_dirs(argv: list[str]) -> str | None:
    """A one-line problem with ``hydra.run.dir=`` / ``hydra.sweep.dir=`` on the command line, found
    before Hydra tries (and fails with a traceback) to create the directory."""
    for arg in argv:
        key, _, value = arg.partition("=")
        if key.lstrip("+") not in ("hydra.run.dir", "hydra.sweep.dir") or not value:
            continue
        path = Path(value.split("${", 1)[0] or ".").expanduser()
        existing = path
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            return f"output directory {value} cannot be created: {existing} is not a directory"
        if not os.access(existing, os.W_OK | os.X_OK):
            return f"output directory {value} cannot be created: {existing} is not writable"
    return None


# Compiled programs kept across runs (JAX's persistent compilation cache): a second run of the same
# configuration skips most of XLA's compile time (a 256 px step compiles in ~3 s on 2 cores).
COMPILE_CACHE_MAX_BYTES = 2 * 2**30


def enable_compile_cache() -> str | None:
    """Point JAX's persistent compilation cache at ``<nst cache>/xla`` unless the user chose a
    directory (``JAX_COMPILATION_CACHE_DIR``) or turned it off (``NST_COMPILE_CACHE=0``). Set in
    the environment, so launcher worker processes inherit it. Returns the directory in use."""
    if os.environ.get("NST_COMPILE_CACHE", "1") == "0":
        return None
    if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        from nst.files import cache_dir

        try:
            os.environ["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir() / "xla")
        except NstError:
            return None  # an unwritable cache must not stop a run; weights will say why
        os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(COMPILE_CACHE_MAX_BYTES))
    if "jax" in sys.modules:  # read at import: update a JAX that is already loaded
        import jax

        jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
        max_size = os.environ.get("JAX_COMPILATION_CACHE_MAX_SIZE")
        if max_size:
            jax.config.update("jax_compilation_cache_max_size", int(max_size))
    return os.environ["JAX_COMPILATION_CACHE_DIR"]


def main() -> None:
    """Console-script entry point (``nst``)."""
    hostmem.tune_malloc()  # before JAX starts its threads (see nst.hostmem)
    problem = check_output_dirs(sys.argv[1:])
    if problem:
        print(f"nst: error: {problem}", file=sys.stderr)
        sys.exit(2)
    # Hydra logs at INFO; JAX's backend probing ("Unable to initialize backend 'tpu'") is noise.
    logging.getLogger("jax").setLevel(logging.WARNING)
    enable_compile_cache()
    register_configs()
    _hydra_main()


if __name__ == "__main__":
    main()
