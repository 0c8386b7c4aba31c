"""Download the images of Gatys, Ecker & Bethge (CVPR 2016) into a folder, verifying checksums.

    python scripts/fetch_paper_images.py                      # all free images, into the cache
    python scripts/fetch_paper_images.py --dest images --names tubingen,starry_night
    python scripts/fetch_paper_images.py --list               # what would be fetched, from where

Files already present are kept and not downloaded again. The Picasso (seated-nude.jpg) is not
public domain and is fetched only with --include-non-pd. Sources and licences: nst/paper_images.py.
"""

from __future__ import annotations

import argparse
import sys

from nst import paper_images
from nst.errors import NstError


def _split_names(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [n for v in values for n in v.split(",") if n.strip()]


def _print_list(names: list[str]) -> None:
    for e in (paper_images.MANIFEST[n] for n in names):
        sums = [
            f"{algo} {value}" for algo, value in (("md5", e.md5), ("sha256", e.sha256)) if value
        ]
        checksum = ", ".join(sums) or "no published checksum (not verified)"
        flag = "" if e.free else "  [not public domain: needs --include-non-pd]"
        print(f"{e.name}: {e.artist}, {e.title} ({e.year}); {e.license}{flag}")
        print(f"    {e.url}")
        print(f"    {checksum}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--dest",
        help="folder to download into (default: $NST_CACHE_DIR, $XDG_CACHE_HOME/nst or "
        "~/.cache/nst, plus /paper_images)",
    )
    p.add_argument(
        "--names",
        nargs="+",
        metavar="NAME",
        help=f"images to fetch, space- or comma-separated (default: all): "
        f"{', '.join(paper_images.NAMES)}",
    )
    p.add_argument(
        "--include-non-pd",
        action="store_true",
        help="also fetch images that are not free to copy (seated-nude.jpg, a Picasso)",
    )
    p.add_argument("--list", action="store_true", help="list the images and their sources; no I/O")
    p.add_argument(
        "--base-url", help="download each file from BASE_URL/NAME instead (a mirror; tests)"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="re-download files that are present but differ from the listed checksum",
    )
    p.add_argument("--timeout", type=float, default=30, help="seconds per request (default 30)")
    p.add_argument("--quiet", action="store_true", help="no per-image lines on stderr")
    a = p.parse_args(argv)

    try:
        names = paper_images.resolve_names(_split_names(a.names))
        if a.list:
            _print_list(names)
            return 0
        dest = a.dest if a.dest is not None else paper_images.default_images_dir()
        paths = paper_images.fetch(
            names,
            dest=dest,
            base_url=a.base_url,
            include_non_pd=a.include_non_pd,
            timeout=a.timeout,
            progress=not a.quiet,
            overwrite=a.overwrite,
        )
    except NstError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    skipped = [n for n in names if n not in paths]
    line = f"{len(paths)} paper image(s) in {dest}"
    if skipped:
        line += f"; skipped {', '.join(skipped)} (not public domain; --include-non-pd)"
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
