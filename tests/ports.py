"""A free loopback port for the servers tests start."""

import socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dead_url() -> str:
    """An OpenAI-style base URL where nothing listens: a dead API."""
    return f"http://127.0.0.1:{free_port()}/v1"
