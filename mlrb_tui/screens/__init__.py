"""The console's screens: the runs dashboard, the run view and the modals."""
