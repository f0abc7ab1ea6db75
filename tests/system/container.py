"""Boot the cached Debian rootfs with systemd-nspawn and run commands in it, for system tests.

    with Container(rootfs) as ct:
        ct.run(["systemctl", "start", "nginx"])
        status, body = ct.curl("http://localhost/")

Facts this relies on (checked on the Debian 12 CI hosts, see docs real-systemd.md):
- There is no systemd on the host, so nspawn needs --register=no --keep-unit, and
  --console=passive because there is no terminal.
- --volatile=overlay mounts an overlayfs with a tmpfs upper layer over the rootfs: writes in the
  container never reach the cached rootfs, and it takes no lock on the directory, so several
  containers (parallel sessions, two worktrees) can boot the same rootfs at once. If the kernel
  has no overlayfs we fall back to a private copy (cp -a --reflink=auto) per container.
- --private-network gives the container only its own loopback, so port 80 inside never clashes
  with the host, and curl must run inside the container.
- The machine name keys nspawn's /run/systemd/nspawn/propagate/NAME dir, so it must be unique.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

PROJECT_DIR = Path(__file__).resolve().parents[2]
DEFAULT_ROOTFS = Path(
    os.environ.get("FCGICOMPOSE_ROOTFS", "/var/cache/fcgicompose/rootfs-bookworm")
)
PROJECT_MOUNT = "/opt/fcgicompose"

# Commands in the container get a clean, predictable environment instead of the host's (a
# host PYTHONPATH, pyenv PATH or locale must not leak in).
CONTAINER_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
    "SYSTEMD_PAGER": "",
    "SYSTEMD_COLORS": "0",
}


class ContainerError(RuntimeError):
    """The container could not be booted, or something in it failed."""


class CommandError(ContainerError):
    """A command run in the container exited non-zero (check=True)."""

    def __init__(self, result: subprocess.CompletedProcess[str]) -> None:
        self.result = result
        super().__init__(
            f"command {result.args!r} exited {result.returncode}\n"
            f"--- stdout ---\n{result.stdout}--- stderr ---\n{result.stderr}"
        )


def overlay_supported() -> bool:
    """Whether the kernel knows overlayfs (what --volatile=overlay needs)."""
    try:
        return any(line.split()[-1] == "overlay" for line in Path("/proc/filesystems").open())
    except OSError:
        return False


def boot_problem() -> str | None:
    """Why containers cannot be booted here, or None if they can."""
    if os.geteuid() != 0:
        return "system tests need root (systemd-nspawn)"
    for tool in ("systemd-nspawn", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} not found (apt-get install systemd-container util-linux)"
    return None


class Container:
    """A booted systemd container on top of a cached rootfs; use it as a context manager."""

    def __init__(
        self,
        rootfs: Path = DEFAULT_ROOTFS,
        *,
        name: str | None = None,
        project_dir: Path = PROJECT_DIR,
        boot_timeout: float = 60.0,
        overlay: bool | None = None,
    ) -> None:
        self.rootfs = rootfs
        self.name = name or f"fcgicompose-{secrets.token_hex(4)}"
        self.project_dir = project_dir
        self.boot_timeout = boot_timeout
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
        self.log_path = self.workdir / "nspawn.log"
        self.overlay = overlay_supported() if overlay is None else overlay  # False: copy
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None
        self.boot_seconds: float | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.poweroff()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.poweroff()

    @property
    def pid(self) -> int:
        """PID (on the host) of the container's init."""
        if self._pid is None:
            raise ContainerError("container is not running")
        return self._pid

    def start(self) -> None:
        """Boot the container and wait until systemd reports running or degraded."""
        if not (self.rootfs / "usr/lib/systemd/systemd").exists():
            raise ContainerError(f"no rootfs at {self.rootfs}: run scripts/make-rootfs")
        root = self.rootfs
        volatile = ["--volatile=overlay"]
        if not self.overlay:
            # No overlayfs in this kernel: boot a private copy so the cache stays clean.
            root = self.workdir / "rootfs"
            subprocess.run(
                ["cp", "-a", "--reflink=auto", f"{self.rootfs}/.", str(root)], check=True
            )
            volatile = []
        argv = [
            "systemd-nspawn",
            "-D", str(root),
            *volatile,
            "-b",
            "--register=no",
            "--keep-unit",
            "--console=passive",
            "--private-network",
            f"--machine={self.name}",
            f"--bind-ro={self.project_dir}:{PROJECT_MOUNT}",
        ]  # fmt: skip
        started = time.monotonic()
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # setsid: no controlling terminal, own process group
            )  # fmt: skip
        self._pid = self._find_init()
        self._wait_running()
        self.boot_seconds = time.monotonic() - started

    def _deadline_check(self, deadline: float, what: str) -> None:
        assert self._proc is not None
        if self._proc.poll() is not None:
            raise ContainerError(
                f"systemd-nspawn exited {self._proc.returncode} while {what}\n{self.log_tail()}"
            )
        if time.monotonic() > deadline:
            raise ContainerError(f"timed out {what}\n{self.log_tail()}")

    def _find_init(self) -> int:
        """Find the container's init: nspawn's child whose PID in its own namespace is 1."""
        assert self._proc is not None
        deadline = time.monotonic() + self.boot_timeout
        while True:
            self._deadline_check(deadline, "waiting for the container's init")
            children = Path(f"/proc/{self._proc.pid}/task/{self._proc.pid}/children")
            try:
                pids = [int(p) for p in children.read_text().split()]
            except OSError:
                pids = []
            for pid in pids:
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue
                nspid = next(
                    (ln.split()[1:] for ln in status.splitlines() if ln.startswith("NSpid:")), []
                )
                if nspid[-1:] == ["1"] and len(nspid) > 1:
                    return pid
            time.sleep(0.05)

    def _wait_running(self) -> None:
        deadline = time.monotonic() + self.boot_timeout
        state = ""
        while True:
            self._deadline_check(deadline, f"waiting for boot (last state {state!r})")
            result = self.run(["systemctl", "is-system-running"], check=False, timeout=10)
            state = result.stdout.strip()
            if state in ("running", "degraded"):
                return
            time.sleep(0.1)

    def poweroff(self, timeout: float = 30.0) -> None:
        """Shut the container down cleanly; force it if that takes longer than timeout."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                if self._pid is None:  # boot failed early: nobody inside to ask
                    raise subprocess.TimeoutExpired("poweroff", 0)
                # --no-block: systemctl itself would be killed mid-call by the shutdown.
                self.run(["systemctl", "poweroff", "--no-block"], check=False, timeout=10)
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._force_stop(proc)
        self._pid = None
        shutil.rmtree(self.workdir, ignore_errors=True)  # log and, without overlay, the copy

    def _force_stop(self, proc: subprocess.Popen[bytes]) -> None:
        proc.terminate()  # nspawn turns SIGTERM into an orderly container shutdown
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            pass
        # SIGKILLing nspawn alone leaves the container's init running, reparented to the host's
        # PID 1 (seen here); killing that init takes the whole PID namespace down with it.
        if self._pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # nspawn's own process group (setsid)
        proc.wait()
        for _ in range(50):  # the init dies asynchronously; give it a moment to be reaped
            if self._pid is None or not os.path.exists(f"/proc/{self._pid}"):
                break
            time.sleep(0.1)
        # nspawn normally removes this itself; the name is ours alone, so it is safe to drop.
        shutil.rmtree(f"/run/systemd/nspawn/propagate/{self.name}", ignore_errors=True)

    # -- inside the container -----------------------------------------------------------------

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        input: str | None = None,
        timeout: float = 60.0,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run argv in all of the container's namespaces; raise CommandError if check fails."""
        result = subprocess.run(
            ["nsenter", "-t", str(self.pid), "-a", "--", *argv],
            check=False,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
            timeout=timeout,
            env={**CONTAINER_ENV, **(env or {})},
        )
        result.args = list(argv)  # what the caller ran, not the nsenter wrapper
        if check and result.returncode != 0:
            raise CommandError(result)
        return result

    def sh(
        self, script: str, *, check: bool = True, input: str | None = None, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run a shell script with sh -euc in the container."""
        return self.run(["sh", "-euc", script], check=check, input=input, timeout=timeout)

    def write_file(self, path: str, text: str, mode: int = 0o644) -> None:
        """Create or replace a file in the container (parent dirs created), with mode."""
        self.run(
            ["sh", "-euc", 'mkdir -p "$(dirname "$1")"; cat >"$1"; chmod "$2" "$1"', "sh",
             path, f"{mode:o}"],
            input=text,
        )  # fmt: skip

    def read_file(self, path: str) -> str:
        """Return a file's text from the container."""
        return self.run(["cat", "--", path]).stdout

    def exists(self, path: str) -> bool:
        """Whether path exists in the container."""
        return self.run(["test", "-e", path], check=False).returncode == 0

    def curl(self, url: str, *, timeout: float = 10.0, args: Sequence[str] = ()) -> tuple[int, str]:
        """GET url with curl inside the container; return (HTTP status, body). 0 = no response."""
        marker = "\n--fcgicompose-status:"
        result = self.run(
            ["curl", "-sS", "--max-time", str(timeout), "-w", marker + "%{http_code}", *args, url],
            check=False,
            timeout=timeout + 10,
        )
        body, _, status = result.stdout.rpartition(marker)
        if not status.strip().isdigit():
            raise ContainerError(f"curl {url} failed: {result.stderr.strip()}")
        return int(status), body

    def journal(self, unit: str, lines: int = 30) -> str:
        """The last lines of a unit's journal, for failure messages."""
        return self.run(
            ["journalctl", "-u", unit, "-n", str(lines), "--no-pager", "-o", "short-precise"],
            check=False,
        ).stdout

    def failed_units(self) -> list[str]:
        """Names of units in the failed state."""
        out = self.run(["systemctl", "list-units", "--failed", "--plain", "--no-legend"]).stdout
        return [line.split()[0] for line in out.splitlines() if line.strip()]

    def log_tail(self, lines: int = 40) -> str:
        """The end of nspawn's own output (boot messages, errors)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no nspawn log)"
        return "--- systemd-nspawn log tail ---\n" + "\n".join(text.splitlines()[-lines:])
