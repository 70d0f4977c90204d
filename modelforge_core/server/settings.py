"""What ``modelforge serve`` was asked for, checked once before anything listens."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError

#: Environment variable read when ``--token`` is not given (keeps the token out of ``ps``).
TOKEN_ENV = "MODELFORGE_API_TOKEN"  # noqa: S105 (a variable name, not a secret)
#: Request bodies larger than this are refused with 413 (a config is a few KiB).
DEFAULT_MAX_BODY = 1 << 20
#: Host names that reach only this machine.
LOOPBACK_NAMES = ("localhost", "localhost.localdomain")


def is_loopback(host: str) -> bool:
    """True when binding ``host`` keeps the server reachable from this machine only."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything


#: What a token for a server reachable from other machines must have.
MIN_TOKEN_CHARS = 24
MIN_TOKEN_BITS = 100
MAKE_TOKEN = 'make one with: python -c "import secrets; print(secrets.token_urlsafe(32))"'  # noqa: S105 (a hint, not a secret)


def token_weakness(token: str) -> str | None:
    """Why ``token`` is too weak to guard a server reachable from other machines, or ``None``.

    The estimate: length times the Shannon entropy of its characters, which ``secrets.token_urlsafe(32)``
    (43 characters, about 200 bits by this measure) passes and a word, a repeated character or a
    short PIN does not.
    """
    import math
    from collections import Counter

    if token != token.strip() or any(c.isspace() for c in token):
        return "it contains whitespace"
    if not token.isprintable():
        return "it contains control characters"
    if len(token) < MIN_TOKEN_CHARS:
        return f"it has {len(token)} characters, fewer than {MIN_TOKEN_CHARS}"
    counts = Counter(token)
    per_char = -sum(n / len(token) * math.log2(n / len(token)) for n in counts.values())
    bits = max(per_char * len(token), 0.0)
    if bits < MIN_TOKEN_BITS:
        return f"its characters are too predictable (about {bits:.0f} bits; at least {MIN_TOKEN_BITS} needed)"
    return None


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


@dataclass(frozen=True)
class ServerSettings:
    """The server's configuration; build it with :meth:`build`, which refuses unsafe choices."""

    host: str
    port: int
    token: str | None
    data_root: Path
    runs_dir: Path
    state_dir: Path
    cors_origins: tuple[str, ...] = ()
    concurrency: int = 1
    max_body_bytes: int = DEFAULT_MAX_BODY
    #: Seconds a training gets to save its checkpoint when the server stops, before it is killed.
    stop_timeout: float = 120.0

    @classmethod
    def build(cls, *, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
              data_root: Path | None = None, runs_dir: Path | None = None, state_dir: Path | None = None,
              cors_origins: tuple[str, ...] = (), concurrency: int = 1,
              max_body_bytes: int = DEFAULT_MAX_BODY) -> ServerSettings:
        root = (data_root or Path.cwd()).expanduser().resolve()
        if not root.is_dir():
            raise UsageError(f"--data-root {root} is not a folder: give an existing folder")
        runs = (runs_dir.expanduser() if runs_dir else root / "runs")
        runs = (root / runs if not runs.is_absolute() else runs).resolve()
        if not _inside(runs, root):
            raise UsageError(f"the runs folder {runs} must be inside --data-root {root}")
        state = (state_dir.expanduser().resolve() if state_dir else runs / ".jobs")
        token = token or None
        if token is None and not is_loopback(host):
            raise UsageError(f"binding to {host} makes the API reachable from other machines: give a bearer "
                             f"token with --token or the {TOKEN_ENV} environment variable ({MAKE_TOKEN})")
        weakness = token_weakness(token) if token is not None else None
        if weakness and not is_loopback(host):
            raise UsageError(f"binding to {host} needs a real secret as the token: {weakness}. {MAKE_TOKEN}")
        if concurrency < 1:
            raise UsageError("--concurrency must be at least 1")
        for origin in cors_origins:
            if origin == "*" or not origin.startswith(("http://", "https://")):
                raise UsageError(f"--cors-origin {origin!r}: give a full origin such as https://example.org "
                                 "(a wildcard is not accepted)")
        return cls(host=host, port=port, token=token, data_root=root, runs_dir=runs, state_dir=state,
                   cors_origins=tuple(o.rstrip("/") for o in cors_origins), concurrency=concurrency,
                   max_body_bytes=max_body_bytes)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def relative(self, path: Path | str) -> str:
        """``path`` shown relative to the data root (never the server's absolute layout), or
        as given when it lies outside."""
        resolved = Path(path).resolve()
        if _inside(resolved, self.data_root):
            return resolved.relative_to(self.data_root).as_posix() or "."
        return str(path)

    def inside_root(self, path: Path) -> bool:
        return _inside(path.resolve(), self.data_root)
