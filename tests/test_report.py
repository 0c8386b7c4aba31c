"""Sweep report (nst/report.py): fabricated job directories -> contact sheet, HTML and CSV.

Every finished job's result.png is a solid colour derived from its job number, so the contact
sheet can be checked cell by cell by sampling the centre of each expected thumbnail.
"""

from __future__ import annotations

import colorsys
import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nst import report
from nst.report import THUMB, build_report, contact_sheet, find_jobs, format_value, swept_keys

PAD, HEAD, LABEL_W = 8, 30, 190  # the geometry used by report.contact_sheet
RED = (200, 40, 40)  # outline of a failed / unfinished thumbnail
SMALL = 32  # thumbnail size for direct contact_sheet calls (fast)


def colour(num: int) -> tuple[int, int, int]:
    """A distinct, saturated colour per job number (never grey, white or the failure red)."""
    r, g, b = colorsys.hsv_to_rgb(((num * 5) % 24 + 0.5) / 24, 0.9, 0.85)
    return round(r * 255), round(g * 255), round(b * 255)


def make_job(
    sweep: Path,
    num: int,
    overrides: dict[str, str],
    *,
    status: str = "ok",
    error: str = "boom",
    alpha: float = 1.0,
    beta: float = 100.0,
    metrics: bool = True,
) -> Path:
    """A job directory as an ``nst -m`` run leaves it: ok (summary.json, result.png,
    metrics.jsonl), failed (error.json) or incomplete (neither)."""
    name = f"{num}_" + ",".join(f"{k}={v}" for k, v in overrides.items())
    d = sweep / name
    (d / ".hydra").mkdir(parents=True)
    items = [f"{k}={v}" for k, v in overrides.items()]
    (d / ".hydra" / "overrides.yaml").write_text(json.dumps(items))  # JSON is YAML
    if status == "ok":
        final = {"total": 10.0 + num, "content": 1.0 + num, "style": 2.0 + num, "tv": 0.5}
        summary = {
            "status": "ok",
            "steps": 10,
            "final": final,
            "wall_s": 1.234 + num,
            "config": {"loss": {"alpha": alpha, "beta": beta}},
        }
        (d / "summary.json").write_text(json.dumps(summary))
        Image.new("RGB", (24, 16), colour(num)).save(d / "result.png")
        if metrics:
            lines = [
                json.dumps(
                    {
                        "step": s,
                        "total": 100 / (s + 1),
                        "content": 10 / (s + 1),
                        "style": 90 / (s + 1),
                    }
                    | {"tv": 0.1}
                )
                for s in range(0, 10, 2)
            ]
            lines.append('{"step": 10, "tot')  # a line cut by a crash is skipped
            (d / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    elif status == "failed":
        (d / "error.json").write_text(
            json.dumps({"status": "failed", "error": error, "type": "ImageError"})
        )
        # no summary.json: alpha/beta comes from the saved Hydra config
        (d / ".hydra" / "config.yaml").write_text(
            json.dumps({"loss": {"alpha": alpha, "beta": beta}})
        )
    else:
        assert status == "incomplete"
    return d


def grid_sweep(
    sweep: Path, axes: list[tuple[str, list[str]]], const: dict | None = None
) -> dict[tuple[str, ...], int]:
    """One job per combination of ``axes`` (first axis slowest, like Hydra's basic sweeper);
    returns {values: job number}."""
    import itertools

    nums = {}
    for num, values in enumerate(itertools.product(*(v for _, v in axes))):
        ov = {k: v for (k, _), v in zip(axes, values, strict=True)} | (const or {})
        make_job(sweep, num, ov)
        nums[values] = num
    return nums


def geometry(lay: dict, keys: list[str], thumb: int):
    label_w = LABEL_W if lay["row_key"] else 0
    col_head = HEAD if lay["col_key"] else 0
    facet_head = HEAD if len(lay["facets"]) > 1 or keys[2:] else 0
    block_h = facet_head + col_head + len(lay["rows"]) * (thumb + PAD)
    return label_w, col_head, facet_head, block_h


def cell_centre(lay: dict, keys: list[str], r: int, c: int, f: int = 0, thumb: int = SMALL):
    label_w, col_head, facet_head, block_h = geometry(lay, keys, thumb)
    x = label_w + PAD + c * (thumb + PAD)
    y = PAD + f * block_h + facet_head + col_head + r * (thumb + PAD)
    return x + thumb // 2, y + thumb // 2


def cell_origin(lay: dict, keys: list[str], r: int, c: int, f: int = 0, thumb: int = SMALL):
    cx, cy = cell_centre(lay, keys, r, c, f, thumb)
    return cx - thumb // 2, cy - thumb // 2


def close(px, rgb, tol: int = 6) -> bool:
    return all(abs(int(a) - int(b)) <= tol for a, b in zip(px[:3], rgb, strict=True))


def sheet_of(sweep: Path, thumb: int = SMALL):
    jobs = find_jobs(sweep)
    keys = swept_keys(jobs)
    return jobs, keys, report.grid_layout(jobs, keys), contact_sheet(jobs, keys, thumb=thumb)


# --- swept keys, ordering, labels ----------------------------------------------------------


def test_swept_keys_only_differing_keys_in_command_line_order(tmp_path):
    common = {"size": "64", "progress": "false", "hydra.launcher.n_jobs": "2"}
    make_job(tmp_path, 0, {"loss.beta": "100", "size": "64", "layers": "a"} | common)
    make_job(tmp_path, 1, {"loss.beta": "1000", "size": "64", "layers": "b"} | common)
    make_job(tmp_path, 2, {"loss.beta": "100", "size": "64", "layers": "b", "+seed": "3"})
    jobs = find_jobs(tmp_path)
    assert [j.num for j in jobs] == [0, 1, 2]
    assert "seed" in jobs[2].overrides  # the +/~ prefix is stripped
    assert all(not k.startswith(("hydra.", "progress")) for j in jobs for k in j.overrides)
    # size is constant; seed is set in one job only, so it differs too
    assert swept_keys(jobs) == ["loss.beta", "layers", "seed"]
    assert swept_keys(jobs[:1]) == []  # a single job sweeps nothing


def test_jobs_ordered_by_number_not_name(tmp_path):
    for n in (10, 2, 1):
        make_job(tmp_path, n, {"loss.beta": str(n)})
    (tmp_path / "multirun.yaml").write_text("{}\n")  # files and non-job dirs are ignored
    (tmp_path / ".submitit").mkdir()
    assert [j.num for j in find_jobs(tmp_path)] == [1, 2, 10]


@pytest.mark.parametrize(
    ("key", "value", "text"),
    [
        ("loss.beta", "1000.0", "beta=1000"),
        ("loss.beta", "100", "beta=100"),
        ("loss.beta", "1e4", "beta=1e+04"),
        ("loss.beta", "100000", "beta=1e+05"),
        ("loss.beta", "2.5e4", "beta=2.5e+04"),  # not rounded to 2e+04
        ("loss.beta", "1.5e4", "beta=1.5e+04"),
        ("optim.lr", "0.0001", "lr=1e-04"),
        ("optim.lr", "0.02", "lr=0.02"),
        ("loss.tv_weight", "0", "tv_weight=0"),
        ("loss.alpha", "-2e-6", "alpha=-2e-06"),
        ("layers", "gatys2016", "layers=gatys2016"),
        ("seed", None, "seed=None"),
    ],
)
def test_format_value(key, value, text):
    assert format_value(key, value) == text


# --- contact sheet ---------------------------------------------------------------------------


def test_two_keys_grid_rows_sorted_numerically_each_cell_right_job(tmp_path):
    betas = ["1e4", "100.0", "20", "1000"]  # string order would be 100.0, 1000, 1e4, 20
    layers = ["b", "a"]
    nums = grid_sweep(tmp_path, [("loss.beta", betas), ("layers", layers)], {"size": "64"})
    jobs, keys, lay, sheet = sheet_of(tmp_path)
    assert keys == ["loss.beta", "layers"]
    assert lay["row_key"] == "loss.beta" and lay["col_key"] == "layers"
    assert lay["rows"] == ["20", "100.0", "1000", "1e4"]
    assert lay["cols"] == ["a", "b"]
    assert list(lay["facets"]) == [""]  # no facet key
    assert sheet.size == (
        LABEL_W + 2 * (SMALL + PAD) + PAD,
        HEAD + 4 * (SMALL + PAD) + PAD,
    )
    for r, beta in enumerate(lay["rows"]):
        for c, layer in enumerate(lay["cols"]):
            px = sheet.getpixel(cell_centre(lay, keys, r, c))
            assert close(px, colour(nums[(beta, layer)])), (beta, layer, px)
    # the row-label gutter and the column header hold no thumbnail
    assert sheet.getpixel((LABEL_W - 2, PAD + HEAD + SMALL // 2)) != colour(0)


def test_sheet_grows_with_rows_and_cols(tmp_path):
    sizes = {}
    for n_rows, n_cols in [(2, 2), (3, 2), (2, 3), (3, 3)]:
        sweep = tmp_path / f"{n_rows}x{n_cols}"
        rows = [str(10**i) for i in range(n_rows)]
        cols = [f"L{i}" for i in range(n_cols)]
        grid_sweep(sweep, [("loss.beta", rows), ("layers", cols)])
        jobs, keys, lay, sheet = sheet_of(sweep)
        assert (len(lay["rows"]), len(lay["cols"])) == (n_rows, n_cols)
        sizes[n_rows, n_cols] = sheet.size
    step = SMALL + PAD
    assert sizes[3, 2] == (sizes[2, 2][0], sizes[2, 2][1] + step)
    assert sizes[2, 3] == (sizes[2, 2][0] + step, sizes[2, 2][1])
    assert sizes[3, 3] == (sizes[2, 2][0] + step, sizes[2, 2][1] + step)


def test_missing_combination_leaves_cell_blank(tmp_path):
    make_job(tmp_path, 0, {"loss.beta": "100", "layers": "a"})
    make_job(tmp_path, 1, {"loss.beta": "100", "layers": "b"})
    make_job(tmp_path, 2, {"loss.beta": "1000", "layers": "a"})
    jobs, keys, lay, sheet = sheet_of(tmp_path)
    assert close(sheet.getpixel(cell_centre(lay, keys, 1, 0)), colour(2))
    assert sheet.getpixel(cell_centre(lay, keys, 1, 1)) == (255, 255, 255)


def test_one_key_single_column(tmp_path):
    nums = grid_sweep(tmp_path, [("loss.beta", ["1000", "10", "100"])], {"size": "64"})
    jobs, keys, lay, sheet = sheet_of(tmp_path)
    assert keys == ["loss.beta"]
    assert lay["col_key"] is None and lay["cols"] == [None]
    assert lay["rows"] == ["10", "100", "1000"]
    # no column header, one thumbnail column
    assert sheet.size == (LABEL_W + SMALL + 2 * PAD, 3 * (SMALL + PAD) + PAD)
    for r, beta in enumerate(lay["rows"]):
        assert close(sheet.getpixel(cell_centre(lay, keys, r, 0)), colour(nums[(beta,)]))


def test_no_swept_key_single_cell(tmp_path):
    make_job(tmp_path, 0, {"size": "64"})
    jobs, keys, lay, sheet = sheet_of(tmp_path)
    assert keys == []
    assert sheet.size == (SMALL + 2 * PAD, SMALL + 2 * PAD)
    assert close(sheet.getpixel((PAD + SMALL // 2, PAD + SMALL // 2)), colour(0))


def test_three_keys_facets(tmp_path):
    axes = [("loss.beta", ["100", "1000"]), ("layers", ["a", "b", "c"]), ("style", ["s1", "s2"])]
    nums = grid_sweep(tmp_path, axes, {"size": "64"})
    jobs, keys, lay, sheet = sheet_of(tmp_path)
    assert keys == ["loss.beta", "layers", "style"]
    assert list(lay["facets"]) == ["style=s1", "style=s2"]
    label_w, col_head, facet_head, block_h = geometry(lay, keys, SMALL)
    assert facet_head == HEAD
    assert block_h == 2 * HEAD + 2 * (SMALL + PAD)
    assert sheet.size == (LABEL_W + 3 * (SMALL + PAD) + PAD, 2 * block_h + PAD)
    for f, style in enumerate(["s1", "s2"]):
        for r, beta in enumerate(lay["rows"]):
            for c, layer in enumerate(lay["cols"]):
                px = sheet.getpixel(cell_centre(lay, keys, r, c, f))
                assert close(px, colour(nums[(beta, layer, style)])), (style, beta, layer)

    # one facet more -> one block taller, same width
    more = tmp_path / "more"
    axes[2] = ("style", ["s1", "s2", "s3"])
    grid_sweep(more, axes)
    *_, sheet3 = sheet_of(more)
    assert sheet3.size == (sheet.size[0], sheet.size[1] + block_h)


def test_facets_of_close_values_stay_apart(tmp_path):
    # 1.2e4 and 1.4e4 used to share the label "beta=1e+04", merging two facets into one
    # and dropping half of the jobs from the sheet.
    axes = [("layers", ["a", "b"]), ("size", ["32", "64"]), ("loss.beta", ["1.2e4", "1.4e4"])]
    nums = grid_sweep(tmp_path, axes)
    jobs, keys, lay, sheet = sheet_of(tmp_path)
    assert list(lay["facets"]) == ["beta=1.2e+04", "beta=1.4e+04"]
    assert sum(len(cells) for cells in lay["facets"].values()) == len(jobs) == 8
    for f, beta in enumerate(["1.2e4", "1.4e4"]):
        px = sheet.getpixel(cell_centre(lay, keys, 1, 1, f))
        assert close(px, colour(nums[("b", "64", beta)]))


# --- failed / incomplete jobs, CSV, HTML ---------------------------------------------------


@pytest.fixture
def mixed_sweep(tmp_path):
    """2x2 sweep over loss.beta x layers: job 1 failed, job 2 never finished."""
    sweep = tmp_path / "multirun" / "2024-01-01" / "12-00-00"
    msg = "content image <c.png> is not an image: cannot identify image file"
    make_job(sweep, 0, {"loss.beta": "100", "layers": "a", "size": "64"}, beta=100.0)
    make_job(
        sweep,
        1,
        {"loss.beta": "100", "layers": "b", "size": "64"},
        status="failed",
        error=msg,
        alpha=2.0,
        beta=100.0,
    )
    make_job(sweep, 2, {"loss.beta": "1000", "layers": "a", "size": "64"}, status="incomplete")
    make_job(
        sweep, 3, {"loss.beta": "1000", "layers": "b", "size": "64"}, beta=1000.0, metrics=False
    )
    return sweep, msg


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_failed_and_incomplete_jobs_in_sheet(mixed_sweep):
    sweep, msg = mixed_sweep
    info = build_report(sweep)
    assert info["jobs"] == 4
    assert info["keys"] == ["loss.beta", "layers"]
    assert info["failed"] == [p.name for p in sorted(sweep.iterdir()) if p.name[:2] in ("1_", "2_")]
    sheet = Image.open(info["contact_sheet"]).convert("RGB")
    jobs = find_jobs(sweep)
    assert [j.status for j in jobs] == ["ok", "failed", "incomplete", "ok"]
    assert jobs[1].error == msg
    keys, lay = info["keys"], report.grid_layout(jobs, info["keys"])
    label_w, col_head, facet_head, block_h = geometry(lay, keys, THUMB)
    assert sheet.size == (LABEL_W + 2 * (THUMB + PAD) + PAD, HEAD + 2 * (THUMB + PAD) + PAD)
    for (r, c), num in {(0, 0): 0, (0, 1): 1, (1, 0): 2, (1, 1): 3}.items():
        centre = cell_centre(lay, keys, r, c, thumb=THUMB)
        x0, y0 = cell_origin(lay, keys, r, c, thumb=THUMB)
        edge = sheet.getpixel((x0 + 1, y0 + THUMB // 2))
        if num in (0, 3):
            assert close(sheet.getpixel(centre), colour(num))
            assert close(edge, colour(num))
        else:  # FAILED / INCOMPLETE tile: red outline, not the job's colour, red text inside
            assert not close(sheet.getpixel(centre), colour(num))
            assert close(edge, RED, tol=10), edge
            tile = np.asarray(sheet.crop((x0 + 6, y0 + 6, x0 + THUMB - 6, y0 + THUMB - 6)))
            reddish = (tile[..., 0] > 150) & (tile[..., 1] < 120) & (tile[..., 2] < 120)
            assert reddish.sum() > 20  # the status word


def test_summary_csv(mixed_sweep):
    sweep, msg = mixed_sweep
    build_report(sweep)
    rows = read_csv(sweep / "summary.csv")
    assert len(rows) == 4
    assert list(rows[0])[:5] == ["job", "dir", "status", "loss.beta", "layers"]
    assert "size" not in rows[0]  # constant override: not a column ...
    assert "size=64" in rows[0]["overrides"]  # ... but kept in the overrides
    assert [r["job"] for r in rows] == ["0", "1", "2", "3"]
    assert [r["status"] for r in rows] == ["ok", "failed", "incomplete", "ok"]
    assert [(r["loss.beta"], r["layers"]) for r in rows] == [
        ("100", "a"),
        ("100", "b"),
        ("1000", "a"),
        ("1000", "b"),
    ]
    ok0, failed, incomplete, ok3 = rows
    assert float(ok0["alpha_beta"]) == pytest.approx(1 / 100)
    assert float(ok3["alpha_beta"]) == pytest.approx(1 / 1000)
    assert float(failed["alpha_beta"]) == pytest.approx(2 / 100)  # from .hydra/config.yaml
    assert incomplete["alpha_beta"] == ""
    assert [float(ok0[f"final_{k}"]) for k in ("total", "content", "style", "tv")] == [
        10.0,
        1.0,
        2.0,
        0.5,
    ]
    assert float(ok3["final_total"]) == 13.0
    assert ok0["steps"] == "10" and float(ok0["wall_s"]) == pytest.approx(1.23)
    assert failed["error"] == msg and failed["final_total"] == "" and failed["wall_s"] == ""
    assert ok0["error"] == incomplete["error"] == ""


def test_html_is_self_contained(mixed_sweep):
    sweep, msg = mixed_sweep
    build_report(sweep)
    page = (sweep / "report.html").read_text(encoding="utf-8")
    assert page.startswith("<!doctype html>")
    assert 'src="http' not in page and "http://" not in page and "https://" not in page
    assert "<link" not in page and "<script" not in page and "url(" not in page
    # Every picture is embedded; links only lead to the jobs' own files, relative to the sweep.
    srcs = re.findall(r'src="([^"]*)"', page)
    assert srcs and all(r.startswith("data:image/") for r in srcs)
    hrefs = re.findall(r'href="([^"]*)"', page)
    jobs = {p.name for p in sweep.iterdir() if p.is_dir()}
    assert all(h.split("/", 1)[0] in jobs and (sweep / h).exists() for h in hrefs), hrefs
    assert page.count("data:image/png;base64,") == 1  # the contact sheet
    assert page.count("data:image/jpeg;base64,") == 4  # a thumbnail per job
    assert page.count("<svg") == 1  # only job 0 has metrics
    assert page.count("<polyline") == 3  # total, content, style
    assert page.count("no curve") == 3
    # the error message, escaped, and the statuses
    assert "content image &lt;c.png&gt; is not an image" in page
    assert msg not in page
    assert "failed" in page and "incomplete" in page
    assert page.count('<tr class="bad">') == 2
    assert "4 jobs, 2 finished, 2 failed or unfinished" in page
    # the embedded contact sheet is the one written beside it
    import base64

    b64 = re.search(r'data:image/png;base64,([^"]+)"', page).group(1)
    assert base64.b64decode(b64) == (sweep / "contact_sheet.png").read_bytes()


def test_html_links_each_jobs_wandb_run(tmp_path):
    """wandb_run.json (logger=wandb): online jobs get a W&B link, offline ones the `wandb sync`
    command for their directory (all of a resumed run's), jobs without W&B nothing."""
    sweep = tmp_path / "sweep"
    grid_sweep(sweep, [("loss.beta", ["1", "10", "100", "1000", "1e4"])])
    dirs = sorted(sweep.iterdir(), key=lambda d: int(d.name.split("_")[0]))
    url = "https://wandb.ai/me/nst/runs/abc123"
    records = [
        {"id": "abc123", "mode": "online", "url": url, "sync_dir": None},
        {"id": "off1", "mode": "offline", "url": None, "sync_dir": "wandb/offline-run-1-off1"},
        {"id": "off2", "mode": "offline", "url": None, "sync_dir": "wandb/offline-run-2-off2"},
        {"id": "bad", "mode": "online", "url": "javascript:alert(1)", "sync_dir": None},
    ]
    for d, rec in zip(dirs, records, strict=False):
        (d / "wandb_run.json").write_text(json.dumps(rec))
    (dirs[2] / "wandb" / "offline-run-1-off2").mkdir(parents=True)  # started, then resumed
    (dirs[2] / "wandb" / "offline-run-2-off2").mkdir()
    build_report(sweep)
    page = (sweep / "report.html").read_text(encoding="utf-8")
    assert page.count(">W&amp;B</a>") == 1
    assert f'<a href="{url}">W&amp;B</a>' in page
    assert page.count("W&amp;B offline:") == 2
    assert f"<code>wandb sync {dirs[1].name}/wandb/offline-run-1-off1</code>" in page
    assert f"<code>wandb sync {dirs[2].name}/wandb/offline-run-*-off2</code>" in page
    assert "javascript:" not in page  # only web addresses become links
    assert [j.wandb() for j in find_jobs(sweep)] == [*records, {}]


# --- build_report / CLI ----------------------------------------------------------------------


def test_build_report_without_jobs(tmp_path):
    with pytest.raises(FileNotFoundError):
        build_report(tmp_path)
    (tmp_path / "not_a_job").mkdir()  # no .hydra/overrides.yaml
    (tmp_path / "multirun.yaml").write_text("{}\n")
    with pytest.raises(FileNotFoundError, match="no job directories"):
        build_report(tmp_path)
    assert not (tmp_path / "summary.csv").exists()


def test_main_exit_codes(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert report.main([str(empty)]) == 2
    assert "nst-report: error:" in capsys.readouterr().err
    assert report.main([str(tmp_path / "missing")]) == 2
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    assert report.main([str(afile)]) == 2
    capsys.readouterr()

    sweep = tmp_path / "sweep"
    grid_sweep(sweep, [("loss.beta", ["100", "1000"])])
    assert report.main([str(sweep)]) == 0
    out = capsys.readouterr()
    assert "2 jobs, swept loss.beta" in out.out and out.err == ""
    for name in ("contact_sheet.png", "report.html", "summary.csv"):
        assert (sweep / name).stat().st_size > 0
    assert not list(sweep.glob(".*.tmp"))  # atomic writes leave no temp files

    make_job(sweep, 2, {"loss.beta": "1e4"}, status="failed")
    assert report.main([str(sweep)]) == 0  # a failed job is reported, not an error
    assert "failed or unfinished: 2_loss.beta=1e4" in capsys.readouterr().err
    assert len(read_csv(sweep / "summary.csv")) == 3  # rebuilt in place


def test_console_script(tmp_path):
    exe = Path(sys.executable).with_name("nst-report")
    script = str(exe) if exe.exists() else shutil.which("nst-report")
    assert script, "nst-report console script is not installed (pip install -e .)"
    sweep = tmp_path / "sweep"
    grid_sweep(sweep, [("loss.beta", ["100", "1000"]), ("layers", ["a", "b"])])
    p = subprocess.run([script, str(sweep)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "4 jobs" in p.stdout
    for name in ("contact_sheet.png", "report.html", "summary.csv"):
        assert (sweep / name).is_file()
    assert len(read_csv(sweep / "summary.csv")) == 4
    p = subprocess.run([script, str(tmp_path / "nothing")], capture_output=True, text=True)
    assert p.returncode == 2 and "nst-report: error:" in p.stderr


# --- damaged jobs, bad sweep directories -------------------------------------------------------


def _truncate(path: Path, keep: int = 40) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def _as_dir(path: Path) -> None:
    path.unlink()
    path.mkdir()


# (what job 1 is, how its files are damaged, the start of its error in summary.csv)
DAMAGE = {
    "summary_truncated": (
        "ok",
        lambda d: (d / "summary.json").write_text('{"status": "o'),
        "summary.json unreadable (Unterminated string starting at: line 1 column 12",
    ),
    "summary_null": (
        "ok",
        lambda d: (d / "summary.json").write_text("null"),
        "summary.json unreadable (not a JSON object but null)",
    ),
    "summary_list": (
        "ok",
        lambda d: (d / "summary.json").write_text("[]"),
        "summary.json unreadable (not a JSON object but a list)",
    ),
    "summary_string": (
        "ok",
        lambda d: (d / "summary.json").write_text('"x"'),
        "summary.json unreadable (not a JSON object but a string)",
    ),
    "summary_status_int": (
        "ok",
        lambda d: (d / "summary.json").write_text('{"status": 5}'),
        'summary.json unreadable ("status" is a number, not a string)',
    ),
    "summary_final_string": (
        "ok",
        lambda d: (d / "summary.json").write_text('{"status": "ok", "final": {"total": "x"}}'),
        'summary.json unreadable ("final" holds a string for "total", not a number)',
    ),
    "summary_wall_s_string": (
        "ok",
        lambda d: (d / "summary.json").write_text('{"wall_s": "1 s"}'),
        'summary.json unreadable ("wall_s" is a string, not a number)',
    ),
    "summary_not_utf8": (
        "ok",
        lambda d: (d / "summary.json").write_bytes(b"\xff\xfe{}"),
        "summary.json unreadable (not UTF-8 text)",
    ),
    "summary_is_a_directory": (
        "ok",
        lambda d: _as_dir(d / "summary.json"),
        "summary.json unreadable (Is a directory)",
    ),
    "error_truncated": (
        "failed",
        lambda d: (d / "error.json").write_text('{"error": "bo'),
        "error.json unreadable (Unterminated string",
    ),
    "error_list": (
        "failed",
        lambda d: (d / "error.json").write_text("[1]"),
        "error.json unreadable (not a JSON object but a list)",
    ),
    "error_message_object": (
        "failed",
        lambda d: (d / "error.json").write_text('{"error": {"a": 1}}'),
        'error.json unreadable ("error" is an object, not a string)',
    ),
    "overrides_truncated": (
        "ok",
        lambda d: (d / ".hydra" / "overrides.yaml").write_text('["loss.beta=1000", "la'),
        ".hydra/overrides.yaml unreadable (found unexpected end of stream at line 1, column 23)",
    ),
    "overrides_mapping": (
        "ok",
        lambda d: (d / ".hydra" / "overrides.yaml").write_text("loss.beta: 1000\n"),
        ".hydra/overrides.yaml unreadable (not a list of key=value overrides)",
    ),
    "config_truncated": (  # a failed job's α/β comes from it: the job's own error follows
        "failed",
        lambda d: (d / ".hydra" / "config.yaml").write_text("loss: {alpha: ["),
        ".hydra/config.yaml unreadable (expected the node content, but found '<stream end>' at "
        "line 1, column 16); failed: boom",
    ),
    "result_truncated": (
        "ok",
        lambda d: _truncate(d / "result.png"),
        "result.png unreadable (not an image)",
    ),
    "result_cut_in_the_image_data": (
        "ok",
        lambda d: _truncate(d / "result.png", keep=60),
        "result.png unreadable (Truncated File Read)",
    ),
    "result_is_a_directory": (
        "ok",
        lambda d: _as_dir(d / "result.png"),
        "result.png unreadable (Is a directory)",
    ),
    "result_missing": ("ok", lambda d: (d / "result.png").unlink(), "result.png missing"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_job_is_shown_and_the_report_made(tmp_path, capsys, case):
    """A job whose files are truncated, of the wrong kind or wrongly typed: status "damaged" and
    why in the sheet, summary.csv and report.html; the other jobs as usual; exit 0 as for a failed
    job, the job listed in the one stderr line."""
    status, damage, error = DAMAGE[case]
    sweep = tmp_path / "sweep"
    make_job(sweep, 0, {"loss.beta": "100"})
    bad = make_job(sweep, 1, {"loss.beta": "1000"}, status=status)
    make_job(sweep, 2, {"loss.beta": "1e4"})
    damage(bad)

    assert report.main([str(sweep)]) == 0
    out = capsys.readouterr()
    assert out.err == f"nst-report: failed or unfinished: {bad.name} (damaged)\n"
    assert "Traceback" not in out.out and "3 jobs, swept loss.beta" in out.out

    rows = read_csv(sweep / "summary.csv")
    assert [r["status"] for r in rows] == ["ok", "damaged", "ok"]
    assert rows[1]["error"].startswith(error), rows[1]["error"]
    assert [r["loss.beta"] for r in rows] == [
        "100",
        "" if case.startswith("overrides") else "1000",
        "1e4",
    ]
    if case.startswith("summary"):  # nothing from a damaged summary
        assert rows[1]["final_total"] == rows[1]["wall_s"] == ""
    assert float(rows[2]["final_total"]) == 12.0  # the others as usual

    page = (sweep / "report.html").read_text(encoding="utf-8")
    assert page.count('<tr class="bad">') == 1
    assert "3 jobs, 2 finished, 1 failed or unfinished (1 of them damaged" in page
    assert html_escape(error) in page

    jobs, keys = find_jobs(sweep), ["loss.beta"]
    assert [j.status for j in jobs] == ["ok", "damaged", "ok"]
    lay = report.grid_layout(jobs, keys)
    sheet = Image.open(sweep / "contact_sheet.png").convert("RGB")
    ((_, cells),) = lay["facets"].items()
    for (rv, cv), job in cells.items():
        r, c = lay["rows"].index(rv), lay["cols"].index(cv)
        x0, y0 = cell_origin(lay, keys, r, c, thumb=THUMB)
        edge = sheet.getpixel((x0 + 1, y0 + THUMB // 2))
        if job.num == 1:  # a red-framed tile with the status word
            assert close(edge, RED, tol=10), edge
        else:
            assert close(sheet.getpixel(cell_centre(lay, keys, r, c, thumb=THUMB)), colour(job.num))


def html_escape(text: str) -> str:
    import html

    return html.escape(text)


def test_damaged_overrides_do_not_make_constant_keys_swept(tmp_path):
    """A job whose overrides are unreadable has none; the swept keys come from the others."""
    for n, beta in enumerate(("100", "1000", "1e4")):
        make_job(tmp_path, n, {"loss.beta": beta, "size": "64"})
    bad = next(tmp_path.glob("1_*"))
    (bad / ".hydra" / "overrides.yaml").write_text("[")
    jobs = find_jobs(tmp_path)
    assert jobs[1].overrides == {} and jobs[1].damaged == (".hydra/overrides.yaml",)
    assert swept_keys(jobs) == ["loss.beta"]  # not size, constant wherever it can be read


def test_garbage_in_other_job_files_is_skipped(tmp_path):
    """metrics.jsonl lines that are not JSON objects (or lack a step), a wandb_run.json with a
    strange id, a .hydra/config.yaml of a job whose summary has the config: the report is made,
    the job stays ok."""
    d = make_job(tmp_path, 0, {"loss.beta": "100"})
    make_job(tmp_path, 1, {"loss.beta": "1000"})
    rows = [{"step": s, "total": 10.0 / (s + 1), "content": 1.0, "style": 2.0} for s in (0, 5)]
    garbage = ["garbage", "[1, 2]", "null", '"x"', '{"step": "a", "total": 3}', '{"total": 3}']
    garbage += ['{"step": 1, "total": Infinity}', f'{{"step": 1{"0" * 400}, "total": 1}}']
    (d / "metrics.jsonl").write_text("\n".join([*garbage, *map(json.dumps, rows), "{"]) + "\n")
    (d / "wandb_run.json").write_text(json.dumps({"id": "a**[b", "sync_dir": "wandb/x"}))
    (d / ".hydra" / "config.yaml").write_text("loss: {alpha: [")  # not needed: not read
    summary = json.loads((d / "summary.json").read_text())
    summary["final"] |= {"eval/content": float("inf"), "eval/style": 1.0}  # not plottable
    (d / "summary.json").write_text(json.dumps(summary))
    info = build_report(tmp_path)
    assert info["failed"] == []
    job = find_jobs(tmp_path)[0]
    assert len(job.metrics()) == 6 and job.status == "ok"  # JSON objects; four unplottable
    assert job.alpha_beta() == pytest.approx(0.01)
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert page.count("<svg") == 2 and "wandb sync 0_loss.beta=100/wandb/x" in page
    (d / "metrics.jsonl").unlink()
    (d / "metrics.jsonl").mkdir()  # an unreadable file: no curve
    assert find_jobs(tmp_path)[0].metrics() == []


def test_figure_settings_skip_a_damaged_config(tmp_path):
    """The paper figure's settings come from the first .hydra/config.yaml that can be read."""
    for n in range(3):
        make_job(tmp_path, n, {"loss.beta": str(10**n)})
    dirs = sorted(tmp_path.iterdir())
    (dirs[0] / ".hydra" / "config.yaml").write_text("figure: {name: [")
    (dirs[1] / ".hydra" / "config.yaml").write_text("figure: {name: fig3, cols: loss.beta}\n")
    assert report._figure_config(tmp_path) == {"name": "fig3", "cols": "loss.beta"}
    (dirs[1] / ".hydra" / "config.yaml").write_text("figure: null\n")
    assert report._figure_config(tmp_path) is None


def test_unwritable_sweep_dir_is_one_line(tmp_path, capsys, monkeypatch):
    """A report that cannot be written ends with one line naming the file, exit 2."""
    import errno
    import tempfile

    sweep = tmp_path / "sweep"
    grid_sweep(sweep, [("loss.beta", ["100", "1000"])])
    (sweep / "summary.csv").mkdir()
    assert report.main([str(sweep)]) == 2
    out = capsys.readouterr()
    assert out.err == f"nst-report: error: cannot write {sweep}/summary.csv: Is a directory\n"
    (sweep / "summary.csv").rmdir()
    for name in ("contact_sheet.png", "report.html"):
        (sweep / name).unlink()

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)  # how a read-only mount answers
    assert report.main([str(sweep)]) == 2
    out = capsys.readouterr()
    assert out.err == (
        f"nst-report: error: cannot write {sweep}/contact_sheet.png: Read-only file system; "
        "choose a writable directory\n"
    )
    assert out.out == ""
    assert not [p for p in sweep.iterdir() if p.is_file()]


def test_sweep_dir_problems_are_one_line(tmp_path, capsys):
    """A missing path, a file, a run directory and one job's directory: one line each, exit 2."""
    missing = tmp_path / "missing"
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    run = tmp_path / "run"  # what `nst` (no -m) writes
    run.mkdir()
    (run / "summary.json").write_text("{}")
    Image.new("RGB", (4, 4)).save(run / "result.png")
    sweep = tmp_path / "sweep"
    job = make_job(sweep, 0, {"loss.beta": "100"})
    (sweep / "multirun.yaml").write_text("{}\n")
    expected = {
        missing: f"no such directory: {missing}",
        afile: f"not a directory: {afile}",
        tmp_path / "file.txt" / "x": f"no such directory: {afile}/x",
        run: f"{run}: no job directories (with .hydra/overrides.yaml) found; it is a run "
        "directory (it holds summary.json itself), not a sweep directory (the one nst -m "
        "writes, with a subdirectory per job)",
        job: f"{job}: no job directories (with .hydra/overrides.yaml) found; it is one job of "
        f"the sweep {sweep}: nst-report {sweep}",
    }
    for path, line in expected.items():
        assert report.main([str(path)]) == 2
        out = capsys.readouterr()
        assert out.err == f"nst-report: error: {line}\n" and out.out == ""
    assert not (run / "summary.csv").exists()


def test_help_describes_sweep_dir(capsys):
    with pytest.raises(SystemExit) as e:
        report.main(["--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "nst-report [-h] SWEEP_DIR" in text
    assert "SWEEP_DIR the directory an nst -m sweep wrote (its hydra.sweep.dir:" in text
    assert "outputs/multirun/DATE/TIME unless set), holding one subdirectory per job" in text
    assert "contact_sheet.png, report.html and summary.csv" in text and "written into it" in text


def test_escaped_override_values_are_shown_unescaped(tmp_path):
    """Hydra's escapes in sweep overrides (content=sample\\:chelsea,sample\\:coffee) are not part
    of the value: summary.csv, the HTML and the labels show sample:chelsea."""
    make_job(tmp_path, 0, {"content": "sample\\:chelsea", "loss.beta": "100"})
    make_job(tmp_path, 1, {"content": "sample\\:coffee", "loss.beta": "100"})
    make_job(tmp_path, 2, {"content": "'a\\:b'", "loss.beta": "100"})  # quoted: as written
    build_report(tmp_path)
    rows = read_csv(tmp_path / "summary.csv")
    assert [r["content"] for r in rows] == ["sample:chelsea", "sample:coffee", "'a\\:b'"]
    assert rows[0]["overrides"] == "content=sample:chelsea,loss.beta=100"
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "<td>sample:chelsea</td>" in page and "<td>sample\\:" not in page


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("sample\\:chelsea", "sample:chelsea"),
        ("a\\,b\\=c\\ d\\(e\\)\\[f\\]\\{g\\}", "a,b=c d(e)[f]{g}"),
        ("C:\\\\dir\\x", "C:\\dir\\x"),  # an escaped backslash; other backslashes stay
        ("'sample\\:chelsea'", "'sample\\:chelsea'"),
    ],
)
def test_unescape(raw, value):
    from nst.sweeps import unescape

    assert unescape(raw) == value


def _chromium() -> str | None:
    import shutil

    return next(
        (c for c in ("chromium", "chromium-browser", "google-chrome") if shutil.which(c)), None
    )


def test_report_renders_in_headless_chromium(tmp_path):
    """A 2x2 α × β report opened in a real browser: it renders (a screenshot with content), with
    no console errors; every cell of the sheet carries its α/β and the curves a legend."""
    import subprocess

    browser = _chromium()
    if browser is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    sweep = tmp_path / "sweep"
    n = 0
    for alpha in (1.0, 10.0):
        for beta in (100.0, 1000.0):
            over = {"loss.alpha": str(alpha), "loss.beta": str(beta)}
            make_job(sweep, n, over, alpha=alpha, beta=beta)
            n += 1
    build_report(sweep)
    page = (sweep / "report.html").read_text(encoding="utf-8")
    assert "Loss curves (log scale" in page and page.count("1e") > 4  # legend and decade ticks
    shot = tmp_path / "shot.png"
    p = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--enable-logging=stderr",
            "--v=0",
            f"--screenshot={shot}",
            "--window-size=1400,1800",
            (sweep / "report.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.exists(), p.stderr[-2000:]
    console = [x for x in p.stderr.splitlines() if "CONSOLE" in x]
    assert not console, console
    im = np.asarray(Image.open(shot).convert("L"))
    assert (im < 128).mean() > 0.01  # text and pictures, not a blank page
    sheet = Image.open(sweep / "contact_sheet.png")
    assert sheet.size[0] > 2 * 192  # full-size cells, which carry their α/β labels


def test_figure_settings_skip_fields_of_the_wrong_kind(tmp_path):
    """figure.json's settings come from the first summary; a hand-edited or damaged one with a
    string where a mapping belongs is left out, not a traceback."""
    from nst import figures
    from nst.sweeps import Job

    odd = {"backbone": "vgg16", "config": {"loss": 3, "size": 64}, "content": None}
    job = Job(dir=tmp_path, num=0, overrides={}, status="ok", summary=odd)
    settings = figures._settings([job])
    assert settings["size"] == 64 and settings["backbone"] is None and settings["content"] is None
    assert settings["gram_norm"] is None
