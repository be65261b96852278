#!/usr/bin/env bash
# Set up on first use, then run the whole test suite: unit, end-to-end, Slurm, and MPI (under mpiexec) layers.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$(bash "$repo/jobs/setup-venv.sh")"
cd "$repo"
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 PATH="$venv/bin:$PATH"
status=0
echo "== unit, end-to-end and Slurm tests (Slurm ones skip without a local Slurm; CI requires them)" >&2
"$venv/bin/python" -m pytest -q tests/unit tests/e2e tests/slurm "$@" || status=$?
for ranks in 4 8; do
    echo "== MPI tests under mpiexec -n $ranks" >&2
    timeout 600 "$venv/bin/mpiexec" -n "$ranks" "$venv/bin/python" -m pytest -q --with-mpi \
        -p no:cacheprovider tests/mpi "$@" || status=$?
done
exit $status
