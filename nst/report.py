"""Local sweep report: contact sheet, self-contained HTML and CSV for a multirun directory.

Written at the end of every ``nst -m`` (a Hydra callback) and on demand with
``nst-report SWEEP_DIR``. A job is any subdirectory holding ``.hydra/overrides.yaml``; its status
comes from ``summary.json`` (finished), ``error.json`` (failed, with the message) or neither
(did not finish); a job whose files cannot be read is shown as ``damaged`` (with the file and why)
and the rest of the report is made as usual. Swept keys are the override keys whose values differ
between jobs: the first two become the contact sheet's rows and columns, further ones facet it.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import csv
import html
import io
import math
import re
import shlex
import stat
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from nst.errors import NstError, one_line
from nst.figures import build_figure
from nst.files import WriteError, atomic_write_bytes
from nst.sweeps import (  # noqa: F401 - find_jobs, swept_keys, format_value: the report's API
    AB,
    DAMAGED,
    HYDRA_CONFIG,
    THUMB,
    Job,
    Unreadable,
    find_jobs,
    format_value,
    load_font,
    load_yaml,
    sort_values,
    swept_keys,
    thumbnail,
    wrap_text,
)


class SweepDirError(NstError, FileNotFoundError):
    """``SWEEP_DIR`` is missing, not a directory, unreadable or holds no jobs (one line)."""


def grid_layout(jobs: list[Job], keys: list[str]) -> dict[str, Any]:
    """Rows/cols/facets of the contact sheet: ``{"row_key", "col_key", "rows", "cols", "facets"}``
    where ``facets`` maps a facet label to ``{(row_value, col_value): job}``."""
    row_key = keys[0] if keys else None
    col_key = keys[1] if len(keys) > 1 else None
    facet_keys = keys[2:]
    rows = sort_values({j.overrides.get(row_key) for j in jobs}) if row_key else [None]
    cols = sort_values({j.overrides.get(col_key) for j in jobs}) if col_key else [None]
    facets: dict[str, dict[tuple, Job]] = {}
    for j in jobs:
        label = ", ".join(format_value(k, j.overrides.get(k)) for k in facet_keys)
        cell = (
            j.overrides.get(row_key) if row_key else None,
            j.overrides.get(col_key) if col_key else None,
        )
        facets.setdefault(label, {})[cell] = j
    return {"row_key": row_key, "col_key": col_key, "rows": rows, "cols": cols, "facets": facets}


def _axis_label(key: str | None, value: str | None, jobs: list[Job]) -> str:
    if key is None:
        return ""
    text = format_value(key, value)
    if key in ("loss.alpha", "loss.beta", "loss.ab_ratio"):
        ratios = {j.alpha_beta() for j in jobs if j.overrides.get(key) == value}
        if len(ratios) == 1 and (r := ratios.pop()) is not None:
            text += f"  ({AB}={r:.0e})"
    return text


def contact_sheet(jobs: list[Job], keys: list[str], thumb: int = THUMB) -> Image.Image:
    """The result images in a grid: rows = first swept key, columns = second, facets below."""
    lay = grid_layout(jobs, keys)
    rows, cols = lay["rows"], lay["cols"]
    pad, head_h = 8, 30
    label_w = 190 if lay["row_key"] else 0
    col_head = head_h if lay["col_key"] else 0
    facet_head = head_h if len(lay["facets"]) > 1 or keys[2:] else 0
    block_h = facet_head + col_head + len(rows) * (thumb + pad)
    width = label_w + len(cols) * (thumb + pad) + pad
    height = len(lay["facets"]) * block_h + pad
    sheet = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(sheet)
    font, small = load_font(14), load_font(11)
    y0 = pad
    for label, cells in lay["facets"].items():
        if facet_head:
            d.text((pad, y0 + 6), label, fill=(0, 0, 0), font=load_font(16))
        yh = y0 + facet_head
        for c, cv in enumerate(cols):
            if lay["col_key"]:
                x = label_w + pad + c * (thumb + pad)
                d.text(
                    (x + 4, yh + 8),
                    _axis_label(lay["col_key"], cv, jobs),
                    fill=(0, 0, 0),
                    font=font,
                )
        for r, rv in enumerate(rows):
            y = yh + col_head + r * (thumb + pad)
            if lay["row_key"]:
                d.text(
                    (pad, y + thumb // 2 - 8),
                    _axis_label(lay["row_key"], rv, jobs),
                    fill=(0, 0, 0),
                    font=font,
                )
            for c, cv in enumerate(cols):
                job = cells.get((rv, cv))
                if job is not None:
                    x = label_w + pad + c * (thumb + pad)
                    sheet.paste(thumbnail(job, thumb), (x, y))
                    ab = job.alpha_beta()
                    if ab is not None and math.isfinite(ab) and thumb >= 96:  # cell says its α/β
                        tag = f"{AB}={ab:.1e}"
                        box = d.textbbox((0, 0), tag, font=small)
                        d.rectangle(
                            (x, y + thumb - box[3] - 6, x + box[2] + 6, y + thumb), fill="white"
                        )
                        d.text((x + 3, y + thumb - box[3] - 3), tag, fill=(0, 0, 0), font=small)
        y0 += block_h
    return sheet


CSV_LOSSES = ("total", "content", "style", "tv")
# The fixed evaluation (nst/evaluate.py): comparable across jobs of any settings.
CSV_EVAL = ("eval/content", "eval/style", "eval/ssim", "eval/color")


def summary_rows(jobs: list[Job], keys: list[str]) -> list[dict[str, Any]]:
    """One row per job: job number, status, swept values, overrides, α/β, final losses, time."""
    out = []
    for j in jobs:
        row: dict[str, Any] = {"job": j.num, "dir": j.dir.name, "status": j.status}
        row.update({k: j.overrides.get(k, "") for k in keys})
        row["overrides"] = ",".join(f"{k}={v}" for k, v in j.overrides.items())
        ab = j.alpha_beta()
        row["alpha_beta"] = "" if ab is None else f"{ab:.6g}"
        for name in CSV_LOSSES:
            v = j.final.get(name)
            row[f"final_{name}"] = "" if v is None else v
        for name in CSV_EVAL:
            v = j.final.get(name)
            row[name.replace("/", "_")] = "" if v is None else v
        row["steps"] = j.summary.get("steps", "")
        row["wall_s"] = round(j.summary["wall_s"], 2) if "wall_s" in j.summary else ""
        row["error"] = j.error
        out.append(row)
    return out


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (both minimized), in
    order of the first coordinate."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best = [], math.inf
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


def job_label(job: Job, keys: list[str]) -> str:
    """A job's name in plots: its α/β and the other swept values."""
    parts = []
    ab = job.alpha_beta()
    if ab is not None and math.isfinite(ab):
        parts.append(f"{AB}={ab:.3g}")
    # Every other swept value too (α and β both swept can give equal ratios).
    parts += [format_value(k, job.overrides.get(k)) for k in keys if k != "loss.ab_ratio"]
    return ", ".join(parts) or f"job {job.num}"


def svg_tradeoff(jobs: list[Job], keys: list[str], width: int = 560, height: int = 380) -> str:
    """Scatter of ``eval/style`` (y) against ``eval/content`` (x), log-log, one labelled point per
    finished job, the grid's Pareto front as a line. Empty string when no job has them."""
    pts = [
        (j, float(j.final["eval/content"]), float(j.final["eval/style"]))
        for j in jobs
        if j.status == "ok"
        and _positive(j.final.get("eval/content"))
        and _positive(j.final.get("eval/style"))
    ]
    pts = [(j, x, y) for j, x, y in pts if x > 0 and y > 0]
    if not pts:
        return ""
    left, right, top, bottom = 70, 20, 20, 50
    lx = [math.log10(x) for _, x, _ in pts]
    ly = [math.log10(y) for _, _, y in pts]
    x0, x1 = min(lx) - 0.1, max(lx) + 0.1
    y0, y1 = min(ly) - 0.1, max(ly) + 0.1

    def px(v: float) -> float:
        return left + (v - x0) / (x1 - x0) * (width - left - right)

    def py(v: float) -> float:
        return height - bottom - (v - y0) / (y1 - y0) * (height - top - bottom)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="11">',
        f'<rect x="{left}" y="{top}" width="{width - left - right}" '
        f'height="{height - top - bottom}" fill="white" stroke="#999"/>',
    ]
    for e in range(math.floor(x0), math.ceil(x1) + 1):  # decade ticks
        if x0 <= e <= x1:
            out.append(
                f'<line x1="{px(e):.1f}" y1="{height - bottom}" x2="{px(e):.1f}" '
                f'y2="{height - bottom + 5}" stroke="#666"/><text x="{px(e):.1f}" '
                f'y="{height - bottom + 17}" text-anchor="middle">1e{e}</text>'
            )
    for e in range(math.floor(y0), math.ceil(y1) + 1):
        if y0 <= e <= y1:
            out.append(
                f'<line x1="{left - 5}" y1="{py(e):.1f}" x2="{left}" y2="{py(e):.1f}" '
                f'stroke="#666"/><text x="{left - 8}" y="{py(e) + 4:.1f}" '
                f'text-anchor="end">1e{e}</text>'
            )
    out.append(
        f'<text x="{(left + width - right) / 2}" y="{height - 12}" text-anchor="middle">'
        "eval/content (relative feature error to the content, log) &#8594;</text>"
        f'<text transform="translate(16,{(top + height - bottom) / 2}) rotate(-90)" '
        'text-anchor="middle">eval/style (relative Gram error to the style, log) &#8594;</text>'
    )
    front = pareto_front([(x, y) for _, x, y in pts])
    if len(front) > 1:
        line = " ".join(f"{px(lx[i]):.1f},{py(ly[i]):.1f}" for i in front)
        out.append(f'<polyline points="{line}" fill="none" stroke="#c33" stroke-width="1.5"/>')
    for i, (j, _, _) in enumerate(pts):
        color = "#c33" if i in front else "#36c"
        out.append(
            f'<circle cx="{px(lx[i]):.1f}" cy="{py(ly[i]):.1f}" r="4" fill="{color}">'
            f"<title>job {j.num}</title></circle>"
            f'<text x="{px(lx[i]) + 6:.1f}" y="{py(ly[i]) - 6:.1f}">'
            f"{html.escape(job_label(j, keys))}</text>"
        )
    out.append(
        f'<text x="{width - right - 4}" y="{top + 14}" text-anchor="end" fill="#c33">'
        "&#8212; Pareto front (lower is better on both)</text></svg>"
    )
    return "".join(out)


CURVES = {"total": "#222", "content": "#1f77b4", "style": "#d62728"}


def _finite(v: Any) -> bool:
    """A number the curves can place (a damaged metrics.jsonl may hold anything: strings, NaN,
    Infinity, integers too large for a float)."""
    return isinstance(v, int | float) and -1e300 < v < 1e300


def _positive(v: Any) -> bool:
    """A loss the log-scale curves can show."""
    return _finite(v) and v > 0


def _svg_curves(job: Job, width: int = 300, height: int = 120) -> str:
    """The job's losses against steps, log scale: decade ticks on the y axis, the first and last
    step on the x axis, one colour per loss (the legend is above the table)."""
    rows = [r for r in job.metrics() if _positive(r.get("total")) and _finite(r.get("step"))]
    if len(rows) < 2:
        return "<em>no curve</em>"
    left, bottom, top, right = 34, 16, 4, 6
    steps = np.array([r["step"] for r in rows], float)
    vals_all = [np.log10(max(r[k], 1e-30)) for r in rows for k in CURVES if _positive(r.get(k))]
    lo, hi = min(vals_all), max(vals_all)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    span_x = max(steps.max() - steps.min(), 1)

    def px(s: float) -> float:
        return left + (s - steps.min()) / span_x * (width - left - right)

    def py(v: float) -> float:
        return height - bottom - (v - lo) / (hi - lo) * (height - top - bottom)

    out = [
        f'<rect x="{left}" y="{top}" width="{width - left - right}" '
        f'height="{height - top - bottom}" fill="#fafafa" stroke="#ccc"/>'
    ]
    for e in range(math.ceil(lo), math.floor(hi) + 1):
        out.append(
            f'<line x1="{left}" y1="{py(e):.1f}" x2="{width - right}" y2="{py(e):.1f}" '
            f'stroke="#e4e4e4"/><text x="{left - 3}" y="{py(e) + 3:.1f}" font-size="9" '
            f'text-anchor="end">1e{e}</text>'
        )
    for s_ in (steps.min(), steps.max()):
        out.append(
            f'<text x="{px(s_):.1f}" y="{height - 4}" font-size="9" text-anchor="middle">'
            f"{int(s_)}</text>"
        )
    for k, color in CURVES.items():
        pts = [(s_, r[k]) for s_, r in zip(steps, rows, strict=True) if _positive(r.get(k))]
        if len(pts) < 2:
            continue
        xy = " ".join(f"{px(s_):.1f},{py(np.log10(v)):.1f}" for s_, v in pts)
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{xy}"/>')
    return (
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'font-family="sans-serif">{"".join(out)}</svg>'
    )


def _legend() -> str:
    items = "".join(
        f'<span style="color:{c}">&#9644; {html.escape(k)}</span> ' for k, c in CURVES.items()
    )
    return f"<p>Loss curves (log scale, x: step): {items}</p>"


def _inputs_section(sweep_dir: Path, jobs: list[Job], keys: list[str]) -> str:
    """The sweep's inputs (thumbnails of the content and style files) and the settings every
    job shares, from the first finished job's summary."""
    done = next((j for j in jobs if j.status == "ok" and j.summary.get("config")), None)
    if done is None:
        return ""
    cfg, s = done.summary["config"], done.summary
    thumbs = []
    for what in ("content", "style"):
        paths = s[what].get("path") if isinstance(s.get(what), dict) else None
        for path in paths if isinstance(paths, list) else [paths]:
            if isinstance(path, str) and path and Path(path).is_file():
                try:
                    im = Image.open(path).convert("RGB")
                    im.thumbnail((160, 160))
                    thumbs.append(
                        f'<figure style="display:inline-block;margin:0 12px 0 0">'
                        f'<img src="{_data_uri(im, "JPEG")}"><figcaption>{what}: '
                        f"{html.escape(Path(path).name)}</figcaption></figure>"
                    )
                except OSError:
                    continue
    swept = {k.split(".")[0] for k in keys} | set(keys)
    shared = []
    for key in ("size", "steps", "backbone", "layers", "loss", "optimizer", "init", "seed"):
        if key in swept or key not in cfg:
            continue
        value = cfg[key]
        if isinstance(value, dict):
            value = ", ".join(
                f"{k}={v}"
                for k, v in value.items()
                if not isinstance(v, dict | list) and v is not None and f"{key}.{k}" not in swept
            )
        shared.append(f"<tr><th>{html.escape(key)}</th><td>{html.escape(str(value))}</td></tr>")
    return (
        "<h2>Inputs and shared settings</h2>"
        + "".join(thumbs)
        + f"<table>{''.join(shared)}</table>"
    )


def _data_uri(img: Image.Image, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


def html_report(sweep_dir: Path, jobs: list[Job], keys: list[str], sheet: Image.Image) -> str:
    """A single self-contained HTML page: contact sheet, one row per job with thumbnail, final
    losses and loss curves (log scale: total black, content blue, style red)."""
    rows = summary_rows(jobs, keys)
    head = "".join(
        f"<th>{html.escape(h)}</th>"
        for h in [
            "job",
            "status",
            *keys,
            "α/β",
            "total",
            "content",
            "style",
            "tv",
            "eval content",
            "eval style",
            "wall s",
            "result",
            "losses (log)",
        ]
    )
    body = []
    for j, r in zip(jobs, rows, strict=True):
        thumb = thumbnail(j, 128)
        cls = "" if j.status == "ok" else ' class="bad"'
        cells = [
            str(j.num),
            html.escape(j.status)
            + (f"<br><small>{html.escape(j.error)}</small>" if j.error else ""),
        ]
        cells += [html.escape(str(r[k])) for k in keys]
        cells += (
            [r["alpha_beta"]]
            + [_fmt(r[f"final_{n}"]) for n in CSV_LOSSES]
            + [_fmt(r["eval_content"]), _fmt(r["eval_style"]), str(r["wall_s"])]
        )
        image = f'<img src="{_data_uri(thumb, "JPEG")}" width="128">'
        rel = html.escape(j.dir.name, quote=True)
        if j.result is not None:  # relative links: the report opens from the sweep directory
            image = f'<a href="{rel}/result.png">{image}</a>'
        if (j.dir / "progress.gif").exists():
            image += f'<br><a href="{rel}/progress.gif">progress.gif</a>'
        image += _wandb_link(j)
        cells += [image, _svg_curves(j)]
        body.append(f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    n_bad = sum(j.status != "ok" for j in jobs)
    n_damaged = sum(j.status == DAMAGED for j in jobs)
    damaged = f" ({n_damaged} of them damaged: files unreadable)" if n_damaged else ""
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>nst sweep {html.escape(sweep_dir.name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 24px; color: #222; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ddd; padding: 4px 8px; vertical-align: middle; }}
th {{ background: #f3f3f3; }} tr.bad td {{ background: #fdecea; }} small {{ color: #900; }}
.wb {{ color: #555; font-size: smaller; }}
</style></head><body>
<h1>nst sweep: {html.escape(str(sweep_dir))}</h1>
<p>{len(jobs)} jobs, {len(jobs) - n_bad} finished, {n_bad} failed or unfinished{damaged}. Swept: {html.escape(", ".join(keys) or "nothing")}.</p>
{_inputs_section(sweep_dir, jobs, keys)}
<h2>Contact sheet</h2>
<img src="{_data_uri(sheet)}" style="max-width:100%">
{_tradeoff_section(jobs, keys)}
<h2>Jobs</h2>
{_legend()}
<table><tr>{head}</tr>
{"".join(body)}
</table></body></html>
"""


def _wandb_link(job: Job) -> str:
    """The job's W&B run (``logger=wandb``): a link online; offline, the command (run from the
    sweep directory) that uploads it."""
    rec = job.wandb()
    url = rec.get("url")
    if isinstance(url, str) and url.startswith(("https://", "http://")):
        return f'<br><a href="{html.escape(url, quote=True)}">W&amp;B</a>'
    sync = rec.get("sync_dir")
    if not isinstance(sync, str) or not sync:
        return ""
    path = Path(sync) if Path(sync).is_absolute() else Path(job.dir.name) / sync
    # Quoted for the shell: job directory names hold '=', ',' and brackets.
    arg = shlex.quote(str(path))
    # A resumed offline run has one directory per start: upload them all (the * unquoted).
    run_id = rec.get("id")
    if (
        isinstance(run_id, str)
        and re.fullmatch(r"[A-Za-z0-9_-]+", run_id)  # W&B's ids; anything else is no pattern
        and len(list((job.dir / "wandb").glob(f"offline-run-*-{run_id}"))) > 1
    ):
        stem = shlex.quote(str(Path(job.dir.name) / "wandb" / "offline-run-"))
        arg = f"{stem}*{shlex.quote(f'-{run_id}')}"
    return (
        f'<br><span class="wb">W&amp;B offline: <code>wandb sync {html.escape(arg)}</code></span>'
    )


def _tradeoff_section(jobs: list[Job], keys: list[str]) -> str:
    svg = svg_tradeoff(jobs, keys)
    if not svg:
        return ""
    return (
        "<h2>Trade-off</h2><p>Every job measured with the same yardstick (nst/evaluate.py: "
        "embedded VGG16, content relu4_2, style relu1_1&#8230;relu5_1): lower-left is better "
        "on both; red points are the grid's Pareto front.</p>" + svg
    )


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, int | float) else str(v)


def _run_dir_hint(d: Path) -> str:
    """Why ``d`` holds no jobs when it is a single run's directory (or one job's of a sweep)."""
    held = next((n for n in ("summary.json", "result.png", "error.json") if (d / n).exists()), None)
    if held is None:
        return ""
    if (d / ".hydra" / "overrides.yaml").exists() and (d.parent / "multirun.yaml").exists():
        return f"; it is one job of the sweep {d.parent}: nst-report {shlex.quote(str(d.parent))}"
    return (
        f"; it is a run directory (it holds {held} itself), not a sweep directory "
        "(the one nst -m writes, with a subdirectory per job)"
    )


def _read_sweep(sweep_dir: Path) -> list[Job]:
    """The sweep's jobs, or a one-line :class:`SweepDirError`."""
    try:
        is_dir = stat.S_ISDIR(sweep_dir.stat().st_mode)
    except (FileNotFoundError, NotADirectoryError):
        raise SweepDirError(f"no such directory: {sweep_dir}") from None
    except OSError as e:
        raise SweepDirError(f"cannot read {sweep_dir}: {e.strerror or one_line(e)}") from None
    if not is_dir:
        raise SweepDirError(f"not a directory: {sweep_dir}")
    try:
        jobs = find_jobs(sweep_dir)
    except OSError as e:
        raise SweepDirError(f"cannot read {sweep_dir}: {e.strerror or one_line(e)}") from None
    if not jobs:
        raise SweepDirError(
            f"{sweep_dir}: no job directories (with .hydra/overrides.yaml) found"
            + _run_dir_hint(sweep_dir)
        )
    return jobs


def _figure_config(sweep_dir: Path) -> dict[str, Any] | None:
    """The ``figure`` settings Hydra stored with the sweep's jobs (None if it has none), from the
    first job whose ``.hydra/config.yaml`` can be read: a damaged one is skipped."""
    for cfg_path in sorted(sweep_dir.glob(f"*/{HYDRA_CONFIG}")):
        try:
            cfg = load_yaml(cfg_path)
        except (OSError, Unreadable):
            continue
        fig = cfg.get("figure") or {}
        return fig if isinstance(fig, dict) and fig.get("name") else None
    return None


def build_report(sweep_dir: str | Path) -> dict[str, Any]:
    """Write ``contact_sheet.png``, ``report.html`` and ``summary.csv`` into ``sweep_dir``.

    Damaged jobs (unreadable files) are shown with status ``damaged`` and counted in
    ``failed``. A one-line :class:`~nst.errors.NstError` when there is nothing to report
    (:class:`SweepDirError`) or a file cannot be written (:class:`~nst.files.WriteError`)."""
    sweep_dir = Path(sweep_dir)
    jobs = _read_sweep(sweep_dir)
    keys = swept_keys(jobs)
    sheet = contact_sheet(jobs, keys)
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    atomic_write_bytes(sweep_dir / "contact_sheet.png", buf.getvalue())
    atomic_write_bytes(
        sweep_dir / "report.html", html_report(sweep_dir, jobs, keys, sheet).encode()
    )
    rows = summary_rows(jobs, keys)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(sweep_dir / "summary.csv", out.getvalue().encode())
    tradeoff = svg_tradeoff(jobs, keys)
    if tradeoff:
        atomic_write_bytes(sweep_dir / "tradeoff.svg", tradeoff.encode())
    failed = [j for j in jobs if j.status != "ok"]
    info = {
        "jobs": len(jobs),
        "failed": [j.dir.name for j in failed],
        "damaged": [j.dir.name for j in failed if j.status == DAMAGED],
        "keys": keys,
        "contact_sheet": str(sweep_dir / "contact_sheet.png"),
        "figure": None,
    }

    fig = _figure_config(sweep_dir)
    if fig is not None:
        try:
            build_figure(sweep_dir, fig)
            info["figure"] = str(sweep_dir / "figure.png")
        except NstError:
            raise  # an unwritable figure, said like the report's files
        except Exception as e:  # noqa: BLE001 - a bad figure must not cost the report
            print(
                f"nst: warning: figure not written ({type(e).__name__}: {one_line(e)})",
                file=sys.stderr,
            )
    return info


def main(argv: list[str] | None = None) -> int:
    """``nst-report SWEEP_DIR``: (re)build the report of a sweep directory. Exit 0 once the report
    is written, whatever its jobs' states (failed, unfinished and damaged ones are listed in one
    line on stderr); 2 with one line ``nst-report: error: ...`` when it cannot be."""
    p = argparse.ArgumentParser(
        prog="nst-report",
        description="Build the contact sheet, HTML report and CSV of an nst sweep.",
    )
    p.add_argument(
        "sweep_dir",
        type=Path,
        metavar="SWEEP_DIR",
        help=(
            "the directory an nst -m sweep wrote (its hydra.sweep.dir: "
            "outputs/multirun/DATE/TIME unless set), holding one subdirectory per job; "
            "required. contact_sheet.png, report.html and summary.csv (and tradeoff.svg, "
            "figure.png where they apply) are written into it, replacing earlier ones"
        ),
    )
    a = p.parse_args(argv)
    try:
        info = build_report(a.sweep_dir)
    except NstError as e:
        print(f"nst-report: error: {one_line(e)}", file=sys.stderr)
        return 2
    print(
        f"nst-report: {info['jobs']} jobs, swept {', '.join(info['keys']) or 'nothing'}; "
        f"wrote {a.sweep_dir}/contact_sheet.png, report.html, summary.csv"
        + (", figure.png" if info["figure"] else "")
    )
    if info["failed"]:
        names = [f"{n} (damaged)" if n in info["damaged"] else n for n in info["failed"]]
        print(f"nst-report: failed or unfinished: {', '.join(names)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())


try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - hydra is a dependency
    Callback = object  # type: ignore[misc,assignment]


class ReportCallback(Callback):
    """Hydra callback (nst/conf/config.yaml): rebuild the sweep report after every job, so it is
    current even when a later job fails or the sweep is interrupted, and once more at the end.

    At the end, failed (or damaged) jobs are listed and the sweep exits 1; a report that cannot be
    written (an unwritable sweep directory, a full disk) ends it with one line ``nst: error: ...``
    and exit 2; any other report problem is a warning line. After a job, a report problem is left
    for the end to say."""

    def on_job_end(self, config, job_return=None, **kwargs) -> None:
        from hydra.types import RunMode

        hc = config.hydra
        if hc.mode == RunMode.MULTIRUN:
            with contextlib.suppress(Exception):  # said once, by on_multirun_end
                build_report(hc.sweep.dir)

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = config.hydra.sweep.dir
        problem = self._build(sweep_dir)
        try:
            jobs = find_jobs(sweep_dir)
        except OSError:
            jobs = []
        failed = [j for j in jobs if j.status != "ok"]
        if failed:
            print(f"nst: {len(failed)} of {len(jobs)} jobs failed:", file=sys.stderr)
            for j in failed:
                print(f"  {j.dir.name}: {j.status}: {j.error}", file=sys.stderr)
        if problem:
            print(f"nst: error: sweep report not written: {problem}", file=sys.stderr)
            raise SystemExit(2)
        if failed:
            raise SystemExit(1)  # after every job ran and the report is written

    @staticmethod
    def _build(sweep_dir: str) -> str | None:
        """Build the report and say where it is; the problem, in one line, if it cannot be."""
        try:
            info = build_report(sweep_dir)
        except WriteError as e:  # the user's to fix: the sweep's outputs are not all there
            return one_line(e)
        except Exception as e:  # noqa: BLE001 - no jobs recorded, a bug: not the sweep's failure
            print(
                f"nst: warning: sweep report not written ({type(e).__name__}: {one_line(e)})",
                file=sys.stderr,
            )
            return None
        extra = f", {info['figure']}" if info["figure"] else ""
        print(
            f"nst: sweep report: {info['contact_sheet']}, {sweep_dir}/report.html, "
            f"{sweep_dir}/summary.csv{extra}"
        )
        return None
