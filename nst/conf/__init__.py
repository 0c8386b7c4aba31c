"""nst's Hydra configs (package data; found by the nst app and by ``nst.load_config``)."""
