"""Shared helpers for the MPI layer (run as: mpiexec -n 4 python -m pytest --with-mpi tests/mpi)."""

from __future__ import annotations

import pytest


@pytest.fixture
def world():
    """MPI_COMM_WORLD, duplicated so a test's messages never meet another's."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD.Dup()
    yield comm
    comm.Free()
