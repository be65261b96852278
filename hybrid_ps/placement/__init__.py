"""Placement of keys on shards: the compiled kernels of the consistent-hash ring (``_ring_kernels.pyx``)."""
