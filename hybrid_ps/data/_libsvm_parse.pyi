import numpy as np

def parse_chunk(
    text: bytes | bytearray | memoryview,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None: ...
