"""Shell completion (nst/completion.py): candidates from the package's conf/ tree and schema,
a query path without Hydra or JAX, and install scripts the shells accept."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nst import completion
from nst.app import CONFIG_DIR
from nst.completion import candidates
from nst.config import Norm, NSTConfig

CONF = Path(CONFIG_DIR)


def options(group: str, prefix: str = "") -> list[str]:
    """A group's options as the conf directory lists them, nested ones as folder/name."""
    d = CONF / group
    names = (p.relative_to(d).with_suffix("").as_posix() for p in d.rglob("*.yaml"))
    return sorted(f"{group}={n}" for n in names if n.startswith(prefix))


def test_group_options_nested_and_filtered_by_prefix():
    gat = candidates("nst experiment=gat")
    assert "experiment=gatys2016/fig4_grid" in gat
    assert gat == options("experiment", "gat")
    assert "experiment=seeds/cs231n" in candidates("nst experiment=seeds/cs")
    assert candidates("nst experiment=") == options("experiment")
    assert candidates("nst backbone=") == options("backbone")
    assert candidates("nst -m layers=gatys2016,lew") == ["layers=gatys2016,lewuathe2017"]
    assert candidates("nst logger=[wandb,t") == ["logger=[wandb,tensorboard"]
    launchers = candidates("nst hydra/launcher=")
    assert {"hydra/launcher=basic", "hydra/launcher=batched", "hydra/launcher=slurm"} <= set(
        launchers
    )
    # The cursor counts: only the text before it is completed.
    assert candidates("nst experiment=gat size=64", len("nst experiment=gat")) == gat


def test_keys_from_the_schema_and_internal_groups_hidden():
    top = candidates("nst ")
    for f in dataclasses.fields(NSTConfig):
        if f.name != "figure":  # set by the paper-figure experiments only
            assert f"{f.name}=" in top or f"{f.name}." in top, f.name
    groups = {p.name for p in CONF.iterdir() if p.is_dir() and not p.name.startswith("_")}
    for g in groups - {"init_case", "paper_style", "hydra"}:
        assert f"{g}=" in top, g
    assert not [c for c in top if c.startswith(("init_case", "paper_style", "hydra=", "hydra/h"))]
    assert "hydra/launcher=" in top
    assert candidates("nst loss.b") == ["loss.balance=", "loss.beta="]
    assert candidates("nst loss.gram_norm=") == [f"loss.gram_norm={n.value}" for n in Norm]
    assert candidates("nst resume=") == ["resume=true", "resume=false"]
    from nst.backbones import COMPUTE_DTYPES

    got = candidates("nst backbone.compute_dtype=")
    assert got == [f"backbone.compute_dtype={v}" for v in COMPUTE_DTYPES]
    assert candidates("nst backbone.conv=w") == ["backbone.conv=winograd"]
    assert candidates("nst +optimizer.k") == ["+optimizer.kwargs="]
    assert candidates("nst logger.wandb.p") == ["logger.wandb.project="]
    assert candidates("nst hydra.r") == ["hydra.run."]


def test_paths_left_to_the_shell_and_sample_images():
    assert candidates("nst content=") == []  # the shell completes file names
    assert candidates("nst output=out/") == []
    assert candidates("nst content=sample:astr") == ["content=sample:astronaut"]
    assert candidates("nst style=sam")[0] == "style=sample:"


def test_flags_and_bad_arguments(capsys):
    assert candidates("nst -sc ") == [
        f"{c}={s}" for c in ("install", "uninstall") for s in ("bash", "zsh", "fish")
    ]
    assert candidates("nst --cfg ") == ["job", "hydra", "all"]
    assert candidates("nst --mu") == ["--multirun"]
    assert candidates("nst") == []  # the command name itself
    assert completion.main([]) == 2
    assert completion.main(["install=tcsh"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[0].startswith("nst: error: -sc takes install=SHELL")


def test_query_through_the_entry_point_loads_neither_hydra_nor_jax():
    code = (
        "import sys\n"
        "from nst import app\n"
        "sys.argv = ['nst', '-sc', 'query=bash']\n"
        "try:\n"
        "    app.main()\n"
        "except SystemExit as e:\n"
        "    print('exit', e.code)\n"
        "print('loaded', sorted({m.split('.')[0] for m in sys.modules} & "
        "{'jax', 'hydra', 'omegaconf', 'numpy', 'yaml'}))\n"
    )
    line = "nst experiment=gat"
    p = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "COMP_LINE": line, "COMP_POINT": str(len(line))},
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == [*candidates(line), "exit 0", "loaded []"]


# Loads the script as a user would, checks it, and runs the completion function the way bash
# does on Tab (COMP_LINE/COMP_POINT set, COMPREPLY read back).
SIMULATE = r"""
nst() { "$PYTHON" -m nst.app "$@"; }
script=$(nst -sc install=bash); echo "install $?"
bash -n <<<"$script" && echo "syntax ok"
eval "$script"
complete -p nst
tab() {
    COMP_LINE=$1; COMP_POINT=${#1}; COMPREPLY=()
    _nst_complete nst
    printf '%s|' "$1" "${COMPREPLY[@]}"; echo
}
tab 'nst experiment=gatys2016/fig4'
tab 'nst content=sample:astr'
tab 'nst lo'
tab 'nst content='
eval "$(nst -sc uninstall=bash)"
complete -p nst 2>/dev/null || echo "uninstalled"
for sh in zsh fish; do
    if command -v $sh >/dev/null; then nst -sc install=$sh | $sh -n && echo "$sh syntax ok"; fi
done
"""


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_script_completes_a_nested_option():
    p = subprocess.run(
        ["bash", "-c", SIMULATE],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    # Candidates come back without the text before the last `=` or `:`, which readline keeps.
    assert lines[:8] == [
        "install 0",
        "syntax ok",
        "complete -o default -F _nst_complete nst",
        "nst experiment=gatys2016/fig4|gatys2016/fig4_grid|",
        "nst content=sample:astr|astronaut|",
        "nst lo|log_every=|logger.|logger=|loss.|loss=|",
        "nst content=|",
        "uninstalled",
    ]
    shells = [s for s in ("zsh", "fish") if shutil.which(s)]
    assert lines[8:] == [f"{s} syntax ok" for s in shells]
