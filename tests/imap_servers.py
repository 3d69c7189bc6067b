"""A real IMAP server for the bounce-mailbox tests: Debian's Dovecot (package ``dovecot-imapd``, which
``.ci/run`` installs), run in the foreground from a temporary directory with its own configuration.

It listens on free ports of 127.0.0.1 only (IMAP with STARTTLS offered, and IMAPS), with a throw-away
certificate for 127.0.0.1 (``smtp_servers.self_signed_context``), any user name and one password, and keeps
each user's mail in ``<dir>/mail/<user>`` as a maildir (Maildir++ folders), which ``deliver`` writes into
the way a local delivery agent would. Nothing of the system's Dovecot (``/etc/dovecot``, its service) is
used or touched.

Run as root (CI, this machine), Dovecot refuses to run its login process as root: it runs it as the
package's ``dovenull`` user and mail access as ``nobody``, so the directory is opened to them. Run as
another user, every process runs as that user.
"""

from __future__ import annotations

import grp
import mailbox
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Self

from tests.smtp_servers import free_port, self_signed_context

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"


@contextmanager
def dovecot_or_skip():
    """A started Dovecot for a test module; skipped with the reason where it cannot run, except in CI (``CI``
    set), where that fails, as the PostgreSQL half does: ``.ci/run`` installs dovecot-imapd."""
    import pytest

    problem = dovecot_missing()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(problem + " (CI requires Dovecot)")
        pytest.skip(problem)
    with Dovecot() as server:
        yield server


def dovecot_missing() -> str | None:
    """None if Dovecot can run here, else why not."""
    if not Path(DOVECOT).exists():
        return "Dovecot is not installed (apt-get install dovecot-imapd; .ci/run does it)"
    if os.geteuid() == 0:
        for user in ("dovenull", "dovecot", "nobody"):
            try:
                pwd.getpwnam(user)
            except KeyError:
                return f"Dovecot runs as root here but the system has no user {user}"
    return None


class Dovecot:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="crm-dovecot-"))
        self.password = secrets.token_hex(8)
        self.port, self.tls_port = free_port(), free_port()
        self.process: subprocess.Popen | None = None
        if os.geteuid() == 0:
            login, internal, mail = "dovenull", "dovecot", pwd.getpwnam("nobody")
        else:
            me = pwd.getpwuid(os.getuid())
            login = internal = me.pw_name
            mail = me
        self.uid, self.gid = mail.pw_uid, mail.pw_gid
        (self.dir / "mail").mkdir()
        (self.dir / "run").mkdir()
        self_signed_context(self.dir)  # cert.pem, key.pem for 127.0.0.1
        self.ca_file = self.dir / "cert.pem"
        self.config = self.dir / "dovecot.conf"
        self.config.write_text(f"""
base_dir = {self.dir}/run
state_dir = {self.dir}/run/state
log_path = {self.dir}/dovecot.log
protocols = imap
listen = 127.0.0.1
default_internal_user = {internal}
default_internal_group = {grp.getgrgid(pwd.getpwnam(internal).pw_gid).gr_name}
default_login_user = {login}
first_valid_uid = 1
first_valid_gid = 1
ssl = yes
ssl_cert = <{self.dir}/cert.pem
ssl_key = <{self.dir}/key.pem
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:{self.dir}/mail/%u
passdb {{
  driver = static
  args = password={self.password}
}}
userdb {{
  driver = static
  args = uid={self.uid} gid={self.gid} home={self.dir}/mail/%u
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {self.tls_port}
  }}
}}
service anvil {{
  chroot =
}}
""", encoding="utf-8")
        # The login process (another user when root) must reach the directory; the mail user owns the mail.
        self.dir.chmod(0o755)
        os.chown(self.dir / "mail", self.uid, self.gid)

    def url(self, user: str, scheme: str = "imap+insecure") -> str:
        port = self.tls_port if scheme == "imaps" else self.port
        return f"{scheme}://{user}:{self.password}@127.0.0.1:{port}"

    def maildir(self, user: str) -> mailbox.Maildir:
        """The user's maildir, created the way Dovecot lays it out (and owned by the mail user)."""
        path = self.dir / "mail" / user
        box = mailbox.Maildir(path, create=True)
        self._own(path)
        return box

    def deliver(self, user: str, *messages: bytes) -> None:
        """Drop messages into the user's INBOX (its new/), as a local delivery agent would."""
        box = self.maildir(user)
        for raw in messages:
            box.add(raw)
        self._own(self.dir / "mail" / user)

    def folder_count(self, user: str, folder: str) -> int:
        root = mailbox.Maildir(self.dir / "mail" / user, create=False)
        box = root if folder == "INBOX" else root.get_folder(folder)
        return len(box.keys())

    def _own(self, path: Path) -> None:
        if os.geteuid() != 0:
            return
        for dirpath, dirnames, filenames in os.walk(path):
            os.chown(dirpath, self.uid, self.gid)
            for name in filenames:
                os.chown(os.path.join(dirpath, name), self.uid, self.gid)

    def __enter__(self) -> Self:
        self.process = subprocess.Popen([DOVECOT, "-F", "-c", str(self.config)], stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(100).startswith(b"* OK"):
                        return self
            except OSError:
                time.sleep(0.1)
        self.__exit__()
        raise RuntimeError(f"Dovecot did not start: {self.log()}")

    def log(self) -> str:
        out = self.process.stdout.read().decode(errors="replace") if self.process and self.process.poll() is not None else ""
        path = self.dir / "dovecot.log"
        return out + (path.read_text(errors="replace") if path.exists() else "")

    def __exit__(self, *exc) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self.process is not None and self.process.stdout:
            self.process.stdout.close()
        shutil.rmtree(self.dir, ignore_errors=True)
