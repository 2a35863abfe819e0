"""What the two header sources share: credentials and their masking, the HTTP client with its
retries, one-line errors, the mainnet genesis check.

* A URL may carry `user:pass@host`; `split_url` takes the userinfo out, and only
  `mask_url(url)` (no userinfo at all) ever reaches a message, the progress bar, the sidecar
  or the header table. `Credentials` never prints its password (not even in `repr`).
* Failures are `SourceError`, an `InputError`: one line on stderr, exit status 2, naming the
  masked URL and, where there is one, the height. HTTP 401/403 is `AuthError`
  ("authentication failed"), raised at once (never retried, the secret never formatted).
* `HttpClient.request` retries what can pass (connection refused/reset, timeouts, HTTP 429
  and 5xx other than a JSON-RPC error reply) `retries` times with exponential backoff, then
  fails naming the last cause.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx

from gpu_engine.errors import InputError

BACKOFF_S = 0.5  # first retry delay; doubles each retry
MAINNET_GENESIS = "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f"
ZERO_HASH = "0" * 64


class SourceError(InputError):
    """A header source failed or answered something unusable (one line, exit 2)."""


class AuthError(SourceError):
    """HTTP 401/403: the credentials were refused (or are needed)."""


class Unreachable(SourceError):
    """The source did not answer usably after the retries (connection, timeout, 429/5xx)."""


def split_url(url: str) -> tuple[str, str | None, str | None]:
    """(url without userinfo, user or None, password or None). Refuses what is not http(s)."""
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError on a bad port
    except ValueError as exc:
        raise InputError(f"--source: not a URL: {mask_url(url)} ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(f"--source: not an http(s) URL: {mask_url(url)}")
    host = parts.hostname
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = host if port is None else f"{host}:{port}"
    clean = urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
    user = parts.username
    pw = parts.password
    return clean, (unquote(user) if user is not None else None), (unquote(pw) if pw is not None else None)


def mask_url(url: str) -> str:
    """The URL with any `user:pass@` removed (safe to print)."""
    try:
        parts = urlsplit(str(url))
    except ValueError:
        return "<unparsable URL>"
    if "@" not in parts.netloc:
        return urlunsplit((parts.scheme, parts.netloc, parts.path, parts.query, ""))
    return urlunsplit((parts.scheme, "***@" + parts.netloc.rsplit("@", 1)[1], parts.path, parts.query, ""))


@dataclass(frozen=True)
class Credentials:
    """HTTP basic-auth credentials and where they came from (`origin` is printable, the password is not)."""

    user: str = field(repr=False)
    password: str = field(repr=False)
    origin: str = ""

    def __repr__(self) -> str:  # never the secret
        return f"Credentials(origin={self.origin!r})"

    def auth(self) -> httpx.BasicAuth:
        return httpx.BasicAuth(self.user, self.password)


def read_cookie(path, flag: str = "--rpc-cookie") -> Credentials:
    """Bitcoin Core's cookie file: one line `__cookie__:PASSWORD` (any `user:password` works)."""
    p = Path(path)
    if p.is_dir():
        raise InputError.at(p, None, flag, "is a directory, not a cookie file")
    try:
        text = p.read_text(encoding="utf-8", errors="strict")
    except OSError as exc:
        raise InputError.at(p, None, flag, f"cannot read the cookie file: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise InputError.at(p, None, flag, "not a cookie file (not text)") from None
    line = text.strip().splitlines()[0].strip() if text.strip() else ""
    user, sep, pw = line.partition(":")
    if not sep or not user or not pw:
        raise InputError.at(p, None, flag, "not a cookie file: expected one line USER:PASSWORD "
                                           "(Bitcoin Core writes __cookie__:...)")
    return Credentials(user, pw, f"{flag} {p}")


def core_credentials(url_user, url_password, cookie=None, env=None) -> Credentials | None:
    """Credentials for Bitcoin Core, first found wins: `user:pass@` in the URL, `--rpc-cookie`,
    BITCOIN_RPC_USER + BITCOIN_RPC_PASSWORD, BITCOIN_RPC_COOKIE (a cookie file path)."""
    env = os.environ if env is None else env
    if url_user is not None or url_password is not None:
        return Credentials(url_user or "", url_password or "", "the URL")
    if cookie is not None:
        return read_cookie(cookie)
    user, pw = env.get("BITCOIN_RPC_USER"), env.get("BITCOIN_RPC_PASSWORD")
    if user is not None or pw is not None:
        if not user or pw is None:
            raise InputError("BITCOIN_RPC_USER and BITCOIN_RPC_PASSWORD: set both (or neither)")
        return Credentials(user, pw, "BITCOIN_RPC_USER/BITCOIN_RPC_PASSWORD")
    if env.get("BITCOIN_RPC_COOKIE"):
        return read_cookie(env["BITCOIN_RPC_COOKIE"], "BITCOIN_RPC_COOKIE")
    return None


class Transient(Exception):
    """A failure worth retrying (the message is safe to print)."""


class HttpClient:
    """One thread-safe `httpx.Client` for a source, its retries and its printable label."""

    def __init__(self, url: str, credentials: Credentials | None, *, what: str, timeout: float = 60.0,
                 retries: int = 4, backoff_s: float | None = None, concurrency: int = 4,
                 transport: httpx.BaseTransport | None = None):
        self.url = url  # already without userinfo
        self.label = mask_url(url)
        self.what = what  # "Bitcoin Core JSON-RPC" | "Esplora"
        self.credentials = credentials
        self.retries = int(retries)
        self.backoff_s = float(BACKOFF_S if backoff_s is None else backoff_s)
        self.stop = threading.Event()
        self.requests = 0
        self._lock = threading.Lock()
        self.http = httpx.Client(
            base_url=url, auth=credentials.auth() if credentials else None,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 15.0)), follow_redirects=False,
            headers={"User-Agent": "gpu-sweep-engine-blocks"},
            limits=httpx.Limits(max_connections=max(1, concurrency), max_keepalive_connections=max(1, concurrency)),
            transport=transport, trust_env=not _loopback(url))

    def close(self) -> None:
        self.http.close()

    def error(self, problem: str, height: int | None = None) -> SourceError:
        where = f"height {height}: " if height is not None else ""
        return SourceError(f"{self.label}: {where}{problem}")

    def auth_failed(self, code: int) -> AuthError:
        if self.credentials is None:
            how = ("no credentials given (use --rpc-cookie PATH, BITCOIN_RPC_USER/BITCOIN_RPC_PASSWORD "
                   "or user:password@ in the URL)") if self.what.startswith("Bitcoin Core") else \
                "no credentials given (put user:password@ in the URL)"
        else:
            how = f"the credentials from {self.credentials.origin} were refused"
        return AuthError(f"{self.label}: authentication failed (HTTP {code}): {how}")

    def request(self, method: str, path: str, *, json=None, height: int | None = None,
                ok_statuses=(200,), expect: str = "a reply") -> httpx.Response:
        """One request with retries. Returns a response whose status is in `ok_statuses`; 401/403
        raise AuthError; other statuses and transport failures are retried while they may pass."""
        tries = 0
        while True:
            if self.stop.is_set():
                raise self.error("stopped")
            try:
                with self._lock:
                    self.requests += 1
                reply = self.http.request(method, path, json=json)
                code = reply.status_code
                if code in (401, 403):
                    raise self.auth_failed(code)
                if code in ok_statuses:
                    return reply
                if code == 429 or code >= 500:
                    raise Transient(f"HTTP {code}")
                raise self.error(f"HTTP {code} for {expect} ({_snippet(reply)})", height)
            except httpx.TransportError as exc:
                why = _transport_why(exc)
            except Transient as exc:
                why = str(exc)
            tries += 1
            if tries > self.retries:
                where = f"height {height}: " if height is not None else ""
                raise Unreachable(f"{self.label}: {where}cannot get {expect}: {why} ({self.retries} retries)")
            if self.stop.wait(self.backoff_s * 2 ** (tries - 1)):
                raise self.error("stopped")


def _loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return host in ("127.0.0.1", "localhost", "::1")


def _snippet(reply: httpx.Response, n: int = 120) -> str:
    text = " ".join(reply.text[:n].split())
    return text or "empty body"


def _transport_why(exc: httpx.TransportError) -> str:
    if isinstance(exc, httpx.ConnectError):
        return "cannot connect (connection refused or host unreachable)"
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "connection closed mid-reply"
    return type(exc).__name__


def check_genesis(seen: str, label: str) -> None:
    """Refuse a source on another chain (its block 0 is not mainnet's genesis)."""
    if seen != MAINNET_GENESIS:
        raise SourceError(f"{label}: the source is on another chain: its genesis block hash is {seen} "
                          f"(Bitcoin mainnet's is {MAINNET_GENESIS})")


def is_hash(value) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)

