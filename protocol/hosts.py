"""Which addresses only this machine can reach.

Why here: everything that listens (the broker launcher, the trainer's HTTP API, the console, the metrics
endpoints) binds loopback by default and warns or refuses when told to bind anything else; they must agree
on what "loopback" means.
"""
from __future__ import annotations

import ipaddress

__all__ = ["is_loopback"]


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses (127.0.0.0/8, ::1); False for names and the rest."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
