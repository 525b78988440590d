"""``ruadapt train`` as the supervisor of the DeepSpeed launcher: master port, signals, exit codes.

The launcher used to be ``exec``'d: a ``kill -INT`` (what ``timeout``, a scheduler's cancel and job runners
send to one PID) then reached only DeepSpeed's ``runner.py``, which has no handler on a single node and died
with a traceback, while its child ``launch.py`` and every rank kept training and even wrote the output.

Now the launcher runs as a child in its own session (so it is one process group and a terminal's Ctrl-C
reaches only us), and on SIGINT/SIGTERM we send SIGTERM to that whole group: the ranks stop after the current
optimizer step without writing anything (:mod:`ruadapt.train.runner`), DeepSpeed's ``launch.py`` terminates
its ranks as well, and on a hostfile (pdsh) launch DeepSpeed's runner runs ``pkill`` of the launch command on
every node over pdsh. Whatever of the group is still alive after the grace period (or at a second signal) is
SIGKILLed. A hangup (SIGHUP) is a stop too, unless it is ignored (nohup). Exit code: 128 + the signal (130
SIGINT, 143 SIGTERM, 129 SIGHUP); otherwise the launcher's own code.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from ..errors import RuadaptError

DEFAULT_PORT = 29500  # DeepSpeed's and torch's default
PORT_TRIES = 200


def port_is_free(port: int) -> bool:
    """True when a rendezvous store could listen on ``port`` on every interface (IPv4 and, where the host has
    it, IPv6) — binding the way torch's TCPStore does, with SO_REUSEADDR, so TIME_WAIT does not count."""
    families = [(socket.AF_INET, "")] + ([(socket.AF_INET6, "::")] if socket.has_ipv6 else [])
    for family, host in families:
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return False
            if family == socket.AF_INET:
                raise
            # no IPv6 on this host: IPv4 decides
    return True


def pick_master_port(start: int = DEFAULT_PORT, tries: int = PORT_TRIES) -> int:
    """The first free port from ``start`` upward (29500 when nothing else runs, as DeepSpeed would use)."""
    for port in range(start, start + tries):
        if port_is_free(port):
            return port
    raise RuadaptError(f"no free port in {start}-{start + tries - 1} for the rendezvous; pass --master-port")


def master_port(explicit: int | None, hostfile: object) -> int | None:
    """The port to pass to the launcher, or None to keep DeepSpeed's default.

    With a hostfile the master is the first host of the file, usually not this machine: its ports cannot be
    checked from here, so an explicit port is passed as given and the default stays DeepSpeed's 29500.
    """
    if explicit is not None:
        if not 1 <= explicit <= 65535:
            raise RuadaptError(f"--master-port {explicit}: not a port number (1-65535)")
        if hostfile is None and not port_is_free(explicit):
            raise RuadaptError(f"--master-port {explicit}: the port is in use on this machine; "
                               "choose another or leave --master-port out to get a free one")
        return explicit
    return None if hostfile is not None else pick_master_port()


def _group_alive(pgid: int) -> bool:
    """Whether a process of the group still runs (zombies do not count: the launcher's orphans are reaped by
    init, not by us, so they may linger as zombies for a moment)."""
    import psutil

    for p in psutil.process_iter(["status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(p.pid) == pgid:
                return True
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return False


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


STOP_SIGNAL_ENV = "RUADAPT_STOP_SIGNAL_FILE"  # where the ranks read which signal stopped the run (see below)


def supervise(cmd: list[str], *, grace_s: float, env: dict[str, str] | None = None) -> tuple[int, int | None]:
    """Run ``cmd`` in a new session and wait until every process of its group is gone.

    Returns (exit code, the signal that stopped it or None). SIGINT/SIGTERM/SIGHUP sent to us become SIGTERM to
    the group; after ``grace_s`` seconds, or at a second signal, the group gets SIGKILL. A group that outlives the
    launcher without any signal (a crashed launcher leaves ranks behind) is terminated the same way, so no
    process of the run survives ``ruadapt train``.
    """
    received: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        received.append(signum)

    # SIGHUP too (a closed terminal): the launcher's own session would not see the hangup and would train on
    # without us. Under nohup SIGHUP is ignored, and stays so.
    stops = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGHUP] if signal.getsignal(signal.SIGHUP) != signal.SIG_IGN else [])
    previous = {s: signal.signal(s, on_signal) for s in stops}
    # every stop reaches the ranks as SIGTERM; this file tells their log which signal the user sent
    fd, note = tempfile.mkstemp(prefix="ruadapt-stop-signal-")
    os.close(fd)
    env = {**(os.environ if env is None else env), STOP_SIGNAL_ENV: note}
    try:
        proc = subprocess.Popen(cmd, start_new_session=True, env=env)
        pgid = proc.pid
        forwarded = 0
        deadline: float | None = None
        while True:
            if len(received) > forwarded:
                if forwarded == 0:
                    Path(note).write_text(signal.Signals(received[0]).name + "\n")
                    _killpg(pgid, signal.SIGTERM)
                    deadline = time.monotonic() + grace_s
                else:
                    _killpg(pgid, signal.SIGKILL)
                forwarded = len(received)
            rc = proc.poll()
            if rc is not None:
                if not _group_alive(pgid):
                    break
                if deadline is None:  # the launcher is gone but part of the run is not
                    _killpg(pgid, signal.SIGTERM)
                    deadline = time.monotonic() + grace_s
            if deadline is not None and time.monotonic() > deadline:
                _killpg(pgid, signal.SIGKILL)
                deadline = time.monotonic() + 3600  # once
            time.sleep(0.2)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        Path(note).unlink(missing_ok=True)
    if received:
        return 128 + received[0], received[0]
    return (rc if rc >= 0 else 128 - rc), None
