"""nst's Hydra plugins (found by Hydra's plugin discovery under the hydra_plugins namespace)."""
