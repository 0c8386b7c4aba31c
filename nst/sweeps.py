"""Sweep jobs as found on disk, and the drawing helpers their pictures share.

The sweep report (:mod:`nst.report`) and the paper figures (:mod:`nst.figures`) both build on
this module (and not on each other).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from nst.config import alpha_beta, is_run_only
from nst.errors import one_line
from nst.rundir import WANDB_RUN_FILE

THUMB = 192
DAMAGED = "damaged"  # the status of a job whose files the report cannot read
OVERRIDES = ".hydra/overrides.yaml"
HYDRA_CONFIG = ".hydra/config.yaml"
_NUMBER = (int, float)
# The fields of summary.json / error.json the report reads, and the types it needs them in: any
# other type means the file is damaged (never a traceback, never a wrong number in the report).
SUMMARY_FIELDS: dict[str, tuple[type, ...]] = {
    "status": (str,),
    "error": (str,),
    "final": (dict,),
    "wall_s": _NUMBER,
    "config": (dict,),
}
ERROR_FIELDS: dict[str, tuple[type, ...]] = {"status": (str,), "error": (str,)}


@dataclass
class Job:
    """One job of a sweep, as found on disk."""

    dir: Path
    num: int
    overrides: dict[str, str]
    # ok | failed | diverged | interrupted | incomplete | damaged (a file below is unreadable)
    status: str
    summary: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    # The job's files that could not be read (``summary.json``, ``.hydra/overrides.yaml``, ...);
    # ``error`` says why. A damaged summary is dropped (``summary`` is then empty).
    damaged: tuple[str, ...] = ()
    # ``.hydra/config.yaml`` where the summary has no config (read once, by find_jobs).
    hydra_config: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def final(self) -> dict[str, float]:
        return self.summary.get("final", {})

    @property
    def result(self) -> Path | None:
        p = self.dir / "result.png"
        return p if p.is_file() else None

    def alpha_beta(self) -> float | None:
        """The paper's α/β when the job set ``loss.ab_ratio``, else ``loss.alpha / loss.beta``."""
        cfg = self.summary.get("config") or self.hydra_config
        if cfg is None:
            try:
                cfg = load_yaml(self.dir / HYDRA_CONFIG)
            except (FileNotFoundError, Unreadable):
                return None
        try:
            loss = cfg["loss"]
            ratio = loss.get("ab_ratio")
            value = alpha_beta(loss["alpha"], loss["beta"], None if ratio is None else float(ratio))
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
            return None
        return math.inf if value is None else value

    def wandb(self) -> dict[str, Any]:
        """The job's W&B run as ``logger=wandb`` recorded it (``wandb_run.json``): ``url``
        online, ``sync_dir`` (relative to the job directory) offline; empty without one."""
        p = self.dir / WANDB_RUN_FILE
        try:
            rec = json.loads(p.read_text())
        except (OSError, ValueError):
            return {}
        return rec if isinstance(rec, dict) else {}

    def metrics(self) -> list[dict[str, Any]]:
        """The rows of ``metrics.jsonl``; lines that are not a JSON object (cut by a crash,
        garbage) are skipped, an unreadable file gives none."""
        try:
            text = (self.dir / "metrics.jsonl").read_text(encoding="utf-8")
        except (OSError, ValueError):
            return []
        rows = []
        for line in text.splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line cut by a crash
            if isinstance(row, dict):
                rows.append(row)
        return rows


class Unreadable(Exception):
    """A job file exists but cannot be read or parsed, or holds the wrong kind of data;
    ``str(err)`` is the one-line reason."""


def _reason(err: BaseException) -> str:
    """Why a file could not be read, in one line and without its path (the report names it)."""
    import yaml

    if isinstance(err, Image.UnidentifiedImageError):
        return "not an image"
    if isinstance(err, UnicodeDecodeError):
        return "not UTF-8 text"
    if isinstance(err, yaml.MarkedYAMLError) and err.problem and err.problem_mark is not None:
        mark = err.problem_mark
        return f"{err.problem} at line {mark.line + 1}, column {mark.column + 1}"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return one_line(err)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    for types, name in ((str, "a string"), (_NUMBER, "a number"), (list, "a list")):
        if isinstance(value, types):
            return name
    return "an object" if isinstance(value, dict) else type(value).__name__


def load_json(path: Path, fields: dict[str, tuple[type, ...]]) -> dict[str, Any]:
    """The JSON object in ``path``, each of ``fields`` present of its type (``final``: numbers).
    FileNotFoundError when absent, :class:`Unreadable` when damaged."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError, RecursionError) as e:
        raise Unreadable(_reason(e)) from None
    if not isinstance(obj, dict):
        raise Unreadable(f"not a JSON object but {_kind(obj)}")
    for key, types in fields.items():
        if key in obj and (isinstance(obj[key], bool) or not isinstance(obj[key], types)):
            raise Unreadable(f'"{key}" is {_kind(obj[key])}, not {_kind(types[0]())}')
    final = obj.get("final") if "final" in fields else None
    for key, value in (final or {}).items():
        if isinstance(value, bool) or not isinstance(value, _NUMBER):
            raise Unreadable(f'"final" holds {_kind(value)} for "{key}", not a number')
    return obj


def load_yaml(path: Path) -> dict[str, Any]:
    """The mapping in a YAML file such as ``.hydra/config.yaml`` (as OmegaConf reads it, not
    resolved). FileNotFoundError when absent, :class:`Unreadable` when damaged."""
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        obj = OmegaConf.to_container(OmegaConf.load(path))
    except FileNotFoundError:
        raise
    except (OSError, ValueError, yaml.YAMLError, OmegaConfBaseException) as e:
        raise Unreadable(_reason(e)) from None
    if not isinstance(obj, dict):
        raise Unreadable(f"not a mapping but {_kind(obj)}")
    return obj


# Hydra's override grammar escapes these with a backslash (``content=sample\:chelsea``); the
# value is the character itself.
_ESCAPED = re.compile(r"\\([\\()\[\]{}:=, \t])")


def unescape(value: str) -> str:
    r"""An override's value as it is meant (``sample\:chelsea`` -> ``sample:chelsea``); a quoted
    value is left as written."""
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value
    return _ESCAPED.sub(r"\1", value)


def _read_overrides(path: Path) -> dict[str, str]:
    """Hydra's record of a job's command-line overrides (a YAML list of ``key=value``) as
    ``{key: value}``, ``+``/``~`` prefixes and escapes removed."""
    import yaml

    try:
        items = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise Unreadable(_reason(e)) from None
    if items is None:
        items = []
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise Unreadable("not a list of key=value overrides")
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        out[key.lstrip("+~")] = unescape(value)
    return out


def _check_image(path: Path) -> str | None:
    """Why the image file ``path`` cannot be shown (``missing``, ``unreadable (...)``), or None.
    Reads it through (every PNG chunk and checksum) without decoding the pixels."""
    try:
        with Image.open(path) as im:
            im.verify()
    except FileNotFoundError:
        return "missing"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        return f"unreadable ({_reason(e)})"
    return None


def find_jobs(sweep_dir: str | Path) -> list[Job]:
    """Every job directory under ``sweep_dir`` (one level deep), ordered by job number. A job
    whose files cannot be read is still found, with status ``damaged`` (see :func:`read_job`);
    OSError only when ``sweep_dir`` itself cannot be listed."""
    jobs = []
    for d in sorted(Path(sweep_dir).iterdir()):
        try:
            if not (d.is_dir() and (d / OVERRIDES).exists()):
                continue
        except OSError:  # a directory that cannot be looked into is not known to be a job
            continue
        jobs.append(read_job(d))
    return sorted(jobs, key=lambda j: (j.num, j.dir.name))


def read_job(d: Path) -> Job:
    """One job directory. Its status comes from ``summary.json`` (``status``, default ok),
    else ``error.json`` (default failed), else incomplete; when a file the report needs cannot be
    read (truncated, not the JSON object or YAML it should be, a field of the wrong type, a
    finished job's ``result.png``) the status is ``damaged`` and ``error`` names the file(s) and
    why, then what the job said of itself, if anything."""
    damage: dict[str, str] = {}
    try:
        overrides = {k: v for k, v in _read_overrides(d / OVERRIDES).items() if not is_run_only(k)}
    except Unreadable as e:
        overrides, damage[OVERRIDES] = {}, f"unreadable ({e})"
    summary: dict[str, Any] = {}
    status, error = "incomplete", ""
    try:
        summary = load_json(d / "summary.json", SUMMARY_FIELDS)
        status, error = summary.get("status", "ok"), summary.get("error", "")
    except Unreadable as e:
        damage["summary.json"] = f"unreadable ({e})"
    except FileNotFoundError:
        try:
            err = load_json(d / "error.json", ERROR_FIELDS)
            status, error = err.get("status", "failed"), err.get("error", "")
        except FileNotFoundError:
            pass
        except Unreadable as e:
            damage["error.json"] = f"unreadable ({e})"
    hydra_config = None
    if not summary.get("config"):  # α/β from the config Hydra saved
        try:
            hydra_config = load_yaml(d / HYDRA_CONFIG)
        except FileNotFoundError:
            hydra_config = {}
        except Unreadable as e:
            hydra_config, damage[HYDRA_CONFIG] = {}, f"unreadable ({e})"
    if status == "ok" and not damage and (why := _check_image(d / "result.png")):
        damage["result.png"] = why
    if damage:
        notes = [f"{name} {why}" for name, why in damage.items()]
        if error or status not in ("ok", "incomplete"):  # what the job said of itself
            notes.append(f"{status}: {error}" if error else status)
        status, error = DAMAGED, "; ".join(notes)
    return Job(d, _job_num(d), overrides, status, summary, error, tuple(damage), hydra_config)


def _job_num(d: Path) -> int:
    head = d.name.split("_", 1)[0]
    if head.isdigit():
        return int(head)
    try:
        from omegaconf import OmegaConf

        return int(OmegaConf.load(d / ".hydra" / "hydra.yaml").hydra.job.num)
    except Exception:
        return 0


def swept_keys(jobs: list[Job]) -> list[str]:
    """Override keys whose values differ between jobs, in command-line order. A job whose
    overrides could not be read has none: it is left out here (else every key would differ)."""
    jobs = [j for j in jobs if OVERRIDES not in j.damaged] or jobs
    keys: list[str] = []
    for j in jobs:
        keys += [k for k in j.overrides if k not in keys]
    return [k for k in keys if len({j.overrides.get(k) for j in jobs}) > 1]


def sort_values(values: set[str | None]) -> list[str | None]:
    def key(v):
        try:
            return (0, float(v), "")
        except (TypeError, ValueError):
            return (1, 0.0, str(v))

    return sorted(values, key=key)


def format_value(key: str, value: str | None) -> str:
    """``loss.beta`` = ``1000.0`` -> ``beta=1000``, ``1e4`` -> ``beta=1e+04``, ``2.5e4`` ->
    ``beta=2.5e+04``: short keys, compact numbers (e-notation outside 1e-3..1e4), never rounded
    so far that two swept values share a label (facets are grouped by label)."""
    short = key.rsplit(".", 1)[-1]
    if isinstance(value, str):
        value = value.replace("\\", "")  # Hydra's escaping in sweep overrides (sample\:coffee)
    try:
        f = float(value)  # type: ignore[arg-type]
        if 1e-3 <= abs(f) < 1e4 or f == 0 or not math.isfinite(f):
            text = f"{f:g}"
        else:
            mant, exp = f"{f:.5e}".split("e")
            text = f"{mant.rstrip('0').rstrip('.')}e{exp}"
    except (TypeError, ValueError):
        text = str(value)
    return f"{short}={text}"


def load_font(size: int) -> ImageFont.ImageFont:
    """DejaVu Sans where installed (it has Greek letters), else Pillow's bundled font."""
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        pass
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def _greek() -> bool:
    try:
        ImageFont.truetype("DejaVuSans.ttf", 10)
        return True
    except OSError:
        return False


AB = "α/β" if _greek() else "alpha/beta"


def thumbnail(
    job: Job, size: int, background: tuple[int, int, int] = (235, 235, 235)
) -> Image.Image:
    """The job's result fitted into a ``size`` px square; a job without one (failed, unfinished,
    damaged) gets a red-framed tile with its status and error."""
    tile = Image.new("RGB", (size, size), background)
    status, error = job.status, job.error
    if job.result is not None and status == "ok":
        try:
            with Image.open(job.result) as f:
                im = f.convert("RGB")
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            # find_jobs checked the file; it was damaged since, or beyond what verify() sees
            status, error = DAMAGED, f"result.png unreadable ({_reason(e)})"
        else:
            scale = size / max(im.size)  # fit the cell, upscaling small results too
            im = im.resize(
                (max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                Image.Resampling.LANCZOS,
            )
            tile.paste(im, ((size - im.width) // 2, (size - im.height) // 2))
            return tile
    d = ImageDraw.Draw(tile)
    d.rectangle([0, 0, size - 1, size - 1], outline=(200, 40, 40), width=4)
    d.text((10, size // 2 - 20), status.upper(), fill=(200, 40, 40), font=load_font(20))
    d.text((10, size // 2 + 6), wrap_text(error, 28)[:90], fill=(80, 0, 0), font=load_font(11))
    return tile


def wrap_text(text: str, width: int) -> str:
    words, lines, cur = text.split(), [], ""
    for w in words:
        if len(cur) + len(w) + 1 > width and cur:
            lines.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}".strip()
    return "\n".join([*lines, cur][:4])
