"""The ``nst`` command: a thin Hydra entry point around :func:`nst.run.run`."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from nst.config import register_configs
from nst.errors import NstError

# The configs/ tree at the repository root (the package is installed editable: pip install -e .).
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    from nst.run import run  # after Hydra has parsed the command line: keeps --help fast

    run_dir = HydraConfig.get().runtime.output_dir
    try:
        summary = run(cfg, run_dir)
    except NstError as e:
        if cfg.get("debug", False):
            raise
        print(f"nst: error: {e}", file=sys.stderr)
        sys.exit(2)
    final = summary["final"]
    print(
        f"nst: wrote {summary['result']}  (total {final['total']:.4g}, content {final['content']:.4g},"
        f" style {final['style']:.4g}; {summary['steps']} steps in {summary['wall_s']:.0f} s)"
    )


def main() -> None:
    """Console-script entry point (``nst``)."""
    # Hydra logs at INFO; JAX's backend probing ("Unable to initialize backend 'tpu'") is noise.
    logging.getLogger("jax").setLevel(logging.WARNING)
    register_configs()
    _hydra_main()


if __name__ == "__main__":
    main()
