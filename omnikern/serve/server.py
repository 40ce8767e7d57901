"""Start and stop a real NVIDIA Triton Inference Server (the binary shipped in PyPI ``nvidia-pytriton``).

How the server is made to run on a plain CPU machine (all found by trying, tritonserver 2.51 from
``nvidia-pytriton==0.7.0``):

- The wheel holds ``pytriton/tritonserver/bin/tritonserver``, the python backend
  (``backends/python/libtriton_python.so`` + ``triton_python_backend_utils.py``) and one stub per
  Python version (``python_backend_stubs/3.X/triton_python_backend_stub``). Triton looks for the stub
  next to the backend library, so a backend directory ``<work>/backends/python/`` is laid out with
  links to those three files, the stub matching this interpreter.
- The stub embeds libpython: ``LD_LIBRARY_PATH`` starts with this interpreter's ``LIBDIR`` so it loads
  the matching ``libpython3.X.so`` (otherwise it takes whatever the system has, or fails to start).
- The embedded interpreter finds its ``sys.prefix`` by looking ``python3`` up on ``PATH``: the
  directory of ``sys.executable`` goes first on ``PATH`` so model.py sees this (virtual)
  environment's site-packages, omnikern included.
- The python backend's stub is built against numpy 1.x. With numpy 2 in that environment the model
  loads and ``as_numpy()`` of the inputs is right, but every response carrying a
  ``pb_utils.Tensor(name, ndarray)`` fails with "cannot reshape array of size 0 into shape ...".
  The environment must have numpy < 2, which ``nvidia-pytriton`` itself requires (numpy<2,>=1.21).
- Every listener binds 127.0.0.1 on free ports; the server runs in its own process group (the stubs
  are its children, in the same group), and stopping sends SIGTERM then SIGKILL to the whole group.
- A model that fails to load makes the server exit (``--exit-on-error`` is on by default), which
  ``start()`` notices at once and reports with the server's log.
"""

from __future__ import annotations

import atexit
import ctypes
import http.client
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TritonInstall", "TritonServer", "TritonServerError", "find_triton", "group_processes"]

LOOPBACK = "127.0.0.1"
_LOG_TAIL_CHARS = 6000
_PORT_RETRIES = 3


class TritonServerError(RuntimeError):
    """The server could not start (it exited, or was not ready by the deadline). The message ends
    with the tail of the server's log."""


@dataclass(frozen=True)
class TritonInstall:
    """Paths inside the installed ``nvidia-pytriton`` wheel."""

    binary: Path  # tritonserver
    python_backend: Path  # directory with libtriton_python.so and triton_python_backend_utils.py
    stub: Path  # triton_python_backend_stub for this Python version
    libs: Path  # the wheel's bundled shared libraries (nvidia_pytriton.libs)


def find_triton() -> TritonInstall:
    """Returns the paths of the tritonserver binary and python backend in the installed wheel.

    Raises:
        TritonServerError: ``nvidia-pytriton`` is not installed, or has no stub for this Python.
    """
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonServerError(
            "the tritonserver binary comes from the nvidia-pytriton wheel, which is not installed: "
            "pip install 'omnikern[serve]' (or nvidia-pytriton)"
        )
    root = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    install = TritonInstall(
        binary=root / "bin" / "tritonserver",
        python_backend=root / "backends" / "python",
        stub=root / "python_backend_stubs" / version / "triton_python_backend_stub",
        libs=root.parent.parent / "nvidia_pytriton.libs",
    )
    for path in (install.binary, install.python_backend / "libtriton_python.so", install.stub):
        if not path.exists():
            raise TritonServerError(f"nvidia-pytriton is incomplete or has no stub for Python {version}: {path} is missing")
    return install


def _free_port() -> int:
    # Another process may take the port between this close and the server's bind; start() retries
    # with new ports when the log says the address is in use.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        dst.symlink_to(src)
    except OSError:
        shutil.copy2(src, dst)


def _set_parent_death_signal() -> None:
    """In the child before exec: SIGTERM the server if the Python process that started it dies
    (even by SIGKILL), so a killed test run leaves no server behind. Linux only; best effort."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - never fail the exec over this
        pass


# Servers started by this process and not stopped yet: stopped at interpreter exit. A strong set, so
# that dropping the last reference to a running server cannot orphan its process group.
_RUNNING: set[TritonServer] = set()


@atexit.register
def _stop_all() -> None:
    for server in list(_RUNNING):
        server.stop()


class TritonServer:
    """A real ``tritonserver`` on loopback, in its own process group, for local use and tests.

    ``with TritonServer(repo) as server:`` starts it (waiting until every model is loaded) and always
    stops it, also on exceptions and KeyboardInterrupt. Clients connect to ``server.url_http`` /
    ``server.url_grpc`` (``"127.0.0.1:PORT"``, the form ``tritonclient`` takes).

    Args:
        model_repo: the model repository directory (``<name>/config.pbtxt`` + ``<name>/<version>/``).
        startup_timeout_s: how long ``start()`` waits for readiness before giving up.
        stop_timeout_s: how long ``stop()`` waits after SIGTERM before SIGKILL.
        work_dir: where the backend directory and ``tritonserver.log`` go; a temporary directory
            (removed by ``stop()``) when None.
        extra_args: more ``tritonserver`` flags, e.g. ``("--log-verbose=1",)``.

    Note: the parent-death signal that kills an orphaned server fires when the *thread* that called
    ``start()`` exits; start long-lived servers from a long-lived thread.
    """

    def __init__(
        self,
        model_repo: str | os.PathLike,
        *,
        startup_timeout_s: float = 60.0,
        stop_timeout_s: float = 10.0,
        work_dir: str | os.PathLike | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.model_repo = Path(model_repo).resolve()
        if startup_timeout_s <= 0:
            raise ValueError(f"startup_timeout_s must be > 0, got {startup_timeout_s!r}")
        if stop_timeout_s < 0:
            raise ValueError(f"stop_timeout_s must be >= 0, got {stop_timeout_s!r}")
        self.startup_timeout_s = float(startup_timeout_s)
        self.stop_timeout_s = float(stop_timeout_s)
        self.extra_args = tuple(extra_args)
        self._given_work_dir = Path(work_dir) if work_dir is not None else None
        self._work_dir: Path | None = None
        self._process: subprocess.Popen | None = None
        self._ports: dict[str, int] = {}
        self._lock = threading.Lock()
        self.startup_s: float | None = None  # seconds from spawn to ready, for reports
        self.last_pid: int | None = None  # the latest server process (= its group), also once stopped
        self._shm_before: set[str] = set()

    # ------------------------------------------------------------------ properties

    @property
    def url_http(self) -> str:
        """``"127.0.0.1:PORT"`` of the HTTP/REST endpoint."""
        return f"{LOOPBACK}:{self._port('http')}"

    @property
    def url_grpc(self) -> str:
        """``"127.0.0.1:PORT"`` of the gRPC endpoint."""
        return f"{LOOPBACK}:{self._port('grpc')}"

    @property
    def url_metrics(self) -> str:
        """``"http://127.0.0.1:PORT/metrics"``: Prometheus metrics."""
        return f"http://{LOOPBACK}:{self._port('metrics')}/metrics"

    @property
    def pid(self) -> int | None:
        """The server's pid, which is also its process-group id; None when not started."""
        return self._process.pid if self._process is not None else None

    @property
    def log_path(self) -> Path | None:
        return self._work_dir / "tritonserver.log" if self._work_dir is not None else None

    def _port(self, kind: str) -> int:
        if kind not in self._ports:
            raise RuntimeError("the server is not started: call start() first")
        return self._ports[kind]

    def is_alive(self) -> bool:
        """True while the server process runs."""
        return self._process is not None and self._process.poll() is None

    def read_log(self) -> str:
        """The server's log so far ('' before start)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    # ------------------------------------------------------------------ start / stop

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> TritonServer:
        """Starts the server and returns self once every model is loaded and the server is ready.

        Raises:
            ValueError: ``model_repo`` is not a directory.
            TritonServerError: the server exited during start-up (e.g. a model failed to load) or was
                not ready within ``startup_timeout_s``; the message holds the log's tail.
        """
        if not self.model_repo.is_dir():
            raise ValueError(f"model_repo must be a directory, got {str(self.model_repo)!r}")
        with self._lock:
            if self.is_alive():
                raise RuntimeError(f"the server is already running (pid {self.pid})")
            install = find_triton()
            self._prepare_work_dir(install)
            try:
                for attempt in range(_PORT_RETRIES):
                    self._spawn(install)
                    if self._wait_ready(last_attempt=attempt == _PORT_RETRIES - 1):
                        return self
            except BaseException:
                # KeyboardInterrupt included: never leave a half-started server behind.
                self._stop_locked(remove_work_dir=False)
                raise
        raise AssertionError("unreachable: _wait_ready raises on the last attempt")

    def _prepare_work_dir(self, install: TritonInstall) -> None:
        if self._work_dir is None:
            if self._given_work_dir is not None:
                self._work_dir = self._given_work_dir
                self._work_dir.mkdir(parents=True, exist_ok=True)
            else:
                self._work_dir = Path(tempfile.mkdtemp(prefix="omnikern-triton-"))
        backend = self._work_dir / "backends" / "python"
        if backend.exists():
            shutil.rmtree(backend)
        backend.mkdir(parents=True)
        _link_or_copy(install.python_backend / "libtriton_python.so", backend / "libtriton_python.so")
        _link_or_copy(install.python_backend / "triton_python_backend_utils.py", backend / "triton_python_backend_utils.py")
        _link_or_copy(install.stub, backend / "triton_python_backend_stub")

    def _environment(self, install: TritonInstall) -> dict[str, str]:
        env = dict(os.environ)
        libdir = sysconfig.get_config_var("LIBDIR") or ""
        library_path = [p for p in (libdir, str(install.libs), env.get("LD_LIBRARY_PATH", "")) if p]
        env["LD_LIBRARY_PATH"] = os.pathsep.join(library_path)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env["PYTHONUNBUFFERED"] = "1"  # prints from model.py reach the log in order
        # The server runs compiled kernels (or the C++ and torch paths on CPU), never the Triton
        # interpreter that CPU test runs switch on: it would turn every "auto" op into a slow
        # interpreted kernel.
        env.pop("TRITON_INTERPRET", None)
        return env

    def _spawn(self, install: TritonInstall) -> None:
        assert self._work_dir is not None
        self._ports = {kind: _free_port() for kind in ("http", "grpc", "metrics")}
        args = [
            str(install.binary),
            f"--model-repository={self.model_repo}",
            f"--backend-directory={self._work_dir / 'backends'}",
            f"--http-address={LOOPBACK}",
            f"--http-port={self._ports['http']}",
            f"--grpc-address={LOOPBACK}",
            f"--grpc-port={self._ports['grpc']}",
            f"--metrics-address={LOOPBACK}",
            f"--metrics-port={self._ports['metrics']}",
            # Our configs are complete: skip the extra stub start per model that auto-complete costs.
            "--disable-auto-complete-config",
            # SIGTERM waits this long for in-flight requests (the default is 30 s).
            f"--exit-timeout-secs={max(1, int(self.stop_timeout_s))}",
            *self.extra_args,
        ]
        self._shm_before = set(_all_shm_regions())
        log = open(self.log_path, "wb")  # noqa: SIM115 - handed to the child, closed right after
        try:
            self._spawned_at = time.monotonic()
            self._process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._environment(install),
                cwd=self._work_dir,
                start_new_session=True,  # own session and process group: pgid == pid
                preexec_fn=_set_parent_death_signal if sys.platform.startswith("linux") else None,  # noqa: PLW1509
            )
        finally:
            log.close()
        self.last_pid = self._process.pid
        _RUNNING.add(self)

    def _ready(self) -> bool:
        connection = http.client.HTTPConnection(LOOPBACK, self._ports["http"], timeout=2.0)
        try:
            connection.request("GET", "/v2/health/ready")
            return connection.getresponse().status == 200
        except OSError:
            return False
        finally:
            connection.close()

    def _wait_ready(self, last_attempt: bool) -> bool:
        """True when ready; False when the ports were taken and another attempt may succeed."""
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout_s
        delay = 0.05
        while True:
            code = self._process.poll()
            if code is not None:
                log = self.read_log()
                if "Address already in use" in log and not last_attempt:
                    self._stop_locked(remove_work_dir=False)
                    return False
                self._stop_locked(remove_work_dir=False)
                raise TritonServerError(f"tritonserver exited with code {code} during start-up" + self._log_tail(log))
            if self._ready():
                self.startup_s = time.monotonic() - self._spawned_at
                return True
            if time.monotonic() > deadline:
                log = self.read_log()
                self._stop_locked(remove_work_dir=False)
                raise TritonServerError(
                    f"tritonserver was not ready after {self.startup_timeout_s:g} s (stopped it)" + self._log_tail(log)
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)

    def _log_tail(self, log: str) -> str:
        tail = log[-_LOG_TAIL_CHARS:]
        # A failed load is reported early in the log and then buried under the shutdown messages:
        # its error lines (glog "E" severity) come first.
        errors = [line[:2000] for line in log.splitlines() if line[:1] == "E" and line[1:5].isdigit()][-8:]
        head = "\n--- errors ---\n" + "\n".join(errors) if errors else ""
        return f"{head}\n--- tail of {self.log_path} ---\n{tail}"

    def stop(self) -> None:
        """Stops the server and every process in its group: SIGTERM, then SIGKILL after
        ``stop_timeout_s``. Safe to call twice, or before start. Removes a temporary work dir."""
        with self._lock:
            self._stop_locked(remove_work_dir=True)

    def _stop_locked(self, remove_work_dir: bool) -> None:
        process, self._process = self._process, None
        self._ports = {}
        if process is not None:
            pgid = process.pid
            regions = _shm_regions(pgid)
            _signal_group(pgid, signal.SIGTERM)
            try:
                process.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                _signal_group(pgid, signal.SIGKILL)
                process.wait()
            # The stubs may outlive the server by a moment: nothing of the group may stay behind.
            deadline = time.monotonic() + self.stop_timeout_s
            while _group_alive(pgid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _group_alive(pgid):
                _signal_group(pgid, signal.SIGKILL)
            # A graceful stop unlinks the stubs' shared-memory regions; a killed stub, or a server
            # that exits on its own after a failed load (seen once), can leave them. Remove ours, and
            # any region that appeared since our spawn and that no live process maps any more.
            appeared = set(_all_shm_regions()) - self._shm_before
            orphans = appeared - _mapped_shm_regions() if appeared else set()
            for region in set(regions) | orphans:
                Path("/dev/shm", region).unlink(missing_ok=True)
            _RUNNING.discard(self)
        if remove_work_dir and self._given_work_dir is None and self._work_dir is not None:
            shutil.rmtree(self._work_dir, ignore_errors=True)
            self._work_dir = None

    def __repr__(self) -> str:
        state = f"running pid={self.pid} http={self.url_http} grpc={self.url_grpc}" if self.is_alive() else "stopped"
        return f"TritonServer({str(self.model_repo)!r}, {state})"


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def group_processes(pgid: int) -> list[int]:
    """Pids of the live (not zombie) processes in process group ``pgid``, read from /proc.

    Zombies are skipped: once the server exits, its stubs are re-parented and reaped by whatever
    init the machine has, which may take a while and cannot be hurried.
    """
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()  # after "pid (comm)": state ppid pgrp ...
        except OSError:
            continue  # exited meanwhile
        if int(fields[2]) == pgid and fields[0] != b"Z":
            pids.append(int(entry))
    return pids


def _shm_regions(pgid: int) -> list[str]:
    """Names of the python-backend shared-memory regions (in /dev/shm) used by group ``pgid``:
    each stub gets its region's name as its second argument."""
    regions = []
    for pid in group_processes(pgid) if os.path.isdir("/proc") else []:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                args = handle.read().split(b"\0")
        except OSError:
            continue
        if len(args) > 2 and args[0].endswith(b"triton_python_backend_stub"):
            name = args[2].decode(errors="replace")
            if name.startswith(_SHM_PREFIX) and "/" not in name:
                regions.append(name)
    return regions


_SHM_PREFIX = "triton_python_backend_shm_region"


def _all_shm_regions() -> list[str]:
    try:
        return [name for name in os.listdir("/dev/shm") if name.startswith(_SHM_PREFIX)]
    except OSError:
        return []


def _mapped_shm_regions() -> set[str]:
    """Python-backend regions some live process still maps (from every readable /proc/*/maps)."""
    mapped = set()
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/maps", "rb") as handle:
                for line in handle:
                    if _SHM_PREFIX.encode() in line:
                        mapped.add(os.path.basename(line.split()[-1].decode(errors="replace")))
        except OSError:
            continue
    return mapped


def _group_alive(pgid: int) -> bool:
    if os.path.isdir("/proc"):
        return bool(group_processes(pgid))
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
