"""The bounce mailbox: late bounces and complaint reports read over IMAP, or from a local maildir.

The campaigns' envelope sender (or the provider's feedback address) delivers delivery status
notifications and complaint reports to a mailbox. ``read_bounces`` reads what waits in
``delivery.feedback.folder``, in batches of ``delivery.feedback.batch`` messages:

1. each message is parsed (``feedback.parse_report``); one that is not a report this engine reads
   (an auto-reply, a bounce in free text, a message too large) is counted with the reason;
2. the batch's events are recorded in one transaction (``feedback.record_events``);
3. only after that commit are the reports moved to ``processed_folder`` and the others to
   ``unparsed_folder``, where they wait for a person. Nothing is deleted.

A crash between 2 and 3 leaves the batch in the folder: the next run reads it again, and every
event comes back as a duplicate, applied once. Where the mailbox is: ``CRM_BOUNCE_IMAP_URL``
(``imaps://user:password@host:993``, ``imap://`` with STARTTLS required, ``imap+insecure://`` for a
local test server), the Airflow connection ``crm_bounces``, or ``delivery.feedback.maildir`` for a
mail server delivering to a maildir on this machine.
"""

from __future__ import annotations

import imaplib
import logging
import mailbox
import re
import ssl
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol, Self
from urllib.parse import parse_qs, unquote, urlsplit

from sqlalchemy import Engine

from crm_tasks.delivery.feedback import FeedbackEvent, FeedbackResult, parse_report, record_events
from crm_tasks.errors import ConfigError, CrmError, UnreadableReport
from crm_tasks.settings import FeedbackSettings, Settings

log = logging.getLogger(__name__)

# A report is a few KiB; a DSN returning a whole message with attachments can be a few MiB. Past this a
# message is not read into memory: it is kept aside for a person, with the reason.
MAX_MESSAGE_BYTES = 10 * 1024 * 1024
NO_MAILBOX = ("no bounce mailbox is configured: set CRM_BOUNCE_IMAP_URL (for example "
              "imaps://bounces:password@imap.example.com:993) or the Airflow connection crm_bounces (type imap), "
              "or delivery.feedback.maildir in crm.yaml for a maildir on this machine")


@dataclass
class MailboxResult:
    """What one read of the bounce mailbox did: counts only (no address, no message content)."""

    mailbox: str  # where it read (no password)
    messages: int = 0  # read from the folder
    reports: int = 0  # parsed, their events recorded, moved to the processed folder
    unparsed: int = 0  # kept in the unparsed folder for a person
    unparsed_reasons: dict[str, int] = field(default_factory=dict)
    events: FeedbackResult = field(default_factory=FeedbackResult)
    seconds: float = 0.0

    @property
    def reconciles(self) -> bool:
        return self.messages == self.reports + self.unparsed and self.events.reconciles

    def summary(self) -> dict:
        return asdict(self) | {"events": self.events.summary(), "reconciles": self.reconciles}


class Mailbox(Protocol):
    """What reading the bounce mailbox needs; ``ImapMailbox`` and ``MaildirMailbox`` implement it."""

    source: str  # the delivery_events source: imap | maildir

    def __enter__(self) -> Self: ...
    def __exit__(self, *exc) -> None: ...
    def describe(self) -> str: ...
    def pending(self) -> list[str]: ...
    def fetch(self, keys: list[str]) -> list[tuple[str, bytes | None]]: ...  # None: larger than the cap
    def move(self, keys: list[str], folder: str) -> None: ...


def read_bounces(engine: Engine, cfg: Settings, box: Mailbox) -> MailboxResult:
    """Read every report waiting in the bounce mailbox (see the module docstring)."""
    started = time.perf_counter()
    fb = cfg.delivery.feedback
    with box:
        result = MailboxResult(box.describe())
        keys = box.pending()
        for i in range(0, len(keys), fb.batch):
            fetched = box.fetch(keys[i:i + fb.batch])
            events: list[FeedbackEvent] = []
            done, kept = [], []
            reasons: Counter[str] = Counter()
            for key, raw in fetched:
                why = None
                if raw is None:
                    why = f"larger than {MAX_MESSAGE_BYTES:,} bytes"
                else:
                    try:
                        events += parse_report(raw, box.source)
                    except UnreadableReport as exc:
                        why = str(exc)
                    except Exception as exc:  # noqa: BLE001 - hostile input must not stop the mailbox
                        why = f"the parser failed ({exc.__class__.__name__})"
                if why is None:
                    done.append(key)
                else:
                    kept.append(key)
                    reasons[why] += 1
                    log.warning("bounce mailbox: message %s kept in %s: %s", key, fb.unparsed_folder, why)
            with engine.begin() as conn:
                result.events.add(record_events(conn, cfg, events))
            # Only now that the events are committed: a crash before this line re-reads the batch harmlessly.
            box.move(done, fb.processed_folder)
            box.move(kept, fb.unparsed_folder)
            result.messages += len(fetched)
            result.reports += len(done)
            result.unparsed += len(kept)
            for why, n in reasons.items():
                result.unparsed_reasons[why] = result.unparsed_reasons.get(why, 0) + n
    result.seconds = round(time.perf_counter() - started, 3)
    log.info("bounce mailbox %s: %d messages, %d reports, %d kept aside as unparsed", result.mailbox,
             result.messages, result.reports, result.unparsed)
    return result


# --- where the mailbox is --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImapTarget:
    host: str
    port: int
    username: str
    password: str = field(repr=False)  # never in a repr, a log or a traceback
    tls: str = "implicit"  # implicit | starttls | none
    validate_certs: bool = True

    def describe(self) -> str:
        """For logs and reports: no password."""
        return f"imap://{self.username}@{self.host}:{self.port} (tls: {self.tls})"


def parse_imap_url(url: str) -> ImapTarget:
    """``imaps://`` (implicit TLS, 993), ``imap://`` (STARTTLS required, 143: the password never crosses in
    clear), ``imap+insecure://`` (no TLS: a local test server only); ``?validate_certs=false`` for a
    self-signed server. The folders are ``delivery.feedback``'s, not part of the URL."""
    parts = urlsplit(url)
    modes = {"imaps": "implicit", "imap": "starttls", "imap+insecure": "none"}
    shape = ("CRM_BOUNCE_IMAP_URL must look like imaps://user:password@host:993 (schemes: imaps, imap with "
             "STARTTLS, imap+insecure for a local test server)")
    if parts.scheme not in modes or not parts.hostname:
        raise ConfigError(shape)
    if not parts.username or parts.password is None:
        raise ConfigError(shape + "; it names no user and password")
    if parts.path not in ("", "/"):
        raise ConfigError("CRM_BOUNCE_IMAP_URL names a folder: set it as delivery.feedback.folder in crm.yaml "
                          "instead, and leave the URL without a path")
    tls = modes[parts.scheme]
    query = parse_qs(parts.query)
    validate = query.get("validate_certs", ["true"])[0].lower() not in ("false", "0", "no")
    return ImapTarget(parts.hostname, parts.port or (993 if tls == "implicit" else 143), unquote(parts.username),
                      unquote(parts.password), tls, validate)


def target_from_connection(host: str | None, port: int | None, login: str | None, password: str | None,
                           extra: dict | None) -> ImapTarget:
    """An Airflow connection (type imap), read as the IMAP provider reads it: implicit TLS unless
    ``use_ssl`` is false; then STARTTLS, unless ``disable_tls`` (a local test server only).
    ``ssl_context: none`` or ``validate_certs: false`` skips certificate checks."""
    if not host or not login:
        raise ConfigError("the Airflow connection crm_bounces needs a host and a login")
    extra = extra or {}

    def flag(name: str, default: bool) -> bool:
        return str(extra.get(name, default)).lower() in ("true", "1", "yes")

    tls = "implicit" if flag("use_ssl", True) else "none" if flag("disable_tls", False) else "starttls"
    validate = flag("validate_certs", True) and str(extra.get("ssl_context", "default")).lower() != "none"
    return ImapTarget(host, port or (993 if tls == "implicit" else 143), login, password or "", tls, validate)


def open_mailbox(cfg: Settings, airflow_target: ImapTarget | None = None, maildir: Path | None = None) -> Mailbox:
    """The bounce mailbox: ``maildir`` (``crm bounces read --maildir``), else CRM_BOUNCE_IMAP_URL, else the
    Airflow connection crm_bounces, else ``delivery.feedback.maildir``; ConfigError naming them if none."""
    fb = cfg.delivery.feedback
    if maildir is not None:
        return MaildirMailbox(maildir, fb)
    if cfg.bounce_imap_url:
        return ImapMailbox(parse_imap_url(cfg.bounce_imap_url), fb)
    if airflow_target is not None:
        return ImapMailbox(airflow_target, fb)
    if fb.maildir is not None:
        return MaildirMailbox(fb.maildir, fb)
    raise ConfigError(NO_MAILBOX)


# --- IMAP ------------------------------------------------------------------------------------------------

_UID = re.compile(rb"UID (\d+)")
_SIZE = re.compile(rb"RFC822\.SIZE (\d+)")


def _quoted(name: str) -> str:
    """An IMAP quoted string (a folder name may hold spaces)."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


class ImapMailbox:
    """The bounce mailbox over IMAP (imaplib). Messages are named by UID; moved with UID MOVE (RFC 6851), or
    copied, flagged deleted and expunged where the server lacks MOVE."""

    source = "imap"

    def __init__(self, target: ImapTarget, feedback: FeedbackSettings, timeout: float = 60.0) -> None:
        self.target, self.fb, self.timeout = target, feedback, timeout
        self.client: imaplib.IMAP4 | None = None
        self.caps: set[str] = set()

    def describe(self) -> str:
        return f"{self.target.describe()} {self.fb.folder}"

    def __enter__(self) -> Self:
        t = self.target
        context = ssl.create_default_context()
        if not t.validate_certs:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        try:
            if t.tls == "implicit":
                client = imaplib.IMAP4_SSL(t.host, t.port, ssl_context=context, timeout=self.timeout)
            else:
                client = imaplib.IMAP4(t.host, t.port, timeout=self.timeout)
                if t.tls == "starttls":
                    if "STARTTLS" not in client.capabilities:
                        client.shutdown()
                        raise ConfigError(f"{t.describe()} does not offer STARTTLS: use imaps:// (port 993), "
                                          "or imap+insecure:// for a local test server only")
                    client.starttls(context)
        except ssl.SSLCertVerificationError as exc:
            raise ConfigError(f"the certificate of {t.describe()} does not verify ({exc.verify_message}); "
                              "add ?validate_certs=false only for a test server") from None
        except (OSError, imaplib.IMAP4.error) as exc:
            raise CrmError(f"cannot reach the bounce mailbox {t.describe()}: {exc}") from None
        try:
            client.login(t.username, t.password)
        except imaplib.IMAP4.error:
            client.shutdown()
            raise ConfigError(f"the bounce mailbox {t.describe()} refused the login: check the user and password "
                              "in CRM_BOUNCE_IMAP_URL or the Airflow connection crm_bounces") from None
        self.client = client
        try:
            # The capabilities after login (imaplib keeps the greeting's): MOVE and UIDPLUS are announced now.
            self.caps = set(self._ok("CAPABILITY", client.capability())[-1].decode().upper().split())
            for folder in (self.fb.processed_folder, self.fb.unparsed_folder):
                self._ensure(folder)
            status, _ = client.select(_quoted(self.fb.folder))
            if status != "OK":
                raise ConfigError(f"the bounce mailbox {t.describe()} has no folder {self.fb.folder!r} "
                                  "(delivery.feedback.folder)")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self.client is not None:
            try:
                self.client.logout()
            except (OSError, imaplib.IMAP4.error):
                pass  # the server went first: nothing left to close
            self.client = None

    def _ensure(self, folder: str) -> None:
        status, found = self.client.list('""', _quoted(folder))
        if status == "OK" and any(f for f in found if f):
            return
        status, reply = self.client.create(_quoted(folder))
        if status != "OK":
            raise CrmError(f"cannot create the folder {folder!r} in the bounce mailbox: {reply}")

    def _ok(self, what: str, reply: tuple) -> list:
        status, data = reply
        if status != "OK":
            raise CrmError(f"the bounce mailbox {self.target.describe()} refused {what}: {data}")
        return data

    def pending(self) -> list[str]:
        data = self._ok("SEARCH", self.client.uid("SEARCH", None, "UNDELETED"))
        return [u.decode() for u in (data[0] or b"").split()]

    def fetch(self, keys: list[str]) -> list[tuple[str, bytes | None]]:
        if not keys:
            return []
        sizes = {}
        for item in self._ok("FETCH", self.client.uid("FETCH", ",".join(keys), "(RFC822.SIZE)")):
            line = item[0] if isinstance(item, tuple) else item
            uid, size = _UID.search(line or b""), _SIZE.search(line or b"")
            if uid and size:
                sizes[uid.group(1).decode()] = int(size.group(1))
        small = [k for k in keys if k in sizes and sizes[k] <= MAX_MESSAGE_BYTES]
        raw: dict[str, bytes] = {}
        if small:
            for item in self._ok("FETCH", self.client.uid("FETCH", ",".join(small), "(BODY.PEEK[])")):
                if isinstance(item, tuple) and (uid := _UID.search(item[0])):
                    raw[uid.group(1).decode()] = item[1]
        # A message gone since the search (another reader moved it) is simply not there.
        return [(k, raw.get(k)) for k in keys if k in sizes and (k in raw or sizes[k] > MAX_MESSAGE_BYTES)]

    def move(self, keys: list[str], folder: str) -> None:
        if not keys:
            return
        uids = ",".join(keys)
        if "MOVE" in self.caps:
            self._ok("MOVE", self.client.uid("MOVE", uids, _quoted(folder)))
            return
        self._ok("COPY", self.client.uid("COPY", uids, _quoted(folder)))
        self._ok("STORE", self.client.uid("STORE", uids, "+FLAGS.SILENT", r"(\Deleted)"))
        if "UIDPLUS" in self.caps:
            self._ok("EXPUNGE", self.client.uid("EXPUNGE", uids))
        else:
            self._ok("EXPUNGE", self.client.expunge())


# --- a local maildir -------------------------------------------------------------------------------------


class MaildirMailbox:
    """The bounce mailbox as a maildir on this machine (Maildir++ folders, as Dovecot and Postfix write them):
    the documented alternative where the mail server delivers locally and IMAP would only add a hop."""

    source = "maildir"

    def __init__(self, path: Path, feedback: FeedbackSettings) -> None:
        self.path, self.fb = Path(path), feedback
        self.root: mailbox.Maildir | None = None
        self.inbox: mailbox.Maildir | None = None

    def describe(self) -> str:
        return f"maildir {self.path} {self.fb.folder}"

    def __enter__(self) -> Self:
        if not (self.path / "cur").is_dir() or not (self.path / "new").is_dir():
            raise ConfigError(f"{self.path} is not a maildir (no cur/ and new/ in it): check "
                              "delivery.feedback.maildir or --maildir")
        self.root = mailbox.Maildir(self.path, factory=None, create=False)
        if self.fb.folder.upper() == "INBOX":
            self.inbox = self.root
        elif self.fb.folder in self.root.list_folders():
            self.inbox = self.root.get_folder(self.fb.folder)
        else:
            raise ConfigError(f"the maildir {self.path} has no folder {self.fb.folder!r} (delivery.feedback.folder)")
        return self

    def __exit__(self, *exc) -> None:
        self.root = self.inbox = None

    def pending(self) -> list[str]:
        return sorted(self.inbox.keys())

    def fetch(self, keys: list[str]) -> list[tuple[str, bytes | None]]:
        out = []
        for key in keys:
            try:
                with self.inbox.get_file(key) as f:
                    data = f.read(MAX_MESSAGE_BYTES + 1)
            except KeyError:
                continue  # gone since it was listed
            out.append((key, data if len(data) <= MAX_MESSAGE_BYTES else None))
        return out

    def move(self, keys: list[str], folder: str) -> None:
        if not keys:
            return
        target = (self.root.get_folder(folder) if folder in self.root.list_folders()
                  else self.root.add_folder(folder))
        for key in keys:
            # Copied first, then removed: a crash in between leaves a copy to be read again, never a loss.
            with self.inbox.get_file(key) as f:
                target.add(f)
            self.inbox.remove(key)
