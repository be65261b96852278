"""Moving bytes: ZeroMQ sockets and frames, CURVE keys and authentication, backoff for polling loops."""
