"""The seven MLRB tasks as bundles, and the API that loads them (`tasks.api`)."""
