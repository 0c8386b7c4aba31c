"""Shell completion for the ``nst`` command: ``eval "$(nst -sc install=bash)"``.

Hydra's own completion composes the whole config on every Tab and does not offer the options in
sub-folders of a group (``experiment=gatys2016/fig4_grid``). This module answers from the
package's ``conf/`` listing and from the schema's source text (``nst/config.py`` and
``nst/optim.py``, parsed, never imported), so a query loads neither Hydra nor JAX.

The installed shell function calls ``nst -sc query=SHELL`` with the command line up to the cursor
in ``COMP_LINE`` (and ``COMP_POINT``), as Hydra's does; the answer is one candidate per line, each
a whole word (``experiment=gatys2016/fig4_grid``). An empty answer after ``key=`` lets the shell
complete file names.
"""

from __future__ import annotations

import ast
import importlib.resources
import importlib.util
import os
import re
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

SHELLS = ("bash", "zsh", "fish")
FLAG_WORDS = ("-sc", "--shell-completion")
# Groups the experiments use internally; `nst --help` does not show them either.
HIDDEN_GROUPS = ("init_case", "paper_style")
# Keys whose value is a file or directory: the shell completes those.
PATH_KEYS = (
    "content",
    "style",
    "output",
    "content_mask",
    "style_mask",
    "images_dir",
    "init.path",
    "backbone.weights_path",
    "hydra.run.dir",
    "hydra.sweep.dir",
)
SAMPLE_KEYS = ("content", "style")  # also take sample:NAME (scikit-image's bundled images)
SAMPLE = "sample:"
# Launchers besides the conf/hydra/launcher files: Hydra's own and those of installed plugin
# packages (name -> the hydra_plugins package that registers it), found without importing them.
LAUNCHERS = {
    "basic": None,
    "batched": "nst_launcher",
    "joblib": "hydra_joblib_launcher",
    "submitit_local": "hydra_submitit_launcher",
    "submitit_slurm": "hydra_submitit_launcher",
}
FLAGS = (
    "-m",
    "--multirun",
    "--help",
    "--hydra-help",
    "--version",
    "--cfg",
    "--resolve",
    "--info",
    "--config-dir",
    "--shell-completion",
)
FLAG_VALUES = {
    "--cfg": ("job", "hydra", "all"),
    "-c": ("job", "hydra", "all"),
    "--info": ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath"),
    "-i": ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath"),
    "--config-dir": (),
    "-cd": (),
}
_SCHEMA_FILES = ("config.py", "optim.py")
_ROOT_SCHEMA = "NSTConfig"


def conf_dir() -> Traversable:
    """The installed package's config tree (package data, so a wheel has it too)."""
    return importlib.resources.files("nst.conf")


def _yaml_files(d: Traversable, prefix: str = "") -> list[str]:
    out = []
    for p in d.iterdir():
        if p.is_dir() and not p.name.startswith(("_", ".")):
            out += _yaml_files(p, f"{prefix}{p.name}/")
        elif p.name.endswith(".yaml"):
            out.append(prefix + p.name[: -len(".yaml")])
    return sorted(out)


def groups() -> dict[str, list[str]]:
    """Visible config groups and their options, nested ones as ``folder/name``."""
    root = conf_dir()
    out = {
        p.name: _yaml_files(p)
        for p in root.iterdir()
        if p.is_dir()
        and p.name not in (*HIDDEN_GROUPS, "hydra")
        and not p.name.startswith(("_", "."))
    }
    launchers = root / "hydra" / "launcher"
    own = _yaml_files(launchers) if launchers.is_dir() else []
    out["hydra/launcher"] = sorted({*own, *(n for n, pkg in LAUNCHERS.items() if _has(pkg))})
    return {k: v for k, v in sorted(out.items()) if v}


def _has(plugin: str | None) -> bool:
    if plugin is None:
        return True
    try:
        return importlib.util.find_spec(f"hydra_plugins.{plugin}") is not None
    except (ImportError, ValueError):
        return False


def _schema_classes() -> tuple[dict[str, dict[str, str]], dict[str, list[str]]]:
    """Dataclasses (field -> annotation text) and enums (values) of the schema's source files."""
    dataclasses: dict[str, dict[str, str]] = {}
    enums: dict[str, list[str]] = {}
    pkg = importlib.resources.files("nst")
    for name in _SCHEMA_FILES:
        try:
            tree = ast.parse((pkg / name).read_text(encoding="utf-8"))
        except (OSError, SyntaxError):
            continue
        for node in tree.body:
            if not isinstance(node, ast.ClassDef):
                continue
            bases = {ast.unparse(b) for b in node.bases}
            if "Enum" in bases:
                enums[node.name] = [
                    s.value.value
                    for s in node.body
                    if isinstance(s, ast.Assign) and isinstance(s.value, ast.Constant)
                ]
            elif any("dataclass" in ast.unparse(d) for d in node.decorator_list):
                dataclasses[node.name] = {
                    s.target.id: ast.unparse(s.annotation)
                    for s in node.body
                    if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)
                }
    return dataclasses, enums


PATH = "<path>"  # a leaf whose value the shell completes as a file name


def key_tree() -> dict:
    """Every config key as a nested dict; a leaf is a list of values to offer, or :data:`PATH`."""
    dataclasses, enums = _schema_classes()

    def build(fields: dict[str, str], seen: tuple[str, ...]) -> dict:
        node: dict = {}
        for key, ann in fields.items():
            names = re.findall(r"[A-Za-z_]\w*", ann)
            sub = next((n for n in names if n in dataclasses and n not in seen), None)
            if sub:
                node[key] = build(dataclasses[sub], (*seen, sub))
            elif enum := next((n for n in names if n in enums), None):
                node[key] = enums[enum]
            else:
                node[key] = ["true", "false"] if names[:1] == ["bool"] else []
        return node

    if _ROOT_SCHEMA in dataclasses:
        tree = build(dataclasses[_ROOT_SCHEMA], (_ROOT_SCHEMA,))
    else:  # no schema source (a bytecode-only install): the top-level keys of config.yaml
        text = (conf_dir() / "config.yaml").read_text(encoding="utf-8")
        tree = {k: [] for k in re.findall(r"^([a-z_]\w*):", text, re.M) if k != "defaults"}
    tree["logger"] = _tracker_keys()
    tree["hydra"] = {"run": {"dir": PATH}, "sweep": {"dir": PATH}}
    for dotted in PATH_KEYS:
        *parents, leaf = dotted.split(".")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = PATH
    tree.pop("figure", None)  # set by the paper-figure experiments, not typed by hand
    # String keys with a fixed set of values (plain str in the schema, checked when read).
    from nst.backbones import COMPUTE_DTYPES, CONV_CHOICES, DTYPES

    backbone = tree.get("backbone")
    if isinstance(backbone, dict):
        for key, values in (
            ("conv", CONV_CHOICES),
            ("compute_dtype", COMPUTE_DTYPES),
            ("dtype", DTYPES),
        ):
            if key in backbone:
                backbone[key] = list(values)
    return tree


def _tracker_keys() -> dict:
    """``logger.NAME.KEY`` from the logger/NAME.yaml files (each holds ``NAME: {KEY: ...}``)."""
    out = {}
    d = conf_dir() / "logger"
    for name in _yaml_files(d) if d.is_dir() else []:
        text = (d / f"{name}.yaml").read_text(encoding="utf-8")
        keys = re.findall(r"^  ([A-Za-z_]\w*):", text, re.M)
        if keys:
            out[name] = {k: [] for k in keys}
    return out


def _node(tree: dict, dotted: str) -> dict | None:
    node: object = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node if isinstance(node, dict) else None


def _keys(typed: str, tree: dict, grps: dict[str, list[str]]) -> list[str]:
    parent, dot, _ = typed.rpartition(".")
    node = _node(tree, parent) if dot else tree
    out = [f"{g}=" for g in grps] if not dot else []
    for k, v in (node or {}).items():
        path = f"{parent}.{k}" if dot else k
        out.append(f"{path}." if isinstance(v, dict) else f"{path}=")
        if isinstance(v, dict) and not dot and k in grps:
            out.append(f"{k}=")
    return sorted(set(out))


def _sample_names() -> list[str]:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        return []
    d = os.path.join(next(iter(spec.submodule_search_locations)), "data")
    try:
        return sorted(n.rsplit(".", 1)[0] for n in os.listdir(d) if n.endswith((".png", ".jpg")))
    except OSError:
        return []


def _files(prefix: str) -> list[str]:
    """Entries of the current directory starting with ``prefix`` (directories with ``/``)."""
    try:
        names = os.listdir(".")
    except OSError:
        return []
    return [n + ("/" if os.path.isdir(n) else "") for n in names if n.startswith(prefix)]


def _values(key: str, value: str, tree: dict, grps: dict[str, list[str]]) -> list[str]:
    # The element being typed: after the last comma (a sweep, a list) and an opening bracket.
    head, comma, last = value.rpartition(",")
    head += comma
    if not comma and last.startswith("["):
        head, last = "[", last[1:]
    if key in grps:
        options = grps[key]
    else:
        parent, dot, leaf = key.rpartition(".")
        node = _node(tree, parent) if dot else tree
        options = (node or {}).get(leaf, [])
        if isinstance(options, dict):
            options = []  # a section (pyramid=): its keys are typed with a dot
    if options == PATH:
        if key not in SAMPLE_KEYS or not value:
            return []  # the shell's file names
        if value.startswith(SAMPLE):
            return [f"{key}={SAMPLE}{n}" for n in _sample_names()]
        if SAMPLE.startswith(value):  # still typing it: the files that match stay reachable
            return [f"{key}={SAMPLE}", *(f"{key}={f}" for f in _files(value))]
        return []
    return [f"{key}={head}{o}" for o in options]


def candidates(line: str, point: int | None = None) -> list[str]:
    """What completes the last word of ``line`` (a command line up to the cursor): whole words
    that start with it."""
    line = line[:point] if point is not None else line
    words = line.split()
    if not line or line[-1].isspace():
        words.append("")
    if len(words) < 2:
        return []  # the command name itself
    word, prev = words[-1], words[-2]
    if prev in FLAG_WORDS:
        out = [f"{c}={s}" for c in ("install", "uninstall") for s in SHELLS]
    elif prev in FLAG_VALUES:
        out = list(FLAG_VALUES[prev])
    elif word.startswith("-"):
        out = list(FLAGS)
    else:
        sign = re.match(r"[+~]*", word).group()  # +key=, ++key=, ~key
        body = word[len(sign) :]
        key, eq, value = body.partition("=")
        tree, grps = key_tree(), groups()
        found = _values(key, value, tree, grps) if eq else _keys(body, tree, grps)
        out = [sign + c for c in found]
    return [c for c in dict.fromkeys(out) if c.startswith(word)]


_BASH = r"""# nst shell completion for bash: eval "$(nst -sc install=bash)" (e.g. in ~/.bashrc)
_nst_complete() {
    local line=${COMP_LINE:0:COMP_POINT}
    local full=${line##*[[:space:]]}
    # Readline replaces only the text after the last word-break character (= and : are ones),
    # so each whole-word candidate loses what comes before it.
    local word=${full##*[$COMP_WORDBREAKS]}
    local pre=${full%"$word"} c
    COMPREPLY=()
    while IFS= read -r c; do
        COMPREPLY+=("${c#"$pre"}")
    done < <(COMP_LINE=$COMP_LINE COMP_POINT=$COMP_POINT "$1" -sc query=bash 2>/dev/null)
    # key=, loss., a directory: the word goes on, so no space after it.
    if [[ ${#COMPREPLY[@]} -eq 1 && ${COMPREPLY[0]} == *[=./:,[] ]]; then
        compopt -o nospace 2>/dev/null
    fi
}
complete -o default -F _nst_complete nst
"""

_ZSH = r"""# nst shell completion for zsh (after compinit): eval "$(nst -sc install=zsh)"
_nst() {
    local -a found more
    local c
    found=(${(f)"$(COMP_LINE="${(j: :)words[1,CURRENT-1]} $PREFIX" "$words[1]" -sc query=zsh 2>/dev/null)"})
    if (( ! $#found )); then
        compset -P '*='
        _files
        return
    fi
    for c in $found; do
        [[ $c == *[=./:,[] ]] && more+=($c)
    done
    found=(${found:|more})
    (( $#more )) && compadd -Q -S '' -a more
    (( $#found )) && compadd -Q -a found
}
compdef _nst nst
"""

_FISH = r"""# nst shell completion for fish: nst -sc install=fish | source
function __nst_complete
    set -l line (commandline -cp)
    set -l out (env COMP_LINE="$line" (commandline -cpo)[1] -sc query=fish 2>/dev/null)
    if set -q out[1]
        printf '%s\n' $out
        return
    end
    set -l tok (commandline -ct)
    set -l key (string match -r -- '^[^=]*=' $tok)
    set -l path (string replace -r -- '^[^=]*=' '' $tok)
    __fish_complete_path "$path" | string replace -r -- '^' "$key"
end
complete -c nst -f -a '(__nst_complete)'
"""

INSTALL = {"bash": _BASH, "zsh": _ZSH, "fish": _FISH}
UNINSTALL = {
    "bash": "complete -r nst 2>/dev/null; unset -f _nst_complete\n",
    "zsh": "compdef -d nst; unfunction _nst 2>/dev/null\n",
    "fish": "complete -e -c nst; functions -e __nst_complete\n",
}


def main(argv: list[str]) -> int:
    """``nst -sc install=SHELL | uninstall=SHELL | query=SHELL`` (Hydra's argument form)."""
    command, _, shell = (argv[0] if len(argv) == 1 else "").partition("=")
    if command not in ("install", "uninstall", "query") or shell not in SHELLS:
        print(
            "nst: error: -sc takes install=SHELL, uninstall=SHELL or query=SHELL "
            f'(SHELL: {", ".join(SHELLS)}), e.g. eval "$(nst -sc install=bash)"',
            file=sys.stderr,
        )
        return 2
    if command == "install":
        sys.stdout.write(INSTALL[shell])
    elif command == "uninstall":
        sys.stdout.write(UNINSTALL[shell])
    else:
        line = os.environ.get("COMP_LINE", "")
        point = os.environ.get("COMP_POINT", "")
        found = candidates(line, int(point) if point.isdigit() else None)
        sys.stdout.write("".join(f"{c}\n" for c in found))
    return 0
