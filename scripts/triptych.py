"""Compose content | style | result of a run directory into one labelled strip (README pictures).

    python scripts/triptych.py outputs/runs/DATE/TIME docs/default.jpg

Reads the run's summary.json for the input paths, so it works for any `nst` run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from nst import images


def _first(path: str | list[str]) -> str:
    return path[0] if isinstance(path, list) else path  # a blend of styles: show the first


def triptych(run_dir: Path, height: int = 200) -> Image.Image:
    summary = json.loads((run_dir / "summary.json").read_text())
    panels = [
        ("content", images.load_image(summary["content"]["path"])),
        ("style", images.load_image(_first(summary["style"]["path"]))),
        ("result", images.load_image(run_dir / "result.png")),
    ]
    tiles = []
    for label, img in panels:
        h, w = img.shape[:2]
        tile = Image.fromarray(
            images.to_uint8(images.resize_to(img, (height, round(w * height / h))))
        )
        ImageDraw.Draw(tile).text(
            (6, 4), label, fill=(255, 255, 255), stroke_width=2, stroke_fill=(0, 0, 0)
        )
        tiles.append(tile)
    strip = Image.new("RGB", (sum(t.width for t in tiles) + 8 * (len(tiles) - 1), height), "white")
    x = 0
    for t in tiles:
        strip.paste(t, (x, 0))
        x += t.width + 8
    return strip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--height", type=int, default=200)
    a = p.parse_args()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    triptych(a.run_dir, a.height).save(a.out, quality=90)
    print(a.out, np.asarray(Image.open(a.out)).shape)


if __name__ == "__main__":
    main()
