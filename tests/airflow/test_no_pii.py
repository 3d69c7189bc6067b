"""No personal data and no secret leaves the CRM store through Airflow.

A whole night runs with dag.test() on landing files of distinctive customers: crm_ingest, crm_segments,
crm_campaign_birthday (really sending, with a login, to a local SMTP server) and crm_cleanup. Then every
log line the tasks emitted (captured at DEBUG, and any task log file under AIRFLOW_HOME) and every XCom
stored for those runs is searched for the customers' names, addresses and phones, the SMTP password and
the CRM's secret keys.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

import pytest
from sqlalchemy import func, select

from crm_tasks.settings import settings
from crm_tasks.store.keys import load_keys
from crm_tasks.store.models import Customer, CustomerMerge, Message, QuarantinedRow, SegmentRun, Suppression
from tests.cleanup.support import config_with_share
from tests.conftest import REPO
from tests.helpers import born_on, customer, lenient_campaigns, purchase, recent_day, write_csv
from tests.smtp_servers import SmtpServer

SMTP_USER, SMTP_PASSWORD = "crm-relay", "S3cretPassw0rd-Xq7"

# The test's own SMTP server (aiosmtpd) logs under these names: it is the recipient's side, not the CRM,
# and at DEBUG it echoes every command it receives (RCPT TO:<address>, AUTH with the password), as any
# mail server's own log does. Everything else logged in the process is searched.
SERVER_LOGGERS = ("mail.log", "mail.debug")


class LoginSmtpServer(SmtpServer):
    """The tests' SMTP server, requiring a login (over plain SMTP: a local test server only)."""

    def __init__(self, user: str, password: str) -> None:
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult

        super().__init__()
        self.user, self.password, self.logins = user, password, []

        def authenticator(server, session, envelope, mechanism, auth_data):
            ok = auth_data.login == user.encode() and auth_data.password == password.encode()
            self.logins.append(ok)
            return AuthResult(success=ok, handled=False)

        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port, auth_required=True,
                                     auth_require_tls=False, authenticator=authenticator, enable_SMTPUTF8=True)

    @property
    def url(self) -> str:
        return f"smtp+insecure://{quote(self.user)}:{quote(self.password, safe='')}@127.0.0.1:{self.port}"


def person(cid: str, first: str, last: str, email: str, phone: str, e164: str | None, birthday: str,
           **profile: str) -> dict:
    """One profile as exported (``e164``: its phone as the CRM stores it)."""
    return {"cid": cid, "first": first, "last": last, "email": email, "phone": phone, "e164": e164,
            "birthday": birthday, **profile}


def people(day) -> list[dict]:
    """Profiles with distinctive personal data, in the forms a source system exports them."""
    bday = str(born_on(day))
    return [
        # Birthday today: mailed.
        person("NP01", "Zephyrine", "Quillfeather", "zephyrine.quillfeather@example.org", "+91 98450 12345",
               "+919845012345", bday),
        person("NP02", "Bartolomeu", "Vandersloot", "Bartolomeu.Vandersloot@Example.NET", "098450 67890",
               "+919845067890", bday),
        person("NP03", "अनन्याश्री", "श्रीवास्तवनी", "ananya.shrivastavani@example.in", "+91-99001-23456",
               "+919900123456", bday, locale="hi-IN"),
        person("NP04", "گلنارینا", "محمدیانفر", "golnarina.mohammadianfar@example.ir", "0912 345 6789",
               "+989123456789", bday, locale="fa-IR", tz="Asia/Tehran", country="IR"),
        person("NP05", "Cosimo", "Drummond-Achebe", "cosimo.drummond.achebe@example.com", "(080) 4123 9876",
               "+918041239876", bday),
        person("NP06", "Philippa", "Ravensworth", "pippa.ravensworth@example.co.uk", "+44 20 7946 0321",
               "+442079460321", bday, tz="Europe/London", country="GB"),
        # Refused by the recipient's server (550): failed, suppressed as a hard bounce, archived by cleanup.
        person("NP07", "Ottoline", "Fairweatherby", "perm550.ottoline.fairweatherby@example.com", "", None, bday),
        # No consent: excluded at planning.
        person("NP08", "Ignatius", "Pemberton-Xu", "ignatius.pemberton.xu@example.com", "+91 97400 55501",
               "+919740055501", bday, consent="false"),
        # NP01's address in other case, an older profile: merged into NP01 by cleanup.
        person("NP09", "Zephyrinda", "Quillfeather-Oldham", "ZEPHYRINE.QUILLFEATHER@example.org", "+91 98450 11111",
               "+919845011111", "", updated=f"{day - timedelta(days=9)}T08:00:00+05:30"),
        # No birthday today; a buyer.
        person("NP10", "Evander", "Thistlewood", "evander.thistlewood@example.com", "+91 90080 70060",
               "+919008070060", ""),
        # An address that fails validation: the row is quarantined, the rest of the file loads.
        person("NP11", "Wilhelmina", "Oxenbridge", "wilhelmina.oxenbridge@@broken", "+91 94480 33322",
               "+919448033322", bday),
    ]


def forbidden_forms(values: dict[str, str | None]) -> dict[str, str]:
    """Each value (by its label), and the spellings a leak could take: JSON-escaped, percent-encoded;
    lower-cased, since the search ignores case. Maps each form to its label."""
    forms = {}
    for label, v in values.items():
        if not v:
            continue
        for form in (v, json.dumps(v)[1:-1], quote(v, safe=""), quote(v, safe="@+")):
            forms.setdefault(form.lower(), label)
    return forms


def record_text(record: logging.LogRecord) -> str:
    """Everything a handler could write of a record: the message, the raw arguments, the traceback."""
    text = logging.Formatter("%(name)s %(levelname)s %(message)s").format(record)
    extra = {k: v for k, v in vars(record).items() if k not in logging.makeLogRecord({}).__dict__
             and k not in ("message", "asctime")}
    return f"{text} | args={record.args!r} | extra={extra!r}"


def capture_logs_at_debug(caplog, monkeypatch, request) -> tuple[list[logging.LogRecord], list[str]]:
    """Every log line of the process from DEBUG up, wherever Airflow's handlers write it.

    Airflow configures logging when it is imported: the root handler is replaced by one that writes through
    structlog to the stdout of that moment (at INFO), which detaches pytest's caplog handler, and its own
    loggers (the task runner's ``[task]`` lines) are structlog loggers that never reach a stdlib handler.
    So the levels are set through caplog (restored after the test) and Airflow's per-logger structlog
    levels are lowered to DEBUG; stdlib records are taken where any logger hands them to its handlers, and
    structlog events as the last processor before the renderer sees them (after Airflow's secret masking:
    what would be written). Returns the two lists, filled while the test runs.
    """
    import sys

    import airflow.settings  # noqa: F401 - logging is configured now, not in the middle of the run
    import structlog

    caplog.set_level(logging.DEBUG)
    for name in ("airflow", "crm_tasks"):
        caplog.set_level(logging.DEBUG, logger=name)
    for name in SERVER_LOGGERS:
        caplog.set_level(logging.WARNING, logger=name)
    for module in list(sys.modules.values()):
        levels = getattr(module, "PER_LOGGER_LEVELS", None)
        if module.__name__.endswith("_shared.logging.structlog") and levels is not None:
            monkeypatch.setitem(levels, "", logging.DEBUG)

    records: list[logging.LogRecord] = []
    call_handlers = logging.Logger.callHandlers

    def capture(self, record):
        records.append(record)
        return call_handlers(self, record)

    monkeypatch.setattr(logging.Logger, "callHandlers", capture)

    events: list[str] = []

    def record_event(logger, method, event_dict):
        events.append(f"{method} {event_dict!r}")
        return event_dict

    processors = list(structlog.get_config()["processors"])
    structlog.configure(processors=[*processors[:-1], record_event, processors[-1]])
    request.addfinalizer(lambda: structlog.configure(processors=processors))
    return records, events


@pytest.mark.airflow
def test_a_night_through_airflow_logs_and_shares_no_personal_data_or_secret(
        airflow_db, use_settings, engine, cfg, landing, tmp_path, monkeypatch, caplog, request):
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    day = recent_day()
    who = people(day)
    updated = f"{day}T08:00:00+05:30"
    write_csv(landing, "customers", str(day), [
        customer(p["cid"], email=p["email"], phone=p["phone"], birthday=p["birthday"],
                 locale=p.get("locale", "en-IN"), tz=p.get("tz", "Asia/Kolkata"), country=p.get("country", "IN"),
                 consent=p.get("consent", "true"), updated=p.get("updated", updated), first=p["first"],
                 last=p["last"]) for p in who])
    at = f"{day}T11:30:00+05:30"
    write_csv(landing, "purchases", str(day), [
        purchase("NPT1", "NP01", at, "1499.00"), purchase("NPT2", "NP02", at, "250.50", category="apparel"),
        purchase("NPT3", "NP05", at, "-99.00", quantity="-1"), purchase("NPT4", "NP10", at, "5000.00"),
        purchase("NPT5", "NP10", at, "120.00", coupon="WELCOME10"), purchase("NPT6", "NP99-UNKNOWN", at, "75.00"),
    ])
    # Campaign files that let a run for `day` still send (the real clock), without a holdout (everyone with
    # consent is mailed), and a guardrail that lets cleanup merge and archive a few of these few profiles.
    campaigns = lenient_campaigns(tmp_path / "campaigns")
    birthday = campaigns / "birthday.yaml"
    birthday.write_text(birthday.read_text(encoding="utf-8").replace("holdout_share: 0.05", "holdout_share: 0.0"),
                        encoding="utf-8")
    monkeypatch.setenv("CRM_CAMPAIGNS_DIR", str(campaigns))
    monkeypatch.setenv("CRM_CONFIG", config_with_share(tmp_path / "crm.yaml"))
    with engine.connect() as conn:
        keys = load_keys(conn, cfg)
    secrets = {"the signing key": keys.signing, "the hashing key": keys.hashing, "the SMTP password": SMTP_PASSWORD,
               **{f"verifying key {i}": k for i, k in enumerate(keys.verifying)}}

    records, events = capture_logs_at_debug(caplog, monkeypatch, request)
    with LoginSmtpServer(SMTP_USER, SMTP_PASSWORD) as srv:
        monkeypatch.setenv("CRM_SMTP_URL", srv.url)
        settings.cache_clear()
        bag = DagBag(dag_folder=str(REPO / "dags"))
        assert bag.import_errors == {}
        chain = [("crm_ingest", {"start_date": str(day), "end_date": str(day)}),
                 ("crm_segments", {"as_of": None, "through": None}),
                 ("crm_campaign_birthday", {"as_of": str(day), "dry_run": False, "audience_limit": None,
                                            "test_recipient": None}),
                 ("crm_cleanup", {"dry_run": False})]
        runs = []
        for dag_id, conf in chain:
            dag = bag.dags[dag_id]
            for t in dag.tasks:
                monkeypatch.setattr(t, "retries", 0)
            run = dag.test(run_conf=conf)
            runs.append(run)
            assert run.state == "success", (dag_id, {(ti.task_id, ti.map_index): ti.state
                                                     for ti in run.get_task_instances()})
        received = srv.handler.parsed()
        logins = list(srv.logins)

    # The night really ran: profiles loaded (one quarantined), segments computed, mail accepted by the
    # server after a login, one hard bounce, one duplicate merged by cleanup.
    with engine.connect() as conn:
        phones = dict(conn.execute(select(Customer.customer_id, Customer.phone)).all())
        assert conn.execute(select(func.count()).select_from(QuarantinedRow)).scalar_one() == 1
        assert conn.execute(select(SegmentRun.as_of)).scalars().all() == [day]
        sent = set(conn.execute(select(Message.recipient).where(Message.state == "sent")).scalars())
        states = dict(conn.execute(select(Message.customer_id, Message.state)).all())
        merges = conn.execute(select(CustomerMerge.merged_id, CustomerMerge.survivor_id)).all()
        bounced = conn.execute(select(Suppression.customer_id, Suppression.reason)).all()
    # All loaded but NP11 (quarantined); NP09 merged and NP07 archived by cleanup; phones stored as searched.
    assert phones == {p["cid"]: p["e164"] for p in who if p["cid"] not in ("NP07", "NP09", "NP11")}
    assert merges == [("NP09", "NP01")]
    assert states == {**{f"NP0{i}": "sent" for i in range(1, 7)}, "NP07": "failed"}  # NP08: no consent
    assert bounced == [("NP07", "hard_bounce")]
    assert logins and all(logins)  # every connection logged in with the password
    assert sorted(m["to"].addresses[0].addr_spec for m in received) == sorted(sent) and len(sent) == 6

    # What Airflow and the tasks logged, and any task log file the runs wrote.
    records = [r for r in records if not r.name.startswith(SERVER_LOGGERS)]
    logs = {f"log record {i} ({r.name}, {r.levelname})": record_text(r) for i, r in enumerate(records)}
    logs |= {f"structlog event {i}": e for i, e in enumerate(events)}
    # Not vacuous: every stage's own lines, Airflow's task runner at DEBUG, the operators' return values.
    names = {r.name for r in records}
    assert {"crm_tasks.ingest.batches", "crm_tasks.segments.compute", "crm_tasks.campaigns.planning",
            "crm_tasks.delivery.send", "crm_tasks.cleanup.archive", "crm_tasks.airflow.tasks"} <= names, names
    everything = "\n".join(logs.values())
    assert "'logger': 'task'" in everything and "debug {" in everything
    assert everything.count("Done. Returned value was") == sum(len(run.get_task_instances()) for run in runs)
    for path in (Path(airflow_db) / "logs").rglob("*"):  # dag.test() runs tasks in-process: usually none
        if path.is_file():
            logs[f"log file {path}"] = path.read_text(encoding="utf-8", errors="replace")

    # Every XCom of those runs.
    xcoms = {}
    with create_session() as session:
        for run in runs:
            rows = session.execute(select(XComModel.task_id, XComModel.map_index, XComModel.key, XComModel.value)
                                   .where(XComModel.dag_id == run.dag_id, XComModel.run_id == run.run_id)).all()
            tis = {(ti.task_id, ti.map_index) for ti in run.get_task_instances() if ti.state == "success"}
            assert {(t, m) for t, m, k, _ in rows if k == "return_value"} == tis, run.dag_id
            for task_id, map_index, key, value in rows:
                raw = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
                xcoms[f"XCom {run.dag_id}.{task_id}[{map_index}] {key}"] = raw
    assert len(xcoms) >= 9

    personal = {f"{p['cid']} {field} {p[field]!r}": p[field] for p in who
                for field in ("first", "last", "email", "phone", "e164")}
    forms = forbidden_forms(personal | secrets)
    # Where a secret is found, the excerpt shows where it sits, not the secret itself.
    leaks = [f"{where}: {label} in ...{text[max(0, i - 150):i + 150].replace(text[i:i + len(form)], '<LEAK>')!r}..."
             for where, text in {**logs, **xcoms}.items()
             for form, label in forms.items() if (i := text.lower().find(form)) >= 0]
    assert leaks == [], "\n".join(leaks)
