"""Who may talk to the PS tier: ZeroMQ CURVE keys generated per job, and the ZAP check that enforces them.

A job (or a PS tier of its own) generates one ``JobKeys``: a server key pair every
shard (and the tier's control socket) serves with, and a client key pair every
leader (and ``tierctl``) connects with. Shards encrypt every connection (CURVE)
and, through a ZAP handler in their process, accept only the job's client public
key: a peer without the job's keys can neither connect nor push. The keys travel
over MPI, on a shard process's stdin, or in the tier file (mode 0600), never on
a command line.

Security ``none`` (plain TCP) is allowed only on loopback addresses.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from dataclasses import dataclass

import zmq
from zmq.auth.thread import ThreadAuthenticator

from ..errors import ConfigError

__all__ = ["JobKeys", "AUTHENTICATORS", "ZAP_DOMAIN", "check_plaintext_host", "is_loopback", "require_curve"]

log = logging.getLogger(__name__)

ZAP_DOMAIN = "hybrid_ps"
"""The ZAP domain of every PS server socket (the authenticator answers for it)."""

_LOOPBACK_NAMES = ("localhost", "ip6-localhost")


@dataclass(frozen=True)
class JobKeys:
    """One job's CURVE keys (Z85 text, 40 characters each)."""

    server_public: str
    server_secret: str
    client_public: str
    client_secret: str

    @classmethod
    def generate(cls) -> JobKeys:
        """Fresh key pairs for a new job."""
        require_curve()
        server_public, server_secret = zmq.curve_keypair()
        client_public, client_secret = zmq.curve_keypair()
        return cls(server_public.decode(), server_secret.decode(), client_public.decode(), client_secret.decode())

    @classmethod
    def from_dict(cls, fields: dict) -> JobKeys:
        """Keys from ``to_dict`` output (a tier file, a shard spec); a malformed entry raises ConfigError."""
        try:
            keys = cls(**{name: str(fields[name]) for name in cls.__dataclass_fields__})
        except (KeyError, TypeError) as e:
            raise ConfigError(f"security keys: missing or malformed entry {e}") from None
        for name, value in keys.to_dict().items():
            if len(value) != 40:
                raise ConfigError(f"security keys: {name} must be 40 Z85 characters, got {len(value)}")
        return keys

    def to_dict(self) -> dict[str, str]:
        """The keys as a JSON-able dict (secret: keep it in 0600 files or pipes only)."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    def __repr__(self) -> str:  # never log the secrets
        return f"JobKeys(server_public={self.server_public!r}, client_public={self.client_public!r})"

    def serve(self, sock: zmq.Socket) -> None:
        """Make ``sock`` (before it binds) a CURVE server that asks the ZAP handler about every client."""
        sock.curve_secretkey = self.server_secret.encode()
        sock.curve_publickey = self.server_public.encode()
        sock.curve_server = True
        sock.zap_domain = ZAP_DOMAIN.encode()

    def connect_as_client(self, sock: zmq.Socket) -> None:
        """Make ``sock`` (before it connects) a CURVE client of the job's servers."""
        sock.curve_serverkey = self.server_public.encode()
        sock.curve_publickey = self.client_public.encode()
        sock.curve_secretkey = self.client_secret.encode()


class _AllowList:
    """ZAP credentials check: only the client keys of the jobs served in this process are let in."""

    def __init__(self) -> None:
        self.client_keys: set[str] = set()

    def callback(self, domain: str, client_key: bytes) -> bool:
        allowed = client_key.decode() in self.client_keys
        if not allowed:
            log.warning("refused a PS connection with an unknown CURVE key %s", client_key.decode())
        return allowed


class _Authenticators:
    """One ZAP handler thread per ZeroMQ context, shared by the server sockets on it and stopped with the last."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[int, tuple[ThreadAuthenticator, _AllowList, int]] = {}

    def acquire(self, context: zmq.Context, keys: JobKeys) -> None:
        """Let ``keys``' clients in on ``context``'s CURVE server sockets (starting the handler if needed)."""
        with self._lock:
            auth, allow, users = self._running.get(id(context), (None, _AllowList(), 0))
            if auth is None:
                auth = ThreadAuthenticator(context, log=logging.getLogger("hybrid_ps.net.curve.zap"))
                auth.start()
                auth.configure_curve_callback(ZAP_DOMAIN, credentials_provider=allow)
            allow.client_keys.add(keys.client_public)
            self._running[id(context)] = (auth, allow, users + 1)

    def release(self, context: zmq.Context) -> None:
        """One server socket on ``context`` closed; the last one stops the handler."""
        with self._lock:
            running = self._running.get(id(context))
            if running is None:
                return
            auth, allow, users = running
            if users > 1:
                self._running[id(context)] = (auth, allow, users - 1)
                return
            del self._running[id(context)]
        auth.stop()


AUTHENTICATORS = _Authenticators()
"""The process's ZAP handlers: acquired for every CURVE server socket, released when it closes."""


def require_curve() -> None:
    """Raise ConfigError if this libzmq was built without CURVE."""
    if not zmq.has("curve"):
        raise ConfigError("cluster.security: curve needs a libzmq with CURVE (pyzmq's wheels have it); "
                          "set security = \"none\" on loopback only")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or name) is a loopback address."""
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_plaintext_host(host: str) -> None:
    """Plain TCP only on loopback: raise ConfigError for any other bind address."""
    if not is_loopback(host):
        raise ConfigError(f"cluster.security: \"none\" (plain TCP) is allowed on loopback only, but shards bind "
                          f"{host} (cluster.bind_host); use security = \"curve\" or bind_host = \"127.0.0.1\"")
