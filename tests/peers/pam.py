"""pam_radius_auth (Debian libpam-radius-auth 2.0) driven by pamtester, for tests.

A ``PamRadius`` is one PAM service: a file ``/etc/pam.d/<unique name>`` whose
only auth line is pam_radius_auth with a configuration file of its own
(``conf=``, in the directory handed in), removed again by ``close()``. PAM
reads services from /etc/pam.d only, so that one file is the only thing a
test writes outside its own directory; its name is unique to the instance.

``authenticate(user, *answers)`` runs ``pamtester SERVICE USER authenticate``
and types ``answers`` one a line at the prompts (the password at
"Password: ", then the code at the Reply-Message of an Access-Challenge).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

PAMTESTER = shutil.which("pamtester")
PAM_DIR = Path("/etc/pam.d")
MODULE_DIRS = ("/lib/x86_64-linux-gnu/security", "/usr/lib/x86_64-linux-gnu/security",
               "/lib/aarch64-linux-gnu/security", "/usr/lib/aarch64-linux-gnu/security",
               "/lib/security", "/usr/lib/security", "/lib64/security")


def module_path() -> str | None:
    for directory in MODULE_DIRS:
        path = os.path.join(directory, "pam_radius_auth.so")
        if os.path.exists(path):
            return path
    return None


def unavailable() -> str | None:
    """Why these tests cannot run here (None: they can)."""
    if module_path() is None:
        return "pam_radius_auth.so (Debian libpam-radius-auth) is not installed"
    if PAMTESTER is None:
        return "pamtester (Debian pamtester) is not installed"
    if not os.access(PAM_DIR, os.W_OK):
        return f"{PAM_DIR} is not writable (the PAM service file goes there; run as root)"
    return None


PREFIX = "radius-mfa-test-"


def remove_stale_services() -> None:
    """Service files a killed test run left behind (their process is gone)."""
    for path in PAM_DIR.glob(f"{PREFIX}*"):
        pid = path.name[len(PREFIX):].split("-")[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            path.unlink(missing_ok=True)
        except PermissionError:
            pass                      # alive, someone else's


@dataclass
class Server:
    """One line of pam_radius's configuration file."""
    host: str
    port: int
    secret: str
    timeout: int = 3                  # seconds per try
    source_ip: str | None = None      # the address pam_radius sends from

    def line(self) -> str:
        fields = [f"{self.host}:{self.port}", self.secret, str(self.timeout)]
        if self.source_ip:
            fields.append(self.source_ip)
        return "\t".join(fields)


@dataclass
class Result:
    returncode: int
    output: str                       # pamtester's stdout and stderr: prompts and verdict

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and "successfully authenticated" in self.output


class PamRadius:
    def __init__(self, directory: Path, servers: list[Server], options: str = ""):
        if unavailable():
            raise RuntimeError(unavailable())
        self.directory = Path(directory)
        remove_stale_services()
        self.name = f"{PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        self.conf = self.directory / "pam_radius_auth.conf"
        # the file holds the shared secret: readable by its owner only
        fd = os.open(self.conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as conf:
            conf.write("".join(server.line() + "\n" for server in servers))
        self.service = PAM_DIR / self.name
        self.service.write_text(
            f"# written by radius-mfa's tests; removed when they end\n"
            f"auth\trequired\t{module_path()} conf={self.conf} {options}\n"
            f"account\trequired\tpam_permit.so\n")

    def authenticate(self, user: str, *answers: str, timeout: float = 30) -> Result:
        proc = subprocess.run([PAMTESTER, "-v", self.name, user, "authenticate"],
                              input="".join(answer + "\n" for answer in answers),
                              capture_output=True, text=True, timeout=timeout)
        return Result(proc.returncode, proc.stdout + proc.stderr)

    def close(self) -> None:
        self.service.unlink(missing_ok=True)

    def __enter__(self) -> "PamRadius":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
