"""The MLRB Console: a Textual dashboard and the `mlrb` command line."""
