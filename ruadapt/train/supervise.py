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

The same rule holds before the launch (issue 25): :func:`stop_on_signals` makes SIGINT, SIGTERM and SIGHUP raise
:class:`Stopped` in the main process of ``ruadapt train`` and ``ruadapt data prepare`` while they prepare data,
so every phase stops with one line and 128 + the signal; a signal this process inherited as ignored (``nohup``, a
script's background job) stays ignored in every phase, the launcher and the ranks included. The processes we
start die with us however we end, SIGKILL included: the tokenizer workers and the launcher get a parent-death
signal (:func:`die_with_parent`), and each rank watches ``ruadapt train`` itself (:func:`watch_supervisor`), since
DeepSpeed's launcher on one node has no SIGTERM handler and leaves its ``launch.py`` and ranks behind.

The default master port is a random free one below the kernel's ephemeral range (two launches a few seconds apart
no longer both take "the first free one from 29500"); when rank 0 still finds it taken at the rendezvous, it exits
:data:`PORT_IN_USE_EXIT` and ``ruadapt train`` relaunches on another port.
"""

from __future__ import annotations

import errno
import glob
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from multiprocessing.context import SpawnContext, SpawnProcess
from pathlib import Path

from ..errors import RuadaptError

DEFAULT_PORT = 29500  # DeepSpeed's and torch's default: the lowest port a default pick may get
PORT_TRIES = 200
PORT_IN_USE_EXIT = 98  # a rank's exit code when its rendezvous port was taken (errno EADDRINUSE on Linux)
PORT_RELAUNCHES = 3  # how often `ruadapt train` re-picks a default port that was taken before the rendezvous
SUPERVISOR_ENV = "RUADAPT_SUPERVISOR"  # "host:pid:start time" of `ruadapt train`, watched by its ranks
WATCH_INTERVAL_S = 0.5
WATCH_GRACE_S = 10.0  # a rank whose supervisor is gone gets this long to finish its step before it SIGKILLs itself
SHM_EXTENSION = "deepspeed_shm_comm"  # the C++ op DeepSpeed builds at its first CPU init


# ------------------------------------------------------------------------------------------------ signals
class Stopped(BaseException):
    """A stop signal reached the main process outside the supervised launch (while it prepared data).

    A BaseException, like KeyboardInterrupt, so ``except Exception`` clean-up code does not swallow it, while
    every ``finally`` (temp dirs removed, worker pools shut down, locks released) still runs on the way out.
    """

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def stop_signals() -> list[int]:
    """The signals that stop a run: SIGINT, SIGTERM and SIGHUP, except one this process inherited as ignored.

    ``nohup`` ignores SIGHUP, and a POSIX shell starts a script's background jobs with SIGINT ignored: the user
    (or their shell) said these must not stop the run, so they stay ignored in every phase and, inherited
    through exec, in the launcher and the ranks too (see :func:`keep_ignored` on the rank side).
    """
    return [s for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP) if signal.getsignal(s) != signal.SIG_IGN]


@contextmanager
def stop_on_signals(*, raising: bool = True) -> Iterator[list[int]]:
    """Within the block, the stop signals (:func:`stop_signals`) are recorded in the yielded list; with
    ``raising`` the first one also raises :class:`Stopped` where the main thread is (later ones are only
    recorded, so clean-up is not interrupted). Outside the main thread (an embedding application) nothing is
    installed: Python only runs signal handlers there."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def on_signal(signum: int, frame: object) -> None:
        received.append(signum)
        if raising and len(received) == 1:
            _kill_pool_workers()
            raise Stopped(signum)

    previous = {s: signal.signal(s, on_signal) for s in stop_signals()}
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _kill_pool_workers() -> None:
    """SIGKILL this process's multiprocessing children (the tokenizer pool's workers): what they are encoding is
    discarded anyway, and a pool shut down gracefully would first finish every block in flight — tens of
    seconds on a busy machine. The pool then finds them dead and its shutdown returns at once."""
    import multiprocessing

    for child in multiprocessing.active_children():
        try:
            child.kill()
        except (OSError, ValueError):
            pass


def keep_ignored(ignored: Sequence[int]) -> None:
    """In a rank, after its own stop handlers are installed: put back the signals it inherited as ignored."""
    for s in ignored:
        signal.signal(s, signal.SIG_IGN)


# ------------------------------------------------------------------------------------ dying with the parent
PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL, parent: int | None = None) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent ends (Linux ``PR_SET_PDEATHSIG``).

    ``parent`` is the pid that must still be our parent: when it died before the request was made, we are
    already an orphan and exit at once (the usual race of this call). Elsewhere than Linux: nothing (the ranks'
    watchdog still covers the launch).
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        return
    if parent is not None and os.getppid() != parent:
        os._exit(128 + int(sig))


def tokenizer_worker_init() -> None:
    """In a tokenizing worker (started by :func:`worker_context`): SIGINT ignored, then unblocked — a terminal's
    Ctrl-C reaches the whole group, the parent stops the pool, and a KeyboardInterrupt in a worker would only
    print a traceback; killed when the parent ends, however it ends."""
    import multiprocessing

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # a Ctrl-C that came meanwhile is dropped
    parent = multiprocessing.parent_process()
    die_with_parent(signal.SIGKILL, parent.pid if parent is not None else None)


class QuietStartProcess(SpawnProcess):
    """A spawned process that starts with SIGINT blocked (the mask survives fork and exec; a handler does not),
    so a Ctrl-C while a worker still imports numpy leaves no traceback: :func:`tokenizer_worker_init` then
    ignores and unblocks it. The parent's own SIGINT is only held back for the fork itself. (At module level:
    spawn pickles the process object by reference.)"""

    def start(self) -> None:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            super().start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


class QuietStartContext(SpawnContext):
    Process = QuietStartProcess


def worker_context() -> SpawnContext:
    """The multiprocessing context of the tokenizer pool (spawn: this process may already run threads)."""
    return QuietStartContext()


def supervisor_env() -> dict[str, str]:
    """The variable that tells the ranks which process to watch: this host, this pid and its start time (a pid
    alone could be reused by an unrelated process)."""
    import psutil

    return {SUPERVISOR_ENV: f"{socket.gethostname()}:{os.getpid()}:{psutil.Process().create_time()}"}


def _alive(pid: int, started: float) -> bool:
    import psutil

    try:
        p = psutil.Process(pid)
        return abs(p.create_time() - started) < 1e-3 and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def watch_supervisor(
    value: str | None = None, *, interval_s: float = WATCH_INTERVAL_S, grace_s: float = WATCH_GRACE_S
) -> threading.Thread | None:
    """In a rank: stop it when the ``ruadapt train`` that started it is gone (SIGKILL, the OOM killer).

    A daemon thread polls the supervisor named by :data:`SUPERVISOR_ENV`; when it is gone, the rank sends
    itself SIGTERM (the runner stops after the current step, writing nothing) and SIGKILLs itself ``grace_s``
    later if still alive (stuck in a collective with a rank that already left). When one rank exits, DeepSpeed's
    ``launch.py`` terminates the others and exits, and with it the launcher. A rank on another host skips this
    (the supervisor's pid means nothing there; DeepSpeed's runner, which gets SIGTERM when the supervisor dies,
    reaches those ranks over pdsh). The parent-death signal covers a killed ``launch.py``.
    """
    die_with_parent(signal.SIGTERM)
    value = os.environ.get(SUPERVISOR_ENV, "") if value is None else value
    try:
        host, pid, started = value.rsplit(":", 2)
        pid_i, started_f = int(pid), float(started)
    except ValueError:
        return None  # not started by `ruadapt train` (a manual `deepspeed ... --module ruadapt.train`)
    if host != socket.gethostname():
        return None

    def watch() -> None:
        while _alive(pid_i, started_f):
            time.sleep(interval_s)
        import logging

        logging.getLogger("ruadapt.train").warning(
            "ruadapt train (pid %d) is gone; stopping this rank (SIGKILL in %.0f s)", pid_i, grace_s
        )
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_s)
        os.kill(os.getpid(), signal.SIGKILL)

    t = threading.Thread(target=watch, name="ruadapt-supervisor-watch", daemon=True)
    t.start()
    return t


def _exec_child(argv: list[str]) -> None:
    """``python -m ruadapt.train.supervise PARENT_PID CMD...``: take SIGTERM as parent-death signal, then become
    CMD. How the launcher is started: the signal survives exec, so DeepSpeed's runner gets SIGTERM when
    ``ruadapt train`` is SIGKILLed (on a hostfile launch its handler then stops every node over pdsh). A wrapper
    rather than ``preexec_fn``, which may deadlock in a process that runs threads (tokenizers, tqdm)."""
    die_with_parent(signal.SIGTERM, int(argv[0]))
    os.execv(argv[1], argv[1:])


# ------------------------------------------------------------------------------------------------- ports
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


def port_range() -> tuple[int, int]:
    """Ports a default pick draws from: 29500 up to just below the kernel's ephemeral range (where outgoing
    connections get their ports, so a port checked free here is not handed to some client a minute later)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return DEFAULT_PORT, max(low - 1, DEFAULT_PORT + PORT_TRIES)


def pick_master_port(tries: int = PORT_TRIES, avoid: set[int] | None = None) -> int:
    """A random free port of :func:`port_range`: two launches started together rarely draw the same one (the
    check and rank 0's bind are tens of seconds apart, so "the first free one" was the same for both)."""
    low, high = port_range()
    rng = random.SystemRandom()
    for _ in range(tries):
        port = rng.randint(low, high)
        if port not in (avoid or set()) and port_is_free(port):
            return port
    raise RuadaptError(f"no free port in {low}-{high} for the rendezvous after {tries} tries; pass --master-port")


def master_port(explicit: int | None, hostfile: object) -> int | None:
    """The port to pass to the launcher, or None to keep DeepSpeed's default.

    With a hostfile the master is the first host of the file, usually not this machine: its ports cannot be
    checked from here, so an explicit port is passed as given and the default stays DeepSpeed's 29500.
    """
    if explicit is not None:
        if not 1 <= explicit <= 65535:
            raise RuadaptError(f"--master-port {explicit}: not a port number (1-65535)")
        if hostfile is None and not port_is_free(explicit):
            raise RuadaptError(
                f"--master-port {explicit}: the port is in use on this machine; "
                "choose another or leave --master-port out to get a free one"
            )
        return explicit
    return None if hostfile is not None else pick_master_port()


def is_port_in_use(error: BaseException) -> bool:
    """Whether a rank's exception is its rendezvous store failing to bind (torch: DistNetworkError ... EADDRINUSE)."""
    text = f"{type(error).__name__}: {error}"
    return "EADDRINUSE" in text or "ddress already in use" in text


# ------------------------------------------------------------------------------------- DeepSpeed's extension
def extension_dir(env: dict[str, str]) -> Path:
    """Where torch builds C++ extensions for this launch: the user's ``TORCH_EXTENSIONS_DIR``, else a folder of
    this environment (``sys.prefix/var/cache/torch_extensions``) when it is writable, else torch's default
    (~/.cache/torch_extensions, shared by every environment of the user: each rebuilds what another built)."""
    if env.get("TORCH_EXTENSIONS_DIR"):
        return Path(env["TORCH_EXTENSIONS_DIR"])
    if os.access(sys.prefix, os.W_OK):
        return Path(sys.prefix) / "var" / "cache" / "torch_extensions"
    return Path.home() / ".cache" / "torch_extensions"


def runs_on_cpu(env: dict[str, str]) -> bool:
    """Whether DeepSpeed will pick its CPU accelerator (``DS_ACCELERATOR=cpu``, or unset and no CUDA device)."""
    name = env.get("DS_ACCELERATOR", "")
    if name:
        return name == "cpu"
    import torch

    return not torch.cuda.is_available()


def prepare_extension(env: dict[str, str]) -> str | None:
    """Set ``TORCH_EXTENSIONS_DIR`` in the ranks' ``env`` and check what a CPU launch needs to build DeepSpeed's
    shared-memory op; returns the line to print while it builds (None when built already or not on CPU).

    A missing C++ compiler is a one-line error here, instead of a double traceback from every rank."""
    ext = extension_dir(env)
    env["TORCH_EXTENSIONS_DIR"] = str(ext)
    if not runs_on_cpu(env):
        return None
    # with TORCH_EXTENSIONS_DIR set, torch builds into DIR/NAME (no per-python/cuda subfolder)
    if glob.glob(str(ext / SHM_EXTENSION / f"{SHM_EXTENSION}*.so")):
        return None
    compiler = env.get("CXX") or "c++"
    if shutil.which(compiler, path=env.get("PATH")) is None:
        raise RuadaptError(
            f"DeepSpeed on CPU compiles its C++ op {SHM_EXTENSION} at the first launch and no C++ "
            f"compiler was found ({compiler!r} not on PATH): install one (e.g. `apt install g++`) or "
            "set CXX; it is built once into " + str(ext)
        )
    return (
        f"ruadapt train: DeepSpeed is building its CPU op {SHM_EXTENSION} into {ext} (once per environment; 30-120 s)"
    )


SHM_DIR = Path("/dev/shm")
SHM_BUFFER = "deepspeed_allreduce_buffer"  # DeepSpeed's CPU allreduce workspace, one per rank (csrc/cpu/comm/shm.cpp)


def remove_allreduce_buffers(port: int, shm_dir: Path = SHM_DIR) -> list[str]:
    """Unlink the shared-memory files DeepSpeed's CPU allreduce left for the run on ``port``; returns their names.

    Each rank of a CPU launch creates ``/dev/shm/deepspeed_allreduce_buffer_<uid>_<addr>_<port>_<rank>`` (≈ 69 MB
    of RAM each) and DeepSpeed never unlinks it (its ``shared_close`` is not called), so every launch used to leave
    world-size × 69 MB of memory behind until reboot — 12 GB on the 2-core dev machine after a day of tests. Called
    once every process of the run is gone; the port was this run's alone (checked free, and the rendezvous binds it).
    """
    pattern = f"{SHM_BUFFER}_{os.getuid()}_*_{port}_*"
    removed = []
    for f in sorted(shm_dir.glob(pattern)):
        try:
            f.unlink()
            removed.append(f.name)
        except OSError:  # another user's, or gone already
            pass
    return removed


# ------------------------------------------------------------------------------------------------ supervise
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

    Returns (exit code, the signal that stopped it or None). The stop signals (:func:`stop_signals`) sent to
    us become SIGTERM to the group; after ``grace_s`` seconds, or at a second signal, the group gets SIGKILL. A
    group that outlives the launcher without any signal (a crashed launcher leaves ranks behind) is terminated
    the same way, so no process of the run survives ``ruadapt train``. The launcher gets SIGTERM when we die.
    """
    # every stop reaches the ranks as SIGTERM; this file tells their log which signal the user sent
    fd, note = tempfile.mkstemp(prefix="ruadapt-stop-signal-")
    os.close(fd)
    env = {**(os.environ if env is None else env), STOP_SIGNAL_ENV: note}
    try:
        with stop_on_signals(raising=False) as received:
            rc = _supervise_group(cmd, grace_s, env, received, Path(note))
    finally:
        Path(note).unlink(missing_ok=True)
    if received:
        return 128 + received[0], received[0]
    return (rc if rc >= 0 else 128 - rc), None


def _supervise_group(cmd: list[str], grace_s: float, env: dict[str, str], received: list[int], note: Path) -> int:
    """Start ``cmd`` (through the parent-death wrapper) in a session of its own and wait until its whole process
    group is gone, forwarding the stop signals ``received`` lists; returns the launcher's exit status."""
    wrapped = [sys.executable, "-m", "ruadapt.train.supervise", str(os.getpid()), *cmd]
    proc = subprocess.Popen(wrapped, start_new_session=True, env=env)
    pgid = proc.pid
    forwarded = 0
    deadline: float | None = None
    while True:
        if len(received) > forwarded:
            if forwarded == 0:
                note.write_text(signal.Signals(received[0]).name + "\n")
                _killpg(pgid, signal.SIGTERM)
                deadline = time.monotonic() + grace_s
            else:
                _killpg(pgid, signal.SIGKILL)
            forwarded = len(received)
        rc = proc.poll()
        if rc is not None:
            if not _group_alive(pgid):
                return rc
            if deadline is None:  # the launcher is gone but part of the run is not
                _killpg(pgid, signal.SIGTERM)
                deadline = time.monotonic() + grace_s
        if deadline is not None and time.monotonic() > deadline:
            _killpg(pgid, signal.SIGKILL)
            deadline = time.monotonic() + 3600  # once
        time.sleep(0.2)


if __name__ == "__main__":
    _exec_child(sys.argv[1:])
