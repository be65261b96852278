import numpy as np

FIELDS: int

def parse_chunk(
    text: bytes | bytearray | memoryview,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None: ...
