"""The images of Gatys, Ecker & Bethge (CVPR 2016): where to download them and how to check them.

:data:`MANIFEST` maps each local file name to its public source URL, checksum (where one is
published), title, artist, year and licence. :func:`fetch` downloads the missing ones into a
folder (by default :func:`default_images_dir`), verifying each against its checksum and writing it
atomically; ``python -m nst.paper_images`` (:func:`main`) is its command line. Nothing here is needed to run
``nst``: any image file works as content or style.

Provenance of the URLs and MD5s (facts taken from other projects, each named per entry):

* pystiche_papers (``pystiche/papers``, ``pystiche_papers/gatys_ecker_bethge_2015/_data.py``, the
  image list its Gatys et al. replications use) and pystiche (``pystiche/pystiche``,
  ``images/download_images.py``) list Wikimedia URLs with the MD5 of the file each served.
* The Great Wave's Commons URL is the one TensorFlow's style-transfer tutorial and many other
  projects download; no project we found publishes its checksum, so it is not verified.

The checksums are the ones the named projects list (not re-verified against a fresh download). A
file on Wikimedia can be replaced by a new upload, and ``/thumb/`` URLs are re-rendered by
Wikimedia from time to time, either of which changes its bytes; :func:`fetch` then refuses the
file with a message naming the expected and actual checksum. ``None`` means "not known": such files
are only checked to be decodable images. No SHA-256 has been published for any of them; the one
given for ``tubingen.jpg`` was computed from a copy whose MD5 equals pystiche's.

Copies of these images found elsewhere are often *not* the Commons files: the widely shared
``starry_night.jpg`` and ``the_scream.jpg`` of jcjohnson/fast-neural-style ``images/styles/`` (MD5s
as listed by pystiche_papers' ``ulyanov_et_al_2016`` images) and ``seated-nude.jpg`` of
jcjohnson/neural-style ``examples/inputs/`` (MD5 as listed by pystiche_papers' ``li_et_al_2017``
images) differ from the files listed here (their checksums do not match). Files already in a
folder are kept as they are (see ``overwrite`` in :func:`fetch`).
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from nst import __version__, files
from nst.errors import ImageError, NstError, one_line
from nst.files import atomic_write_bytes

SCRIPT = "-m nst.paper_images"  # works from an installed package too
SUBDIR = "paper_images"
# Wikimedia refuses requests without a descriptive User-Agent (its User-Agent policy).
USER_AGENT = f"nst/{__version__} (neural style transfer reproduction; Python urllib)"
# The largest download accepted; the Commons originals listed here are a few MB each.
MAX_BYTES = 200 * 1024 * 1024


@dataclass(frozen=True)
class PaperImage:
    """One image of the paper: its local file name, source and licence.

    ``public_domain`` is whether the work is in the public domain; ``free`` whether it may be
    copied at all without permission (public domain, or a free licence such as CC BY).
    :func:`fetch` downloads entries with ``free=False`` only when asked to explicitly.
    """

    name: str
    url: str
    md5: str | None
    sha256: str | None
    title: str
    artist: str
    year: str
    license: str
    public_domain: bool
    free: bool
    source: str
    note: str = ""


_COMMONS = "https://upload.wikimedia.org/wikipedia/commons"
_PYSTICHE_PAPERS = "pystiche/papers pystiche_papers/gatys_ecker_bethge_2015/_data.py"
_PYSTICHE = "pystiche/pystiche images/download_images.py"

MANIFEST: dict[str, PaperImage] = {
    e.name: e
    for e in (
        PaperImage(
            name="tubingen.jpg",
            url=f"{_COMMONS}/0/00/Tuebingen_Neckarfront.jpg",
            md5="dc9ad203263f34352e18bc29b03e1066",
            sha256="e67d1869f01fd805385c681a80d9ebcf0f70ea4a5fe6127f0606bb1c7f4bf506",
            title="Tübingen, Neckarfront",
            artist="Andreas Praefcke",
            year="2003",
            license="CC BY 3.0 (photograph by Andreas Praefcke; attribution required)",
            public_domain=False,
            free=True,
            source=f"URL and MD5: {_PYSTICHE_PAPERS}; {_PYSTICHE}",
            note="the paper's content photograph",
        ),
        PaperImage(
            name="shipwreck.jpg",
            url=f"{_COMMONS}/2/2e/Shipwreck_turner.jpg",
            md5="b7a51f010b591a01a6769161d1219739",
            sha256=None,
            title="The Shipwreck of the Minotaur",
            artist="J. M. W. Turner",
            year="c. 1805-1810",
            license="public domain (artist died 1851)",
            public_domain=True,
            free=True,
            source=f"URL and MD5: {_PYSTICHE}",
            note="pystiche_papers downloads an 800 px copy from a non-Wikimedia mirror instead",
        ),
        PaperImage(
            name="starry_night.jpg",
            url=(
                f"{_COMMONS}/thumb/e/ea/Van_Gogh_-_Starry_Night_-_Google_Art_Project.jpg/"
                "1280px-Van_Gogh_-_Starry_Night_-_Google_Art_Project.jpg"
            ),
            md5="372e5bc438e3e8d0eb52cc6f7ef44760",
            sha256=None,
            title="The Starry Night",
            artist="Vincent van Gogh",
            year="1889",
            license="public domain (artist died 1890)",
            public_domain=True,
            free=True,
            source=f"URL and MD5: {_PYSTICHE_PAPERS}",
            note="a 1280 px Wikimedia thumbnail of the Google Art Project scan (the original is "
            "very large); Wikimedia may re-render thumbnails, which changes the MD5",
        ),
        PaperImage(
            name="the_scream.jpg",
            url=f"{_COMMONS}/f/f4/The_Scream.jpg",
            md5="46ef64eea5a7b2d13dbadd420b531249",
            sha256=None,
            title="The Scream (Der Schrei der Natur)",
            artist="Edvard Munch",
            year="1893",
            license="public domain (artist died 1944)",
            public_domain=True,
            free=True,
            source=f"URL and MD5: {_PYSTICHE_PAPERS}; {_PYSTICHE}",
        ),
        PaperImage(
            name="seated-nude.jpg",
            url=(
                "https://upload.wikimedia.org/wikipedia/en/8/8f/Pablo_Picasso%2C_1909-10%2C_"
                "Figure_dans_un_Fauteuil_%28Seated_Nude%2C_Femme_nue_assise%29%2C_oil_on_canvas"
                "%2C_92.1_x_73_cm%2C_Tate_Modern%2C_London.jpg"
            ),
            md5="ba14b947b225d9e5c59520a814376944",
            sha256=None,
            title="Femme nue assise (Figure dans un fauteuil)",
            artist="Pablo Picasso",
            year="1909-1910",
            license="likely still under copyright outside the US (artist died 1973)",
            public_domain=False,
            free=False,
            source=f"URL and MD5: {_PYSTICHE_PAPERS}; {_PYSTICHE}",
            note="hosted on English Wikipedia, not Commons, because it is not public domain "
            "in its country of origin; fetched only with --include-non-pd",
        ),
        PaperImage(
            name="composition_vii.jpg",
            url=f"{_COMMONS}/b/b4/Vassily_Kandinsky%2C_1913_-_Composition_7.jpg",
            md5="bfcbc420684bf27d2d8581fa8cc9522f",
            sha256=None,
            title="Composition VII",
            artist="Wassily Kandinsky",
            year="1913",
            license="public domain (artist died 1944)",
            public_domain=True,
            free=True,
            source=f"URL and MD5: {_PYSTICHE_PAPERS}; {_PYSTICHE}",
        ),
        PaperImage(
            name="great_wave.jpg",
            url=f"{_COMMONS}/0/0a/The_Great_Wave_off_Kanagawa.jpg",
            md5=None,
            sha256=None,
            title="The Great Wave off Kanagawa",
            artist="Katsushika Hokusai",
            year="c. 1831",
            license="public domain (artist died 1849)",
            public_domain=True,
            free=True,
            source="URL: TensorFlow's style-transfer tutorial and others; no published checksum",
        ),
    )
}
NAMES: tuple[str, ...] = tuple(MANIFEST)


# --- Locations and names. -------------------------------------------------------------------


def default_images_dir() -> Path:
    """``<cache>/paper_images`` (:func:`nst.files.cache_dir`). The ``paper_images`` folder
    itself is created only by :func:`fetch`."""
    try:
        root = files.cache_dir()
    except NstError as err:
        raise ImageError(f"{err}; or choose the images folder with --dest DIR") from err
    return root / SUBDIR


def resolve_names(names: Iterable[str] | None = None) -> list[str]:
    """Manifest names for ``names`` (all when None), in manifest order, without duplicates.

    Each may be given with or without ``.jpg``; unknown names raise ImageError listing the valid
    ones.
    """
    if names is None:
        return list(NAMES)
    wanted = set()
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        key = name if name in MANIFEST else f"{name}.jpg"
        if key not in MANIFEST:
            raise ImageError(f"unknown paper image {name!r}; valid: {', '.join(NAMES)}")
        wanted.add(key)
    return [n for n in NAMES if n in wanted]


def missing_images_message(images_dir: str | os.PathLike[str], names: Iterable[str]) -> str:
    """One line telling the user how to get ``names`` into ``images_dir``."""
    names = list(names)
    include = [n for n in names if n in MANIFEST and not MANIFEST[n].free]
    cmd = f"python {SCRIPT} --dest {images_dir}"
    if set(names) != set(NAMES):
        cmd += f" --names {','.join(names)}"
    if include:
        cmd += " --include-non-pd"
    return (
        f"paper image(s) {', '.join(names)} not found in {images_dir}; "
        f"download them with `{cmd}` or pass images_dir=DIR (a folder that has them)"
    )


def require_images(
    images_dir: str | os.PathLike[str] | None = None, names: Iterable[str] | None = None
) -> dict[str, Path]:
    """Paths of ``names`` (all when None) in ``images_dir`` (default: :func:`default_images_dir`).

    Raises ImageError with :func:`missing_images_message` when any is absent. Present files are not
    checksummed (other versions of the same artwork are fine as inputs).
    """
    folder = Path(images_dir).expanduser() if images_dir is not None else default_images_dir()
    wanted = resolve_names(names)
    absent = [n for n in wanted if not (folder / n).is_file()]
    if absent:
        raise ImageError(missing_images_message(folder, absent))
    return {n: folder / n for n in wanted}


# --- Verification and download. -------------------------------------------------------------


def _digests(data: bytes) -> dict[str, str]:
    return {
        "md5": hashlib.md5(data, usedforsecurity=False).hexdigest(),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def checksum_mismatch(entry: PaperImage, data: bytes) -> str | None:
    """``"MD5 is X, expected Y"`` for the first manifest checksum ``data`` fails, else None."""
    actual = _digests(data)
    for algo, expected in (("sha256", entry.sha256), ("md5", entry.md5)):
        if expected is not None and actual[algo] != expected.lower():
            return f"{algo.upper().replace('SHA', 'SHA-')} is {actual[algo]}, expected {expected}"
    return None


def has_checksum(entry: PaperImage) -> bool:
    return entry.md5 is not None or entry.sha256 is not None


def _url_for(entry: PaperImage, base_url: str | None) -> str:
    return entry.url if base_url is None else f"{base_url.rstrip('/')}/{entry.name}"


class _Unreachable(ImageError):
    """The server could not be reached or the transfer broke off; later downloads would too."""


def _download_bytes(url: str, timeout: float) -> bytes:
    """The body of ``url``; raises ImageError (one line) on any network or HTTP failure."""
    buf = io.BytesIO()
    try:
        files.download(url, buf.write, timeout=timeout, user_agent=USER_AGENT, max_bytes=MAX_BYTES)
    except files.DownloadError as err:
        raise (_Unreachable if err.unreachable else ImageError)(str(err)) from err
    return buf.getvalue()


def _check_decodes(data: bytes) -> str | None:
    from PIL import Image  # deferred: --list and already-present files never need it

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
    except Exception as err:  # PIL raises many unrelated types for undecodable data
        return one_line(err) or type(err).__name__
    return None


def _download_one(entry: PaperImage, url: str, dest: Path, timeout: float) -> str:
    """Download, verify and atomically write one image; returns a short description."""
    data = _download_bytes(url, timeout)
    problem = checksum_mismatch(entry, data)
    if problem is not None:
        raise ImageError(f"{entry.name}: downloaded {url} but its {problem}; discarded it")
    problem = _check_decodes(data)
    if problem is not None:
        raise ImageError(f"{entry.name}: {url} did not return a readable image ({problem})")
    atomic_write_bytes(dest, data)
    checked = "checksum verified" if has_checksum(entry) else "no checksum to verify"
    return f"downloaded {len(data):,} bytes ({checked})"


def fetch(
    names: Iterable[str] | None = None,
    dest: str | os.PathLike[str] | None = None,
    base_url: str | None = None,
    include_non_pd: bool = False,
    timeout: float = 30,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Make the paper images ``names`` (all when None) available in ``dest``; return their paths.

    ``dest`` defaults to :func:`default_images_dir`. A file already there is kept without any
    request when it matches the manifest checksum or the manifest has none; one that does not match
    (another version of the artwork) is kept too unless ``overwrite``. Missing files are downloaded
    from the manifest URL, or from ``{base_url}/{name}`` when ``base_url`` is given (a mirror or a
    test server), verified against the manifest checksum and written atomically, so ``dest`` never
    holds a partial or unverified download. Entries that are not free to copy (``free=False``) are
    skipped unless ``include_non_pd``. ``progress`` prints one line per image on stderr.

    Every image is attempted unless the server cannot be reached (then the rest are not tried);
    failures then raise one ImageError whose one-line message names each failed file, URL and
    reason (for a checksum mismatch: the expected and the actual checksum).
    """
    wanted = resolve_names(names)
    folder = Path(dest).expanduser() if dest is not None else default_images_dir()

    def say(msg: str) -> None:
        if progress:
            print(msg, file=sys.stderr, flush=True)

    paths: dict[str, Path] = {}
    errors: list[str] = []
    for i, name in enumerate(wanted):
        entry = MANIFEST[name]
        if not entry.free and not include_non_pd:
            say(f"{name}: skipped ({entry.license}; pass --include-non-pd to fetch it)")
            continue
        path = folder / name
        if path.is_file() and not overwrite:
            try:
                problem = checksum_mismatch(entry, path.read_bytes())
            except OSError as err:
                errors.append(f"{name}: cannot read {path} ({one_line(err.strerror or err)})")
                continue
            if problem is None:
                checked = "checksum ok" if has_checksum(entry) else "no checksum to verify"
                say(f"{name}: already present ({checked})")
            else:
                say(
                    f"{name}: already present but its {problem} (another version?); "
                    "kept it (use --overwrite to replace it)"
                )
            paths[name] = path
            continue
        url = _url_for(entry, base_url)
        say(f"{name}: downloading {url}")
        try:
            say(f"{name}: {_download_one(entry, url, path, timeout)}")
        except _Unreachable as err:
            # Trying the other files would only repeat the same failure (and its timeout).
            rest = [n for n in wanted[i + 1 :] if MANIFEST[n].free or include_non_pd]
            errors.append(
                f"{err}{'; not attempted: ' + ', '.join(rest) if rest else ''}; check the "
                f"network, or put the files in {folder} by hand"
            )
            break
        except ImageError as err:
            errors.append(str(err))
            continue
        except OSError as err:
            errors.append(f"{name}: cannot write {path} ({one_line(err.strerror or err)})")
            continue
        paths[name] = path
    if errors:
        raise ImageError("; ".join(errors))
    return paths


def _split_names(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [n for v in values for n in v.split(",") if n.strip()]


def _print_list(names: list[str]) -> None:
    for e in (MANIFEST[n] for n in names):
        sums = [
            f"{algo} {value}" for algo, value in (("md5", e.md5), ("sha256", e.sha256)) if value
        ]
        checksum = ", ".join(sums) or "no published checksum (not verified)"
        flag = "" if e.free else "  [not public domain: needs --include-non-pd]"
        print(f"{e.name}: {e.artist}, {e.title} ({e.year}); {e.license}{flag}")
        print(f"    {e.url}")
        print(f"    {checksum}")


def main(argv: list[str] | None = None) -> int:
    """``python -m nst.paper_images``: download the paper's images into a folder, verifying
    checksums (``--list`` shows what and from where). Files already present are kept."""
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m nst.paper_images",
        description="Download the images of Gatys, Ecker & Bethge (CVPR 2016) into a folder, "
        "verifying checksums.",
    )
    p.add_argument(
        "--dest",
        help="folder to download into (default: $NST_CACHE_DIR, $XDG_CACHE_HOME/nst or "
        "~/.cache/nst, plus /paper_images)",
    )
    p.add_argument(
        "--names",
        nargs="+",
        metavar="NAME",
        help=f"images to fetch, space- or comma-separated (default: all): {', '.join(NAMES)}",
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
        names = resolve_names(_split_names(a.names))
        if a.list:
            _print_list(names)
            return 0
        dest = a.dest if a.dest is not None else default_images_dir()
        paths = fetch(
            names,
            dest=dest,
            base_url=a.base_url,
            include_non_pd=a.include_non_pd,
            timeout=a.timeout,
            progress=not a.quiet,
            overwrite=a.overwrite,
        )
    except NstError as err:  # one line; the exit code of the script it replaces
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
