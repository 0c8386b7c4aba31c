"""Download the images of Gatys, Ecker & Bethge (CVPR 2016) into a folder, verifying checksums.

    python -m nst.paper_images                      # all free images, into the cache
    python -m nst.paper_images --dest images --names tubingen,starry_night
    python -m nst.paper_images --list               # what would be fetched, from where

Files already present are kept and not downloaded again. The Picasso (seated-nude.jpg) is not
public domain and is fetched only with --include-non-pd. Sources and licences: nst/paper_images.py.
"""

from __future__ import annotations

import sys

from nst.paper_images import main

if __name__ == "__main__":
    sys.exit(main())
