"""The ``nst`` command: a thin Hydra entry point around :func:`nst.run.run`."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from nst import hostmem
from nst.errors import NstError, RunInterrupted

# Hydra, OmegaConf and nst.config load in the functions that use them: shell completion
# (nst -sc, see main) answers without them.
if TYPE_CHECKING:
    from omegaconf import DictConfig

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
    from hydra.types import RunMode

    from nst.config import is_run_only
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


def _hydra_main(cfg: DictConfig) -> float | None:
    """The job Hydra runs (wrapped by ``hydra.main`` in :func:`main`)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from nst.run import run  # after Hydra has parsed the command line: keeps --help fast

    hc = HydraConfig.get()
    run_dir = hc.runtime.output_dir
    multirun = hc.mode == RunMode.MULTIRUN
    info = job_info(hc)
    if cfg.get("resume") and hc.output_subdir is None:
        _write_hydra_record(cfg, hc, Path(run_dir))
    if multirun and "joblib" in str(hc.launcher.get("_target_", "")):
        from nst.devices import use_one_device

        logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # not the TPU probe
        use_one_device(str(Path(hc.sweep.dir).resolve()))  # one device per worker process
    # Set by hydra/launcher=batched (which has loaded nst.batch): this job runs in a thread of a
    # batch. Not imported here: a run that fails on its inputs never loads JAX.
    batch = sys.modules.get("nst.batch")
    slot = batch.current_job() if batch is not None else None
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
        if isinstance(e, RunInterrupted):
            if multirun:  # the report lists this job as interrupted (no job-end callback now)
                from nst.report import build_report

                with contextlib.suppress(Exception):
                    build_report(hc.sweep.dir)
            sys.exit(128 + e.signum)  # a signal stops the whole sweep, not just this job
        if multirun:
            # Recorded in error.json: the other jobs run, the sweep ends non-zero.
            return _failed_value(hc)
        sys.exit(2)
    if summary.get("signal"):
        print(
            f"nst: interrupted while writing the result; the run is complete ({run_dir})",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(128 + summary["signal"])
    final = summary["final"]
    metric = summary.get("optimized_metric") or {}
    if metric.get("value") is None:
        print(
            f"nst: warning: optimized_metric={metric.get('name')} is not among the final metrics "
            f"({', '.join(sorted(final))}); returning total",
            file=sys.stderr,
        )
    print(
        f"nst: wrote {summary['result']}  (total {final['total']:.4g}, content {final['content']:.4g},"
        f" style {final['style']:.4g}; {summary['steps']} steps in {summary['wall_s']:.0f} s"
        f"{', stopped early on a plateau' if summary.get('stopped_early') else ''})"
    )
    # Returned to Hydra: what optimizing sweepers (Optuna, ...) minimize or maximize.
    value = metric.get("value")
    return float(final["total"] if value is None else value)


def _failed_value(hc: DictConfig) -> float:
    """What a failed job returns to an optimizing sweeper: the worst value in its direction.
    Optuna's Hydra sweeper stops the whole study on None or NaN; an infinite value it records
    as the trial's, ranked last, and the search goes on."""
    direction = hc.sweeper.get("direction") if "sweeper" in hc else None
    return -math.inf if str(direction) == "maximize" else math.inf


_INFO_FLAGS = (
    "--help",
    "-h",
    "--hydra-help",
    "--version",
    "--cfg",
    "-c",
    "--info",
    "-i",
    "--shell-completion",
    "-sc",
    "--resolve",
)
_TRUE = ("true", "yes", "on", "1")


def _value(argv: list[str], key: str) -> str | None:
    for arg in argv:
        k, sep, v = arg.partition("=")
        if sep and k.lstrip("+~") == key:
            return v
    return None


def resuming(argv: list[str]) -> bool:
    return (_value(argv, "resume") or "").strip("'\"").lower() in _TRUE


def _write_hydra_record(cfg: DictConfig, hc: DictConfig, run_dir: Path) -> None:
    """``resume=true`` runs keep Hydra from rewriting ``.hydra/`` (a refused resume must leave
    the run's record as it was); a run that has none yet (a fresh start) gets it here."""
    from omegaconf import OmegaConf

    out = run_dir / ".hydra"
    if out.exists():
        return
    out.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, out / "config.yaml")
    OmegaConf.save(OmegaConf.create(list(hc.overrides.task)), out / "overrides.yaml")


def check_output_dirs(argv: list[str]) -> str | None:
    """A one-line problem with where the run will write, found before Hydra tries (and fails
    with a traceback) to create the directory or overwrites another run's .hydra/ files:
    ``hydra.run.dir=`` / ``hydra.sweep.dir=`` that cannot be created or written, a default
    ``outputs/`` under an unwritable working directory, or a directory that already holds a run
    (without ``resume=true``)."""
    if any(a.split("=", 1)[0] in _INFO_FLAGS for a in argv):
        return None
    multirun = any(a in ("-m", "--multirun") for a in argv)
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    value = _value(argv, key)
    given = value is not None
    if given and not value.strip():
        return f"{key} is empty: name a directory (or leave it out for the default under outputs/)"
    if not given:
        value = "outputs"  # the default run and sweep directories live under ./outputs
    path = Path(value.split("${", 1)[0] or ".").expanduser()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"output directory {value} cannot be created: {existing} is not a directory"
    from nst.files import WriteError, probe_writable

    try:
        probe_writable(path)
    except WriteError as e:
        hint = "" if given else f" (the default; run from a writable directory or set {key}=DIR)"
        return f"{e}{hint}"
    if given and multirun and resuming(argv) and (path / "multirun.yaml").is_file():
        other = _other_sweep(path / "multirun.yaml", argv)
        if other:
            return (
                f"resume=true: {path} holds another sweep ({other}); resume it with the "
                f"overrides it was started with, or choose another {key}"
            )
    if given and path.is_dir() and not resuming(argv):
        from nst.rundir import previous_files

        dirs = [p for p in path.iterdir() if p.is_dir()] if multirun else [path]
        held = [d for d in dirs if previous_files(d)]
        if held:
            return (
                f"{held[0]} already holds a run ({', '.join(previous_files(held[0])[:3])}); "
                f"continue it with resume=true, or choose another {key}"
            )
    return None


def _shaping(overrides: list[str]) -> dict[str, str]:
    """The command-line overrides that name a sweep's job directories (all but
    :data:`nst.config.RUN_ONLY_KEYS`), key -> value as Hydra expands it (``a=1e2,1e3`` ->
    ``100.0,1000.0``); None when Hydra cannot parse them (it says why later)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from nst.config import is_run_only

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        return {
            o.input_line.split("=", 1)[0]: ",".join(o.sweep_string_iterator())
            if o.is_sweep_override()
            else o.get_value_element_as_str()
            for o in parsed
            # Hydra's own groups (hydra/launcher=batched) are not in the sweep's record.
            if not o.is_hydra_override() and not is_run_only(o.input_line.split("=", 1)[0])
        }
    except Exception:  # noqa: BLE001 - Hydra reports unparsable overrides itself
        return None  # type: ignore[return-value]


def _other_sweep(record: Path, argv: list[str]) -> str | None:
    """How the sweep recorded in ``record`` (a sweep directory's multirun.yaml) differs from the
    one ``argv`` asks for, or None: a resumed sweep must name the same job directories, or two
    sweeps' jobs would mix in one directory and report."""
    from omegaconf import OmegaConf

    try:
        before = [str(o) for o in OmegaConf.load(record).hydra.overrides.task]
    except Exception:  # noqa: BLE001 - an unreadable record: the job directories decide
        return None
    old, new = _shaping(before), _shaping([a for a in argv if not a.startswith("-")])
    if old is None or new is None or old == new:
        return None
    return ", ".join(
        f"{k}: {old.get(k, '-')} -> {new.get(k, '-')}"
        for k in sorted(set(old) | set(new))
        if old.get(k) != new.get(k)
    )


_PLAIN = re.compile(r"[^,\[\]{}()'\"$*?\\]+")


def quote_non_ascii(argv: list[str]) -> tuple[list[str], str | None]:
    """Hydra's override lexer takes non-ASCII characters only inside quotes: quote a plain
    ``key=value`` for the user (``content=bild_ü.jpg``), or say how when the value has sweep or
    grammar characters."""
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and not value.isascii() and not value.startswith(("'", '"')):
            if not _PLAIN.fullmatch(value):
                return argv, (
                    f"{arg}: values with non-ASCII characters must be quoted, e.g. "
                    f"'{key}=\"{value}\"' (the shell needs the outer single quotes)"
                )
            arg = f"{key}='{value}'"
        out.append(arg)
    return out, None


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


def help_page(path: str | Path | None = None) -> str | None:
    """``nst --help``: the page of ``conf/hydra/help/nst.yaml``, filled as Hydra fills it (its
    ``${hydra.help.*}`` references, then a string.Template, where ``$$`` is ``$``). Hydra would
    first list every config group's options for placeholders this page does not use: seconds.
    None where the page uses one of Hydra's placeholders ($CONFIG, $APP_CONFIG_GROUPS, ...):
    Hydra fills it then."""
    from omegaconf import OmegaConf

    path = Path(CONFIG_DIR) / "hydra" / "help" / "nst.yaml" if path is None else Path(path)
    cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    page = re.sub(r"\$\{hydra\.help\.(\w+)\}", lambda m: cfg[m.group(1)], cfg["template"])
    if "$" in page.replace("$$", ""):
        return None
    return page.replace("$$", "$")


def _exit_on_signal(signum, frame) -> None:  # noqa: ARG001
    """SIGINT/SIGTERM outside the optimization loop (which installs handlers that checkpoint):
    one line and the conventional exit code, at once. Unwinding through JAX's set-up or compile
    (an exception from the handler) can crash the interpreter at exit; nothing needs saving yet,
    and every file nst writes is written atomically."""
    name = signal.Signals(signum).name
    os.write(2, f"nst: interrupted ({name}) outside the optimization; nothing to save\n".encode())
    os._exit(128 + signum)


def main() -> None:
    """Console-script entry point (``nst``)."""
    argv = sys.argv[1:]
    if any(a in ("-sc", "--shell-completion") for a in argv):
        # First and alone: a Tab must answer at once, without Hydra or JAX.
        from nst.completion import main as complete

        sys.exit(complete([a for a in argv if a not in ("-sc", "--shell-completion")]))
    hostmem.tune_malloc()  # before JAX starts its threads (see nst.hostmem)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _exit_on_signal)
    if sys.argv[1:] in (["--version"], ["-V"]):
        from nst import __version__

        print(f"nst {__version__}")
        return
    if any(a in ("--help", "-h") for a in argv) and not any(
        a == "--hydra-help" or a.lstrip("+~").startswith(("hydra/help", "hydra.help")) for a in argv
    ):
        page = help_page()
        if page is not None:
            print(page)
            return
    try:
        argv, problem = quote_non_ascii(sys.argv[1:])
        problem = problem or check_output_dirs(argv)
        if problem:
            print(f"nst: error: {problem}", file=sys.stderr)
            sys.exit(2)
        if resuming(argv) and not any(a.startswith("hydra.output_subdir=") for a in argv):
            # Keep the run's own .hydra/ record: a refused resume must leave it as it was.
            argv.append("hydra.output_subdir=null")
        sys.argv[1:] = argv
        # Hydra logs at INFO; JAX's backend probing ("Unable to initialize backend 'tpu'") is noise.
        logging.getLogger("jax").setLevel(logging.WARNING)
        enable_compile_cache()
        import hydra

        from nst.config import register_configs

        register_configs()
        hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")(_hydra_main)()
    except KeyboardInterrupt:  # raised by code that restored Python's default handler
        print("nst: interrupted (SIGINT); nothing to save", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
