#!/usr/bin/env python
"""README gallery of the beyond-the-paper options, from scikit-image's bundled samples.

    python scripts/beyond_gallery.py docs/beyond.jpg [--size 192 --steps 200]

Runs `nst` once per option (cat photo x immunohistochemistry texture unless the option names
other images) into outputs/gallery/<name>/ and writes one labelled strip with the results.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from nst import images

VARIANTS: dict[str, list[str]] = {
    "default": [],
    "color=luminance": ["color=luminance"],
    "color=histogram": ["color=histogram"],
    "blend ihc + hubble 0.5/0.5": [
        "style=[sample:ihc,sample:hubble_deep_field]",
        "style_blend=[0.5,0.5]",
    ],
    "style_scale=0.5": ["style_scale=0.5"],
    "loss.style=mean_cov": ["loss.style=mean_cov", "loss.beta=10"],
    "pyramid.levels=2": ["pyramid.levels=2"],
    "backbone.normalized=true": ["backbone.normalized=true", "loss.beta=1e5"],
    "content_mask: ihc | hubble": [
        "content_mask=outputs/gallery/half_mask.png",
        "style=[sample:ihc,sample:hubble_deep_field]",
    ],
}


def half_mask(path: Path) -> None:
    """Left half dark, right half bright, the size of the default content (sample:chelsea)."""
    h, w = images.load_image("sample:chelsea").shape[:2]
    m = np.zeros((h, w), np.uint8)
    m[:, w // 2 :] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(m).save(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--size", type=int, default=192)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--height", type=int, default=160)
    a = p.parse_args()
    half_mask(Path("outputs/gallery/half_mask.png"))
    tiles = []
    for label, overrides in VARIANTS.items():
        run_dir = Path("outputs/gallery") / label.split()[0].replace("=", "_").rstrip(":")
        if not (run_dir / "result.png").exists():
            cmd = [sys.executable, "-m", "nst.app", f"size={a.size}", f"steps={a.steps}"]
            cmd += ["progress=false", f"hydra.run.dir={run_dir}", *overrides]
            print(" ".join(["nst", *cmd[3:]]), flush=True)
            subprocess.run(cmd, check=True)
        img = images.load_image(run_dir / "result.png")
        h, w = img.shape[:2]
        tile = Image.fromarray(
            images.to_uint8(images.resize_to(img, (a.height, round(w * a.height / h))))
        )
        ImageDraw.Draw(tile).text(
            (5, 4), label, fill=(255, 255, 255), stroke_width=2, stroke_fill=(0, 0, 0)
        )
        tiles.append(tile)
    cols = 3
    rows = -(-len(tiles) // cols)
    tw, th = max(t.width for t in tiles), a.height
    sheet = Image.new("RGB", (cols * tw + (cols - 1) * 6, rows * th + (rows - 1) * 6), "white")
    for i, t in enumerate(tiles):
        sheet.paste(t, ((i % cols) * (tw + 6), (i // cols) * (th + 6)))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(a.out, quality=85)
    print(a.out, sheet.size)


if __name__ == "__main__":
    main()
