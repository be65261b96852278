"""Launch helpers for local, Slurm and PBS runs."""
