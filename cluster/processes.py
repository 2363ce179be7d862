"""Start, watch and stop one local server process (etcd, mosquitto, a Ray head).

Each process runs in its own session, so its whole process group can be
signalled and nothing of it outlives `stop()`. Its output goes to a log file
whose tail is quoted in every error, because that is where the reason is.

Nothing outlives its starter either, even one killed hard (SIGKILL runs none of
its clean-up): every process is started with Linux's parent-death signal, so it
gets SIGTERM when the process that started it dies, and stops as it would when
asked: a post stops its Ray cluster (whose agents would otherwise wait a minute
on a dead GCS), etcd and mosquitto save and exit. A killed demo so takes the
posts, their Ray clusters, etcd and the broker with it. The kernel sends that
signal when the *thread* that forked the child ends, not the process; so every
start forks from one daemon thread that lives as long as the process.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import psutil

from citypost.errors import InfrastructureError

LOG_TAIL_LINES = 30
# Only the end of a long log is read for an error message.
_TAIL_BYTES = 64 * 1024

# binary -> (Debian package, what to point the config at instead)
_INSTALL_HINTS: dict[str, tuple[str, str]] = {
    "etcd": ("etcd-server", "an existing cluster"),
    "mosquitto": ("mosquitto", "an existing broker"),
}

DEFAULT_EXTRA_DIRS: tuple[str, ...] = ("/usr/sbin", "/usr/local/sbin")

# util-linux's setpriv (Essential in Debian, so always there) sets the parent-death signal
# and execs the command. Not a preexec_fn: Python code in a child forked from a process
# with gRPC's threads crashed there (SIGSEGV, SIGABRT) under load.
_SETPRIV = ("setpriv", "--pdeathsig", "TERM", "--")


class _Forker:
    """One daemon thread that forks every child (see the module's note on threads)."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], object], queue.SimpleQueue[object]]]
        self._jobs = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def run(self, job: Callable[[], object]) -> object:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="forker", daemon=True)
                self._thread.start()
        answer: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._jobs.put((job, answer))
        result = answer.get()
        if isinstance(result, BaseException):
            raise result
        return result

    def _loop(self) -> None:
        while True:
            job, answer = self._jobs.get()
            try:
                answer.put(job())
            except BaseException as exc:  # handed to the caller, raised there
                answer.put(exc)


_forker = _Forker()


def popen_bound_to_us(argv: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
    """`subprocess.Popen` whose process gets SIGTERM when this process dies."""

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen([*_SETPRIV, *argv], **kwargs)  # type: ignore[call-overload]

    proc = _forker.run(start)
    assert isinstance(proc, subprocess.Popen)
    return proc


def find_binary(name: str, extra_dirs: Sequence[str] = DEFAULT_EXTRA_DIRS) -> str:
    """Absolute path of executable `name`, from PATH or else `extra_dirs`.

    /usr/sbin is often off a non-root PATH, and Debian puts mosquitto there.
    """
    found = shutil.which(name)
    if found is not None:
        return found
    for directory in extra_dirs:
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    package, alternative = _INSTALL_HINTS.get(name, (name, "an existing server"))
    raise InfrastructureError(
        f"{name} not found: install {package} (apt-get install {package}) "
        f"or point the config at {alternative}"
    )


def read_log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` lines of a log file, or a note saying why there are none."""
    try:
        with path.open("rb") as log:
            log.seek(0, os.SEEK_END)
            size = log.tell()
            log.seek(max(0, size - _TAIL_BYTES))
            data = log.read()
    except OSError as exc:
        return f"(no log: {exc})"
    text = data.decode("utf-8", errors="replace")
    tail = text.splitlines()[-lines:]
    return "\n".join(tail) if tail else "(log is empty)"


class ManagedProcess:
    """One server process in its own process group, logging to `log_path`.

    The process is reaped only by `stop()`: until then an exited process stays a
    zombie, so its PID (which is also its process group id) cannot be reused and
    signalling the group can never reach a stranger.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        own_group: bool = True,
    ) -> None:
        """`own_group`: start in a session of its own (stopped as a group), or stay in
        the caller's process group, so a signal to the caller's group reaches it too."""
        if not argv:
            raise InfrastructureError(f"{name}: empty command")
        self._own_group = own_group
        self.name = name
        self.argv: tuple[str, ...] = tuple(argv)
        self.log_path = log_path
        self._env = dict(env) if env is not None else None
        self._cwd = cwd
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"ManagedProcess({self.name!r}, pid={self.pid}, alive={self.alive})"

    @property
    def pid(self) -> int | None:
        """PID of the current (or last) run; None before the first start."""
        proc = self._proc
        return proc.pid if proc is not None else None

    @property
    def alive(self) -> bool:
        """True while the process runs (a stopped-by-SIGSTOP process counts as alive)."""
        with self._lock:
            return self._proc is not None and self._exit_code() is None

    @property
    def returncode(self) -> int | None:
        """Exit code once exited (negative: killed by that signal), else None."""
        with self._lock:
            return self._exit_code() if self._proc is not None else None

    def start(self) -> None:
        """Start the command; a previous run must have been stopped."""
        with self._lock:
            if self._proc is not None and self._proc.returncode is None:
                raise InfrastructureError(
                    f"{self.name} is already started (pid {self._proc.pid}); stop it first"
                )
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with self.log_path.open("ab") as log:
                # Restarts append to the same log; the marker separates runs.
                log.write(f"=== citypost: starting {' '.join(self.argv)}\n".encode())
                log.flush()
                try:
                    self._proc = popen_bound_to_us(
                        self.argv,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=self._env,
                        cwd=self._cwd,
                        start_new_session=self._own_group,
                        close_fds=True,
                    )
                except OSError as exc:
                    raise InfrastructureError(f"{self.name} failed to start: {exc}") from exc

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return read_log_tail(self.log_path, lines)

    def wait_ready(
        self, check: Callable[[], bool], timeout: float, *, interval: float = 0.05
    ) -> None:
        """Poll `check` until it returns True; fail fast if the process exits.

        An exception from `check` counts as "not ready yet" and is quoted if the
        deadline passes.
        """
        deadline = time.monotonic() + timeout
        last_error: BaseException | None = None
        if self._proc is None:
            raise InfrastructureError(f"{self.name} was never started")
        while True:
            code = self.returncode
            if code is not None:
                raise InfrastructureError(
                    f"{self.name} exited with code {code} before it was ready; "
                    f"last lines of {self.log_path}:\n{self.log_tail()}"
                )
            try:
                if check():
                    return
            except Exception as exc:  # any failure of a probe just means "not yet"
                last_error = exc
            if time.monotonic() >= deadline:
                why = f" (last check error: {last_error!r})" if last_error is not None else ""
                raise InfrastructureError(
                    f"{self.name} (pid {self.pid}) not ready after {timeout:g} s{why}; "
                    f"last lines of {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(interval)

    def wait_exit(self, timeout: float) -> bool:
        """Wait up to `timeout` s for the process to exit (without reaping it)."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to the process group (chaos: SIGKILL, SIGSTOP, SIGCONT...)."""
        with self._lock:
            if self._proc is None or self._proc.returncode is not None:
                raise InfrastructureError(f"{self.name} is not running; cannot send {sig}")
            self._signal_group(sig)

    def signal_session(self, sig: int) -> int:
        """Send `sig` to every process of this process's session (it must own one): its
        group and the groups its children made, e.g. a post, its Ray head and the Ray
        workers. Repeated until a scan finds nobody new, since a dying parent may still
        spawn. Works after the leader died too (its session outlives it while a member
        lives). Returns how many processes were signalled."""
        with self._lock:
            if not self._own_group:
                raise InfrastructureError(f"{self.name} has no session of its own")
            if self._proc is None:
                raise InfrastructureError(f"{self.name} was never started; cannot send {sig}")
            return signal_session(self._proc.pid, sig)

    def terminate(self) -> None:
        """Ask the process group to stop (SIGTERM), without waiting."""
        with self._lock:
            if self._proc is not None and self._proc.returncode is None:
                self._signal_group(signal.SIGTERM)
                # A SIGSTOPped process only acts on SIGTERM once continued.
                self._signal_group(signal.SIGCONT)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the group, wait, SIGKILL what remains, reap; returns the exit code.

        Idempotent: stopping a stopped (or never started) process returns at once.
        """
        with self._lock:
            proc = self._proc
            if proc is None:
                return None
            if proc.returncode is not None:
                return proc.returncode
            descendants = self._descendants()
            if self.alive:
                self.terminate()
                if not self.wait_exit(timeout):
                    self._signal_group(signal.SIGKILL)
                    if not self.wait_exit(timeout):
                        raise InfrastructureError(
                            f"{self.name} (pid {proc.pid}) survived SIGKILL for {timeout:g} s"
                        )
            # The leader is a zombie here, so the group id is still ours: sweep it.
            self._signal_group(signal.SIGKILL)
            code = proc.wait()
            self._kill_leftovers(descendants, timeout)
            return code

    def __enter__(self) -> ManagedProcess:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _exit_code(self) -> int | None:
        """Exit code if exited, peeking with WNOWAIT so the zombie is kept."""
        proc = self._proc
        assert proc is not None
        if proc.returncode is not None:
            return proc.returncode
        try:
            info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            # Reaped behind our back (someone waited on the PID); let Popen record it.
            return proc.poll()
        if info is None:
            return None
        return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status

    def _signal_group(self, sig: int) -> None:
        proc = self._proc
        assert proc is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if self._own_group:
                # start_new_session made the process its group leader: pgid == pid.
                os.killpg(proc.pid, sig)
            else:
                # In the caller's group: the process alone; its descendants are swept.
                os.kill(proc.pid, sig)

    def _descendants(self) -> list[psutil.Process]:
        """Children that may have left the process group (setsid); killed after stop."""
        proc = self._proc
        assert proc is not None
        try:
            children: list[psutil.Process] = psutil.Process(proc.pid).children(recursive=True)
        except psutil.Error:
            return []
        return children

    @staticmethod
    def _kill_leftovers(procs: list[psutil.Process], timeout: float) -> None:
        for child in procs:
            if _is_live(child):
                with contextlib.suppress(psutil.Error):
                    child.kill()
        # These are no longer our children: init reaps them, so a zombie counts as gone.
        deadline = time.monotonic() + timeout
        while any(_is_live(child) for child in procs) and time.monotonic() < deadline:
            time.sleep(0.01)


def signal_session(session: int, sig: int) -> int:
    """Send `sig` to every live process of `session` (a session leader's pid), repeated
    until a scan finds nobody new; returns how many processes were signalled."""
    signalled: set[int] = set()
    for _ in range(20):
        found = [pid for pid in _session_members(session) if pid not in signalled]
        if not found:
            break
        for pid in found:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        signalled.update(found)
        time.sleep(0.05)
    return len(signalled)


def _is_live(proc: psutil.Process) -> bool:
    """Running and not a zombie; is_running() checks the create time, so a reused PID is not."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _session_members(session: int) -> list[int]:
    pids = []
    for proc in psutil.process_iter(["pid", "status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
            if os.getsid(proc.pid) == session:
                pids.append(proc.pid)
    return pids
