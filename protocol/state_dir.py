"""Where a long-running process keeps its state: never relative to the working directory in service mode.

Interactive use keeps the friendly defaults (``./edgeloop-edge``, ``./edgeloop-trainer``, ...: next to where
you ran the command). Under systemd the working directory is ``/`` unless a unit says otherwise, so a relative
default would scatter state over the root file system. *Service mode* is known from the environment systemd
gives every service: ``$INVOCATION_ID``. In service mode a relative state directory is replaced by systemd's
``$STATE_DIRECTORY`` (set by ``StateDirectory=``, e.g. ``/var/lib/edgeloop/edge``), and refused when there is
none; an absolute path is used as given. The units in deploy/systemd/ pass absolute paths *and* set
``StateDirectory=`` (which also creates the directory with the service user's ownership).
"""
from __future__ import annotations

import logging
import os
from typing import Mapping

__all__ = ["service_mode", "service_state_dir"]

log = logging.getLogger("edgeloop.state_dir")


def service_mode(environ: Mapping[str, str] | None = None) -> bool:
    """True when running as a systemd service (systemd sets ``INVOCATION_ID`` for every unit it starts)."""
    env = os.environ if environ is None else environ
    return bool(env.get("INVOCATION_ID"))


def service_state_dir(path: str, what: str, environ: Mapping[str, str] | None = None) -> str:
    """``path`` if it is absolute or not in service mode; else ``$STATE_DIRECTORY``; else a ValueError."""
    env = os.environ if environ is None else environ
    if os.path.isabs(path) or not service_mode(env):
        return path
    state = (env.get("STATE_DIRECTORY") or "").split(":")[0]
    if state and os.path.isabs(state):
        log.info("%s: state directory %s (systemd StateDirectory=) instead of %s, relative to the working "
                 "directory", what, state, path)
        return state
    raise ValueError(f"{what}: the state directory {path!r} is relative to the working directory, and running "
                     "under systemd that is no place for state: pass an absolute --state-dir or set "
                     "StateDirectory= in the unit")
