"""Every domain error, in one place. The library raises these; the CLI, the DAGs' retry
policies (which name the classes, not strings) and the web app translate them.

Each message is written for the person who has to act on it: it names the file,
row or setting, says what is wrong and what to do. None carries customer data.
"""

from __future__ import annotations


class CrmError(Exception):
    """Base class for every error this package raises on purpose."""


class ConfigError(CrmError):
    """A setting or the configuration file is invalid."""


class SchemaNotReady(CrmError):
    """The CRM database is not migrated to the schema this code expects."""


class UnreadableFile(CrmError):
    """A landing file cannot be read at all (encoding, format, missing columns)."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class DatabaseError(CrmError):
    """The CRM database refused or failed a batch. Worth a retry; the message holds no row values."""


class BatchRejected(CrmError):
    """Too large a share of a file's rows failed validation; nothing from it was loaded."""

    def __init__(
        self, path: str, rows_read: int, rows_quarantined: int, threshold: float | None, reasons: list[str],
        message: str | None = None,
    ) -> None:
        self.path = path
        self.rows_read = rows_read
        self.rows_quarantined = rows_quarantined
        self.threshold = threshold
        self.reasons = reasons
        if message:  # the stored message of an earlier, identical rejection
            super().__init__(message)
            return
        share = rows_quarantined / rows_read if rows_read else 1.0
        first = "; ".join(reasons[:5])
        super().__init__(
            f"{path}: {rows_quarantined} of {rows_read} rows ({share:.1%}) failed validation, above the "
            f"{threshold:.1%} threshold, so no row of this file was loaded. First reasons: {first}. "
            f"The rejected rows are in the quarantine table; fix the export and drop the corrected file "
            f"in the same partition, or raise reject_threshold in crm.yaml if this share is expected."
        )


class MissingPartition(CrmError):
    """A source has had no partition for more nights in a row than missing_partition_grace allows."""


class IngestFailed(CrmError):
    """One or more files (or partitions) of a run failed; the others were processed."""

    def __init__(self, failures: list[CrmError]) -> None:
        self.failures = failures
        lines = "\n".join(f"- {f}" for f in failures)
        super().__init__(f"{len(failures)} file(s) or partition(s) failed:\n{lines}")


class CleanupBlocked(CrmError):
    """The cleanup guardrail stopped a run: it would have archived too many profiles. Nothing changed."""

    def __init__(self, message: str, result) -> None:
        super().__init__(message)
        self.result = result  # the CleanupResult a real run would have recorded


class CampaignBlocked(CrmError):
    """A guardrail stopped the run: nothing was planned for sending. Holds the recorded result."""

    def __init__(self, message: str, result) -> None:
        super().__init__(message)
        self.result = result  # the PlanResult recorded for the blocked run


class RenderError(CrmError):
    """A template or catalog problem; the message names template, language and, if any, the customer id."""


class HeaderInjection(CrmError):
    """A header value would break out of its header (CR, LF or NUL), or an address is malformed."""


class IllegalTransition(CrmError):
    """A bug, not a data problem: code asked for a state change the ledger does not allow."""


class InvalidToken(CrmError):
    """A link token (unsubscribe, click, open) that was not signed by this deployment."""


class RestoreRefused(CrmError):
    """A profile that cannot be restored: not archived, already purged, or a current profile again."""


class RuleError(CrmError):
    """A rule given to compile_rule is invalid, or does not fit the columns given."""


class UnreadableReport(CrmError):
    """A message in the bounce mailbox is not a delivery status notification (RFC 3464) or a complaint
    report (RFC 5965) this engine can read: it is kept aside for a person, never dropped."""


class ForgedRequest(CrmError):
    """A provider's webhook request whose signature, certificate, topic or timestamp does not check: it is
    answered 403 and counted as forged, and nothing in it is applied."""
