"""Sweep jobs as found on disk, and the drawing helpers their pictures share.

The sweep report (:mod:`nst.report`) and the paper figures (:mod:`nst.figures`) both build on
this module (and not on each other).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from nst.config import alpha_beta, is_run_only
from nst.rundir import WANDB_RUN_FILE

THUMB = 192


@dataclass
class Job:
    """One job of a sweep, as found on disk."""

    dir: Path
    num: int
    overrides: dict[str, str]
    status: str  # ok | failed | diverged | incomplete
    summary: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    @property
    def final(self) -> dict[str, float]:
        return self.summary.get("final", {})

    @property
    def result(self) -> Path | None:
        p = self.dir / "result.png"
        return p if p.exists() else None

    def alpha_beta(self) -> float | None:
        """The paper's α/β when the job set ``loss.ab_ratio``, else ``loss.alpha / loss.beta``."""
        cfg = self.summary.get("config") or _hydra_config(self.dir)
        try:
            loss = cfg["loss"]
            ratio = loss.get("ab_ratio")
            value = alpha_beta(loss["alpha"], loss["beta"], None if ratio is None else float(ratio))
        except (KeyError, TypeError, ValueError, AttributeError):
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
        p = self.dir / "metrics.jsonl"
        if not p.exists():
            return []
        rows = []
        for line in p.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a crash
        return rows


def _read_overrides(path: Path) -> dict[str, str]:
    from omegaconf import OmegaConf

    out = {}
    for item in OmegaConf.load(path):
        key, _, value = str(item).partition("=")
        out[key.lstrip("+~")] = value
    return out


def _hydra_config(job_dir: Path) -> dict[str, Any]:
    from omegaconf import OmegaConf

    p = job_dir / ".hydra" / "config.yaml"
    return OmegaConf.to_container(OmegaConf.load(p)) if p.exists() else {}


def find_jobs(sweep_dir: str | Path) -> list[Job]:
    """Every job directory under ``sweep_dir`` (one level deep), ordered by job number."""
    jobs = []
    for d in sorted(Path(sweep_dir).iterdir()):
        ov = d / ".hydra" / "overrides.yaml"
        if not (d.is_dir() and ov.exists()):
            continue
        overrides = {k: v for k, v in _read_overrides(ov).items() if not is_run_only(k)}
        num = _job_num(d)
        summary, error, status = {}, "", "incomplete"
        if (d / "summary.json").exists():
            summary = json.loads((d / "summary.json").read_text())
            status = summary.get("status", "ok")
            error = summary.get("error", "")
        elif (d / "error.json").exists():
            err = json.loads((d / "error.json").read_text())
            status, error = err.get("status", "failed"), err.get("error", "")
        jobs.append(Job(d, num, overrides, status, summary, error))
    return sorted(jobs, key=lambda j: (j.num, j.dir.name))


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
    """Override keys whose values differ between jobs, in command-line order."""
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
    tile = Image.new("RGB", (size, size), background)
    if job.result is not None and job.status == "ok":
        im = Image.open(job.result).convert("RGB")
        scale = size / max(im.size)  # fit the cell, upscaling small results too
        im = im.resize(
            (max(1, round(im.width * scale)), max(1, round(im.height * scale))),
            Image.Resampling.LANCZOS,
        )
        tile.paste(im, ((size - im.width) // 2, (size - im.height) // 2))
    else:
        d = ImageDraw.Draw(tile)
        d.rectangle([0, 0, size - 1, size - 1], outline=(200, 40, 40), width=4)
        d.text((10, size // 2 - 20), job.status.upper(), fill=(200, 40, 40), font=load_font(20))
        d.text(
            (10, size // 2 + 6), wrap_text(job.error, 28)[:90], fill=(80, 0, 0), font=load_font(11)
        )
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
