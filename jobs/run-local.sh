#!/usr/bin/env bash
# Quickstart: set up on first use, then train on the built-in synthetic data with 8 MPI ranks.
#   bash jobs/run-local.sh                      # mpiexec -n 8 python -m hybrid_ps.train
#   RANKS=32 bash jobs/run-local.sh --epochs 1  # extra arguments go to hybrid_ps.train
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$(bash "$repo/jobs/setup-venv.sh")"
cd "$repo"
exec "$venv/bin/python" -m mpi_launch -n "${RANKS:-8}" -- "$@"
