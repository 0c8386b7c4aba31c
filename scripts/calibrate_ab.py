"""Find ``loss.ab_scale`` for an impl: the factor that makes the paper's alpha/beta give the same
content/style balance as the reference look on the embedded VGG16.

    python scripts/calibrate_ab.py --impl paper --content /path/to/tubingen.jpg \
        --style /path/to/starry_night.jpg --size 256

Balance is measured as the ratio of gradient norms ||d(alpha*content)/dx|| / ||d(beta*style)/dx||
at a white-noise image (the paper's starting point). The reference is the default config
(relu features, max pooling, Gram/(C*H*W) MSE, alpha=1, beta=1e3), whose results look like the
paper's at alpha/beta = 1e-3. For the target impl, ab_scale is chosen so that alpha/beta = 1e-3
reproduces the reference ratio: ab_scale = 1e-3 * (g_content / g_style) / r_ref.
Prints a JSON line and a short table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np

import nst
from nst import images
from nst.backbones import get_backbone
from nst.engine import build, make_loss_fn
from nst.run import make_init
from nst.spec import RunSpec

PAPER_RATIO = 1e-3  # Gatys et al. 2016, Sec. 3 / Fig. 3: the typical alpha/beta


def grad_norms(cfg, content, style, noise) -> tuple[float, float]:
    """||grad content|| and ||grad style|| (layer-weighted, before alpha/beta) at ``noise``."""
    spec = RunSpec.from_config(cfg)
    weights = dataclasses.replace(spec.weights, source="embedded", path=None)
    params, info = get_backbone(spec.backbone.arch).load(weights)
    backbone = dataclasses.replace(spec.backbone, preprocessing=info["preprocessing"])
    loss = spec.loss
    prog = build(backbone, loss, spec.optimizer, params, content, style)
    model, p, targets = prog.model, prog.params, prog.targets

    def term(name):
        one = dataclasses.replace(
            loss,
            **{
                "alpha": 1.0 if name == "content" else 0.0,
                "beta": 1.0 if name == "style" else 0.0,
                "tv": 0.0,
            },
        )
        fn = make_loss_fn(model, one)
        g = jax.grad(lambda x: fn(x, p, targets, one.weights())[0])(jnp.asarray(noise))
        return float(jnp.linalg.norm(g))

    return term("content"), term("style")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--impl", default="paper", choices=["paper", "authors"])
    ap.add_argument("--content", default="sample:chelsea")
    ap.add_argument("--style", default="sample:ihc")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    ref_cfg = nst.load_config()
    tgt_cfg = nst.load_config([f"impl={a.impl}"])
    content = images.resize_longest(images.load_image(a.content), a.size)
    style = images.resize_longest(images.load_image(a.style), max(content.shape[:2]))
    noise = make_init("noise", content, style, seed=a.seed)

    rc, rs = grad_norms(ref_cfg, content, style, noise)
    r_ref = (float(ref_cfg.loss.alpha) * rc) / (float(ref_cfg.loss.beta) * rs)
    tc, ts = grad_norms(tgt_cfg, content, style, noise)
    ab_scale = PAPER_RATIO * (tc / ts) / r_ref
    out = {
        "impl": a.impl,
        "size": a.size,
        "content": a.content,
        "style": a.style,
        "ref_grad_content": rc,
        "ref_grad_style": rs,
        "ref_ratio": r_ref,
        "impl_grad_content": tc,
        "impl_grad_style": ts,
        "ab_scale": float(np.float32(ab_scale)),
    }
    print(json.dumps(out))
    print(
        f"| impl | size | reference ratio | ab_scale |\n|---|---|---|---|\n"
        f"| {a.impl} | {a.size} | {r_ref:.3g} | {ab_scale:.3g} |"
    )


if __name__ == "__main__":
    main()
