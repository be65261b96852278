"""Placement of keys on shards: the consistent-hash ring (virtual nodes, a request's split, ownership checks)
and its replicas (preference lists, the acting primary), over the compiled kernels of ``_ring_kernels.pyx``."""
