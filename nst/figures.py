"""Labelled composites for the paper-figure experiments (``figure.png`` in the sweep directory).

An experiment's ``figure`` config names the swept key for rows and/or columns, the labels of their
values, and leading panels (the content and/or style image). The composite is built from the
jobs on disk (see :mod:`nst.report`), so it can be rebuilt at any time with
``nst-report SWEEP_DIR``. ``figure.json`` beside it records the panels and the settings used.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from nst import images
from nst.files import atomic_write_bytes, atomic_write_json
from nst.sweeps import Job, find_jobs, format_value, load_font, sort_values, thumbnail, wrap_text

PANEL = 224
PAD = 10
LABEL_H = 40


def _label(key: str, value: str | None, labels: Mapping[str, str]) -> str:
    if value is None:
        return ""
    if value in labels:
        return labels[value]
    compact = value.replace(" ", "")
    return labels.get(compact, format_value(key.lstrip("+"), value))


def _image_panel(path: str, size: int) -> Image.Image:
    img = images.load_image(path)
    h, w = img.shape[:2]
    s = size / max(h, w)
    tile = Image.new("RGB", (size, size), "white")
    small = Image.fromarray(
        images.to_uint8(images.resize_to(img, (max(1, round(h * s)), max(1, round(w * s)))))
    )
    tile.paste(small, ((size - small.width) // 2, (size - small.height) // 2))
    return tile


def _settings(jobs: list[Job]) -> dict[str, Any]:
    """The shared settings figure.json records, from the first job with a summary; a field of
    the wrong kind (a damaged or hand-edited summary) is left out, never a traceback."""
    ok = [j for j in jobs if j.summary]
    if not ok:
        return {}
    s = ok[0].summary

    def part(d: Any, key: str) -> dict[str, Any]:
        v = d.get(key) if isinstance(d, dict) else None
        return v if isinstance(v, dict) else {}

    cfg = part(s, "config")
    return {
        "backbone": part(s, "backbone").get("arch"),
        "weights": part(s, "backbone").get("source"),
        "pooling": part(s, "backbone").get("pooling"),
        "size": cfg.get("size"),
        "steps": cfg.get("steps"),
        "optimizer": part(cfg, "optimizer").get("name"),
        "init": part(cfg, "init").get("name"),
        "gram_norm": part(cfg, "loss").get("gram_norm"),
        "ab_scale": part(cfg, "loss").get("ab_scale"),
        "content": part(s, "content").get("path"),
        "style": part(s, "style").get("path"),
    }


def build_figure(sweep_dir: str | Path, figure: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``figure.png`` and ``figure.json`` for the sweep in ``sweep_dir``.

    ``figure``: ``name``, ``title``, ``caption``, ``rows``/``cols`` (swept override keys),
    ``labels`` (override value -> label), ``lead`` (``content``/``style`` panels first)."""
    sweep_dir = Path(sweep_dir)
    jobs = find_jobs(sweep_dir)
    if not jobs:
        raise FileNotFoundError(f"{sweep_dir}: no job directories found")
    labels = dict(figure.get("labels") or {})
    row_key = figure.get("rows") or None
    col_key = figure.get("cols") or None

    def value(job: Job, key: str | None) -> str | None:
        if key is None:
            return None
        return job.overrides.get(key.lstrip("+"))

    rows = sort_values({value(j, row_key) for j in jobs}) if row_key else [None]
    cols = [value(j, col_key) for j in jobs] if col_key else [None]
    cols = list(dict.fromkeys(cols)) if not row_key else sort_values(set(cols))
    cells = {(value(j, row_key), value(j, col_key)): j for j in jobs}

    settings = _settings(jobs)
    lead = [p for p in (figure.get("lead") or []) if settings.get(p)]
    n_cols = len(lead) + len(cols)
    row_label_w = 150 if row_key else 0
    title_h = 44
    caption = (figure.get("caption") or "").strip()
    backbone_note = (
        # The images actually used: experiments name the paper's, users may override them.
        f"Content {Path(str(settings.get('content'))).name}, style "
        f"{Path(str(settings.get('style'))).name}. "
        f"Backbone: {settings.get('backbone')} ({settings.get('weights')} weights, "
        f"{settings.get('pooling')} pooling); {settings.get('size')} px, {settings.get('steps')} "
        f"{settings.get('optimizer')} steps, init {settings.get('init')}."
        if settings
        else ""
    )
    foot_lines = (
        wrap_text(f"{caption} {backbone_note}".strip(), max(40, n_cols * PANEL // 8)).count("\n")
        + 1
    )
    foot_h = 18 * foot_lines + PAD * 2
    width = row_label_w + n_cols * (PANEL + PAD) + PAD
    height = title_h + len(rows) * (PANEL + LABEL_H + PAD) + foot_h
    fig = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(fig)
    d.text(
        (PAD, 12),
        figure.get("title") or figure.get("name") or "",
        fill=(0, 0, 0),
        font=load_font(18),
    )

    panels = []
    for r, rv in enumerate(rows):
        y = title_h + r * (PANEL + LABEL_H + PAD)
        if row_key:
            d.text(
                (PAD, y + PANEL // 2 - 8),
                _label(row_key, rv, labels),
                fill=(0, 0, 0),
                font=load_font(14),
            )
        x = row_label_w + PAD
        for p in lead:
            fig.paste(_image_panel(settings[p], PANEL), (x, y))
            d.text((x, y + PANEL + 6), p, fill=(0, 0, 0), font=load_font(13))
            panels.append({"label": p, "kind": p, "row": r})
            x += PANEL + PAD
        for cv in cols:
            job = cells.get((rv, cv))
            if job is not None:
                fig.paste(thumbnail(job, PANEL, background=(255, 255, 255)), (x, y))
                text = _label(col_key, cv, labels) if col_key else ""
                d.multiline_text(
                    (x, y + PANEL + 4),
                    wrap_text(text, PANEL // 8),
                    fill=(0, 0, 0),
                    font=load_font(13),
                    spacing=2,
                )
                panels.append(
                    {
                        "label": text,
                        "row_label": _label(row_key, rv, labels) if row_key else None,
                        "job": job.dir.name,
                        "status": job.status,
                        "overrides": job.overrides,
                    }
                )
            x += PANEL + PAD
    d.multiline_text(
        (PAD, height - foot_h + PAD),
        wrap_text(f"{caption} {backbone_note}".strip(), max(40, n_cols * PANEL // 8)),
        fill=(60, 60, 60),
        font=load_font(13),
        spacing=4,
    )
    buf = io.BytesIO()
    fig.save(buf, format="PNG")
    atomic_write_bytes(sweep_dir / "figure.png", buf.getvalue())
    record = {
        "name": figure.get("name"),
        "title": figure.get("title"),
        "caption": caption,
        "rows": row_key,
        "cols": col_key,
        "panels": panels,
        "settings": settings,
        "failed": [j.dir.name for j in jobs if j.status != "ok"],
    }
    atomic_write_json(sweep_dir / "figure.json", record)
    return record
