"""Who may use the console: users with hashed passwords, roles, server-side sessions, CSRF tokens.

- **Users** live in ``<console state>/users.json`` (mode 0600), each with a role and a scrypt hash
  (stdlib ``hashlib.scrypt``, n=2^14, r=8, p=1, 16-byte salt): never the password itself. At first start,
  with no users file, an ``admin`` operator is created with a random password that is written to
  ``<console state>/initial-admin-password`` (0600) and never printed or logged: read it, log in, set your
  own with ``edgeloop console user add admin --role operator`` and delete the file.
- **Roles** are ordered: ``viewer`` sees every page; ``labeller`` also labels, adds classes, imports and
  exports data; ``operator`` also steers rollouts (approve, pause, resume, abort, rollback).
- **Sessions** are random 256-bit ids in an ``HttpOnly; SameSite=Strict`` cookie (``Secure`` when served
  over TLS), kept server-side in memory with an idle timeout: logging out or restarting the console ends
  them, and a stolen cookie cannot be replayed after it expires.
- **CSRF**: each session has its own random token; every state-changing request (all of them are
  ``POST``) must carry it in ``X-CSRF-Token`` or a ``csrf_token`` form field. Failed logins are throttled
  per client address.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ROLES", "Users", "Session", "Sessions", "LoginThrottle", "hash_password", "verify_password",
           "write_secret_file", "INITIAL_PASSWORD_FILE", "USERS_FILE"]

ROLES = ("viewer", "labeller", "operator")
USERS_FILE = "users.json"
INITIAL_PASSWORD_FILE = "initial-admin-password"
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
_NAME_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-@")


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        got = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p), dklen=32)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got.hex(), digest)


def write_secret_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600 from the start (tmp file + rename: never half-written)."""
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class Users:
    """``users.json``: ``{"users": {name: {"role": ..., "hash": ...}}}``; re-read when the file changes."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(state_dir)
        self.path = self.dir / USERS_FILE
        self._lock = threading.Lock()
        self._stamp: tuple[float, int] | None = None
        self._users: dict[str, dict[str, str]] = {}
        self._dummy = hash_password(secrets.token_hex(8))  # verified for unknown names: same time as a real one

    def ensure_initial(self) -> Path | None:
        """First start: create ``admin`` (operator) with a random password in a 0600 file; returns that file."""
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        if self.path.exists():
            return None
        password = secrets.token_urlsafe(18)
        self.set("admin", password, "operator")
        pw_file = self.dir / INITIAL_PASSWORD_FILE
        write_secret_file(pw_file, password + "\n")
        return pw_file

    def _load(self) -> dict[str, dict[str, str]]:
        with self._lock:
            try:
                st = self.path.stat()
            except FileNotFoundError:
                return {}
            stamp = (st.st_mtime, st.st_size)
            if stamp != self._stamp:
                self._users = json.loads(self.path.read_text(encoding="utf-8")).get("users", {})
                self._stamp = stamp
            return self._users

    def names(self) -> dict[str, str]:
        """name -> role."""
        return {n: u["role"] for n, u in sorted(self._load().items())}

    def set(self, name: str, password: str, role: str) -> None:
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}")
        if not name or len(name) > 64 or not set(name) <= _NAME_OK:
            raise ValueError("user name: 1-64 characters of letters, digits, '.', '_', '-', '@'")
        if len(password) < 10:
            raise ValueError("password: at least 10 characters")
        users = dict(self._load())
        users[name] = {"role": role, "hash": hash_password(password)}
        self._save(users)

    def remove(self, name: str) -> bool:
        users = dict(self._load())
        if users.pop(name, None) is None:
            return False
        self._save(users)
        return True

    def _save(self, users: dict[str, dict[str, str]]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        write_secret_file(self.path, json.dumps({"users": users}, indent=1) + "\n")

    def verify(self, name: str, password: str) -> str | None:
        """The user's role if the password is right, else None (same cost for unknown names)."""
        u = self._load().get(name)
        ok = verify_password(password, u["hash"] if u else self._dummy)
        return u["role"] if (u and ok and u.get("role") in ROLES) else None


@dataclass
class Session:
    id: str
    user: str
    role: str
    csrf: str
    created: float = field(default_factory=time.time)
    seen: float = field(default_factory=time.monotonic)

    def allows(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


class Sessions:
    """In-memory sessions with an idle timeout and a cap (the oldest go first)."""

    def __init__(self, idle_s: float = 8 * 3600.0, max_sessions: int = 1000) -> None:
        self.idle_s = idle_s
        self.max_sessions = max_sessions
        self._lock = threading.Lock()
        self._by_id: dict[str, Session] = {}

    def create(self, user: str, role: str) -> Session:
        s = Session(secrets.token_urlsafe(32), user, role, secrets.token_urlsafe(32))
        with self._lock:
            self._expire()
            while len(self._by_id) >= self.max_sessions:
                del self._by_id[next(iter(self._by_id))]
            self._by_id[s.id] = s
        return s

    def get(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        with self._lock:
            s = self._by_id.get(sid)
            if s is None:
                return None
            if time.monotonic() - s.seen > self.idle_s:
                del self._by_id[sid]
                return None
            s.seen = time.monotonic()
            return s

    def drop(self, sid: str | None) -> None:
        with self._lock:
            self._by_id.pop(sid or "", None)

    def _expire(self) -> None:
        now = time.monotonic()
        for sid in [k for k, s in self._by_id.items() if now - s.seen > self.idle_s]:
            del self._by_id[sid]


class LoginThrottle:
    """At most ``attempts`` failed logins per client address in ``window_s``; then refuse until they age out."""

    def __init__(self, attempts: int = 5, window_s: float = 300.0) -> None:
        self.attempts, self.window_s = attempts, window_s
        self._lock = threading.Lock()
        self._fails: dict[str, list[float]] = {}

    def blocked(self, client: str) -> bool:
        with self._lock:
            now = time.monotonic()
            fails = [t for t in self._fails.get(client, []) if now - t < self.window_s]
            self._fails[client] = fails
            if len(self._fails) > 10_000:  # bounded: forget the quiet ones
                self._fails = {k: v for k, v in self._fails.items() if v}
            return len(fails) >= self.attempts

    def failed(self, client: str) -> None:
        with self._lock:
            self._fails.setdefault(client, []).append(time.monotonic())

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._fails.pop(client, None)
