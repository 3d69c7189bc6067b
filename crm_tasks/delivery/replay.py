"""Delivering a past run as if on its day: demos, and replaying a date against a test server.

The ledger's clock starts at the run's scheduled time and jumps to each next due time (a send window
opening later in some time zone, a retry), so send windows, lateness and ``sent_at`` are that day's.
Never for real customers on a live server: their mail would be dated in the past.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Engine

from crm_tasks.clock import running_from
from crm_tasks.delivery.send import DeliveryResult, deliver
from crm_tasks.delivery.smtp import SmtpTarget
from crm_tasks.settings import Settings

MAX_JUMPS = 50  # a day's send windows and retries; more means something keeps deferring


def replay(engine: Engine, cfg: Settings, campaign: str, run_id: int, start: datetime, *,
           target: SmtpTarget | None = None) -> DeliveryResult:
    """Deliver ``run_id`` from ``start`` on, jumping the clock to each next due time until nothing is due;
    returns the summed outcomes and the run's final ledger states."""
    total = deliver(engine, cfg, campaign, run_id, target=target, clock=running_from(start))
    for _ in range(MAX_JUMPS):
        if total.retry_at is None:
            break
        due = datetime.fromisoformat(total.retry_at) + timedelta(seconds=1)
        step = deliver(engine, cfg, campaign, run_id, target=target, clock=running_from(due))
        total.add(step)
        total.batches += step.batches
        total.states, total.retry_at, total.seconds = step.states, step.retry_at, total.seconds + step.seconds
    return total
