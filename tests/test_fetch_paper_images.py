"""nst.paper_images and scripts/fetch_paper_images.py against a local HTTP server (no internet)."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nst import paper_images
from nst.errors import ImageError
from tests.conftest import PAPER_IMAGES, REPO, smooth_image

SCRIPT = REPO / "scripts" / "fetch_paper_images.py"
FREE = [n for n, e in paper_images.MANIFEST.items() if e.free]
NON_FREE = [n for n, e in paper_images.MANIFEST.items() if not e.free]


class _Server:
    """A static file server on 127.0.0.1 that records the paths requested."""

    def __init__(self, root: Path):
        self.root = root
        self.requests: list[str] = []
        requests = self.requests

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                requests.append(self.path)
                super().do_GET()

            def log_message(self, *args):  # keep pytest output clean
                pass

        handler = functools.partial(Handler, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def served(tmp_path):
    """Small distinct JPEGs under every manifest name, served over HTTP; yields (server, files)."""
    root = tmp_path / "served"
    root.mkdir()
    files = {}
    for i, name in enumerate(paper_images.NAMES):
        Image.fromarray(smooth_image(24, 32, seed=i).astype(np.uint8)).save(root / name)
        files[name] = (root / name).read_bytes()
    server = _Server(root)
    try:
        yield server, files
    finally:
        server.close()


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _set_checksums(monkeypatch, files: dict[str, bytes], names=None, md5=None, sha256=None):
    """Point manifest entries at the served files' real MD5 (or the given md5/sha256)."""
    for name in names or paper_images.NAMES:
        entry = paper_images.MANIFEST[name]
        new = dataclasses.replace(
            entry, md5=md5 if md5 is not None else _md5(files[name]), sha256=sha256
        )
        monkeypatch.setitem(paper_images.MANIFEST, name, new)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_manifest_is_complete_and_well_formed():
    assert set(paper_images.NAMES) == {
        "tubingen.jpg",
        "shipwreck.jpg",
        "starry_night.jpg",
        "the_scream.jpg",
        "seated-nude.jpg",
        "composition_vii.jpg",
        "great_wave.jpg",
    }
    for name, e in paper_images.MANIFEST.items():
        assert e.name == name and e.url.startswith("https://upload.wikimedia.org/")
        assert e.title and e.artist and e.year and e.license and e.source
        assert e.md5 is None or len(e.md5) == 32
        assert e.sha256 is None or len(e.sha256) == 64
    assert NON_FREE == ["seated-nude.jpg"]
    assert paper_images.MANIFEST["seated-nude.jpg"].public_domain is False


@pytest.mark.skipif(
    PAPER_IMAGES is None or not (PAPER_IMAGES / "tubingen.jpg").is_file(),
    reason="needs tubingen.jpg in the directory named by NST_PAPER_IMAGES",
)
def test_tubingen_checksums_match_the_local_copy():
    entry = paper_images.MANIFEST["tubingen.jpg"]
    assert (
        paper_images.checksum_mismatch(entry, (PAPER_IMAGES / "tubingen.jpg").read_bytes()) is None
    )


def test_default_images_dir_follows_cache_env(monkeypatch, tmp_path):
    monkeypatch.setenv("NST_CACHE_DIR", str(tmp_path / "c"))
    assert paper_images.default_images_dir() == tmp_path / "c" / "paper_images"
    monkeypatch.delenv("NST_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert paper_images.default_images_dir() == tmp_path / "x" / "nst" / "paper_images"


def test_fetch_downloads_via_base_url_and_verifies(served, monkeypatch, tmp_path):
    server, files = served
    _set_checksums(monkeypatch, files)
    dest = tmp_path / "dest"
    paths = paper_images.fetch(dest=dest, base_url=server.url + "/", progress=False)
    assert list(paths) == FREE
    for name, path in paths.items():
        assert path == dest / name and path.read_bytes() == files[name]
    assert sorted(server.requests) == sorted(f"/{n}" for n in FREE)
    assert sorted(p.name for p in dest.iterdir()) == sorted(FREE)  # no temp files left behind


def test_sha256_is_verified_too(served, monkeypatch, tmp_path):
    server, files = served
    name = "shipwreck.jpg"
    good = hashlib.sha256(files[name]).hexdigest()
    _set_checksums(monkeypatch, files, [name], sha256=good)
    paths = paper_images.fetch([name], dest=tmp_path, base_url=server.url, progress=False)
    assert paths[name].read_bytes() == files[name]
    _set_checksums(monkeypatch, files, [name], sha256="0" * 64)
    with pytest.raises(ImageError, match=f"SHA-256 is {good}, expected 0{{64}}"):
        paper_images.fetch([name], dest=tmp_path / "b", base_url=server.url, progress=False)


def test_checksum_mismatch_is_one_line_and_leaves_no_file(served, monkeypatch, tmp_path):
    server, files = served
    name = "the_scream.jpg"
    wrong = "0123456789abcdef" * 2
    _set_checksums(monkeypatch, files, [name], md5=wrong)
    dest = tmp_path / "dest"
    with pytest.raises(ImageError) as info:
        paper_images.fetch([name], dest=dest, base_url=server.url, progress=False)
    msg = str(info.value)
    assert "\n" not in msg
    assert name in msg and wrong in msg and _md5(files[name]) in msg
    assert f"{server.url}/{name}" in msg
    assert not dest.exists() or list(dest.iterdir()) == []


def test_other_files_still_fetched_when_one_fails(served, monkeypatch, tmp_path):
    server, files = served
    _set_checksums(monkeypatch, files)
    _set_checksums(monkeypatch, files, ["shipwreck.jpg"], md5="f" * 32)
    dest = tmp_path / "dest"
    with pytest.raises(ImageError, match="shipwreck.jpg"):
        paper_images.fetch(dest=dest, base_url=server.url, progress=False)
    assert sorted(p.name for p in dest.iterdir()) == sorted(set(FREE) - {"shipwreck.jpg"})


def test_present_files_are_skipped_without_requests(served, monkeypatch, tmp_path, capsys):
    server, files = served
    _set_checksums(monkeypatch, files)
    names = ["tubingen.jpg", "starry_night.jpg"]
    (tmp_path / "tubingen.jpg").write_bytes(files["tubingen.jpg"])  # right checksum
    (tmp_path / "starry_night.jpg").write_bytes(b"another version")  # differs: kept as is
    paths = paper_images.fetch(names, dest=tmp_path, base_url=server.url)
    assert server.requests == []
    assert list(paths) == names
    assert (tmp_path / "starry_night.jpg").read_bytes() == b"another version"
    err = capsys.readouterr().err
    assert "tubingen.jpg: already present (checksum ok)" in err
    assert "starry_night.jpg: already present but its MD5" in err
    # overwrite replaces only what differs from the manifest
    paper_images.fetch(names, dest=tmp_path, base_url=server.url, progress=False, overwrite=True)
    assert server.requests == ["/tubingen.jpg", "/starry_night.jpg"]
    assert (tmp_path / "starry_night.jpg").read_bytes() == files["starry_night.jpg"]


def test_unchecked_entries_must_still_be_images(served, monkeypatch, tmp_path):
    server, _ = served
    (server.root / "great_wave.jpg").write_bytes(b"<html>not an image</html>")
    monkeypatch.setitem(
        paper_images.MANIFEST,
        "great_wave.jpg",
        dataclasses.replace(paper_images.MANIFEST["great_wave.jpg"], md5=None, sha256=None),
    )
    dest = tmp_path / "dest"
    with pytest.raises(ImageError, match="did not return a readable image"):
        paper_images.fetch(["great_wave"], dest=dest, base_url=server.url, progress=False)
    assert not dest.exists() or list(dest.iterdir()) == []


def test_non_pd_skipped_unless_included(served, monkeypatch, tmp_path, capsys):
    server, files = served
    _set_checksums(monkeypatch, files)
    assert paper_images.fetch(NON_FREE, dest=tmp_path, base_url=server.url) == {}
    assert server.requests == [] and "--include-non-pd" in capsys.readouterr().err
    paths = paper_images.fetch(
        NON_FREE, dest=tmp_path, base_url=server.url, include_non_pd=True, progress=False
    )
    assert list(paths) == NON_FREE and server.requests == [f"/{n}" for n in NON_FREE]


def test_unknown_name_and_stems():
    assert paper_images.resolve_names(["great_wave", "tubingen.jpg", "tubingen"]) == [
        "tubingen.jpg",
        "great_wave.jpg",
    ]
    with pytest.raises(ImageError, match="unknown paper image 'mona_lisa'; valid: tubingen.jpg"):
        paper_images.resolve_names(["mona_lisa"])


def test_unreachable_server_is_one_line_error_with_url(tmp_path):
    url = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(ImageError) as info:
        paper_images.fetch(
            ["tubingen", "great_wave"], dest=tmp_path / "d", base_url=url, progress=False
        )
    msg = str(info.value)
    assert "\n" not in msg and f"cannot download {url}/tubingen.jpg (" in msg
    assert "not attempted: great_wave.jpg" in msg  # no point waiting for a dead server twice
    assert not (tmp_path / "d").exists()


def test_missing_images_message_and_require(tmp_path):
    msg = paper_images.missing_images_message(tmp_path, ["starry_night.jpg", "seated-nude.jpg"])
    assert "\n" not in msg
    assert f"python -m nst.paper_images --dest {tmp_path}" in msg
    assert "--names starry_night.jpg,seated-nude.jpg --include-non-pd" in msg
    assert "images_dir=" in msg
    (tmp_path / "tubingen.jpg").write_bytes(b"x")
    assert paper_images.require_images(tmp_path, ["tubingen"]) == {
        "tubingen.jpg": tmp_path / "tubingen.jpg"
    }
    with pytest.raises(ImageError, match="great_wave.jpg not found in"):
        paper_images.require_images(tmp_path, ["tubingen", "great_wave"])


def _cli(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=60,
    )


def test_cli_list():
    p = _cli("--list")
    assert p.returncode == 0, p.stderr
    for name, e in paper_images.MANIFEST.items():
        assert f"{name}: {e.artist}" in p.stdout and e.url in p.stdout
    assert "needs --include-non-pd" in p.stdout


def test_cli_downloads_from_local_server(served, tmp_path):
    server, files = served
    # The real manifest is used in a subprocess: fetch the entries without a checksum (verified
    # only as decodable images) and check that a real checksum rejects the generated stand-ins.
    unchecked = [n for n in FREE if not paper_images.has_checksum(paper_images.MANIFEST[n])]
    checked = [n for n in FREE if paper_images.has_checksum(paper_images.MANIFEST[n])]
    dest = tmp_path / "dest"
    if unchecked:
        p = _cli("--dest", str(dest), "--base-url", server.url, "--names", ",".join(unchecked))
        assert p.returncode == 0, p.stderr
        assert f"{len(unchecked)} paper image(s) in {dest}" in p.stdout
        for n in unchecked:
            assert (dest / n).read_bytes() == files[n]
    if checked:
        p = _cli("--dest", str(dest), "--base-url", server.url, "--names", checked[0])
        assert p.returncode == 1
        assert p.stderr.count("\n") == 2  # the "downloading" progress line and the error
        err = p.stderr.splitlines()[-1]
        entry, data = paper_images.MANIFEST[checked[0]], files[checked[0]]
        assert err.startswith("error: ") and checked[0] in err
        assert (entry.sha256 or entry.md5) in err  # expected
        assert _md5(data) in err or hashlib.sha256(data).hexdigest() in err  # actual
        assert not (dest / checked[0]).exists()


def test_cli_unreachable_and_non_pd(tmp_path):
    url = f"http://127.0.0.1:{_free_port()}"
    p = _cli("--dest", str(tmp_path), "--base-url", url, "--names", "tubingen", "--quiet")
    assert p.returncode == 1
    assert p.stderr.count("\n") == 1 and f"{url}/tubingen.jpg" in p.stderr
    p = _cli("--dest", str(tmp_path), "--base-url", url, "--names", "seated-nude")
    assert p.returncode == 0, p.stderr
    assert "skipped seated-nude.jpg" in p.stdout and list(tmp_path.iterdir()) == []


def test_http_error_names_status_and_other_files_continue(served, monkeypatch, tmp_path):
    server, files = served
    _set_checksums(monkeypatch, files)
    (server.root / "shipwreck.jpg").unlink()
    dest = tmp_path / "dest"
    with pytest.raises(ImageError) as info:
        paper_images.fetch(["shipwreck", "great_wave"], dest=dest, base_url=server.url)
    assert (
        str(info.value) == f"cannot download {server.url}/shipwreck.jpg (HTTP 404 File not found)"
    )
    assert [p.name for p in dest.iterdir()] == ["great_wave.jpg"]
