"""Duplicates merged into one survivor, with everything that named the others re-pointed — on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import func, insert, select

from crm_tasks.cleanup.archive import run_cleanup
from crm_tasks.store.models import (
    CampaignPlanRow,
    CampaignRun,
    Coupon,
    Customer,
    CustomerCategoryMetrics,
    CustomerMerge,
    CustomerMetrics,
    Message,
    Purchase,
)
from tests.cleanup.support import AS_OF, RECENT, ids, permissive
from tests.factories import add_customers, buy


def test_in_each_run_only_the_lowest_merged_id_s_plan_row_moves_and_none_where_the_survivor_has_one(engine, cfg):
    """A plan has one row per run and customer. Three profiles of one address: S (updated last) survives, A1
    and B1 merge into it. Run 1 (A1 and B1 planned): A1's row moves to S, B1's stays under its id. Run 2 (S
    and A1): nothing moves. Run 3 (B1 alone): B1's row moves."""
    early, late = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC)
    add_customers(engine, *({"customer_id": c, "email": "same@example.com", "updated_at": early} for c in ("B1", "A1")),
                  {"customer_id": "S", "email": "same@example.com", "updated_at": late})
    planned = {1: ("A1", "B1"), 2: ("S", "A1"), 3: ("B1",)}
    with engine.begin() as conn:
        runs = {}
        for n, customers in planned.items():
            runs[n] = conn.execute(insert(CampaignRun).values(
                campaign="birthday", as_of=AS_OF, run_at=RECENT, dry_run=False, test_run=False, status="planned",
                audience=len(customers), recipients=len(customers), holdout=0, excluded=0, reasons={}, diff={},
                parameters={}, created_at=RECENT).returning(CampaignRun.id)).scalar_one()
            for cid in customers:
                conn.execute(insert(CampaignPlanRow).values(
                    run_id=runs[n], customer_id=cid, outcome="send", occurrence="2026",
                    idempotency_key=f"k:{n}:{cid}", locale="en", template="birthday"))

    result = run_cleanup(engine, permissive(cfg), AS_OF)
    assert result.reasons == {"duplicate_email": 2} and ids(engine) >= {"S"} and not ids(engine) & {"A1", "B1"}
    with engine.connect() as conn:
        rows = conn.execute(select(CampaignPlanRow.run_id, CampaignPlanRow.customer_id,
                                   CampaignPlanRow.idempotency_key)).all()
    by_run = {n: {(c, k) for r, c, k in rows if r == runs[n]} for n in planned}
    assert by_run == {1: {("S", "k:1:A1"), ("B1", "k:1:B1")},
                      2: {("S", "k:2:S"), ("A1", "k:2:A1")},
                      3: {("S", "k:3:B1")}}


def test_duplicates_are_merged_into_one_survivor_with_everything_re_pointed(engine, cfg):
    early, late = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC)
    add_customers(
        engine,
        {"customer_id": "OLD", "email": "asha@example.com", "updated_at": early, "phone": "+919800000001"},
        {"customer_id": "NEW", "email": "asha@example.com", "updated_at": late, "first_name": "Asha R."},
        {"customer_id": "PH1", "email": "p1@example.com", "phone": "+919800000002", "updated_at": late},
        {"customer_id": "PH2", "email": "p2@example.com", "phone": "+919800000002", "updated_at": late},
        *({"customer_id": f"SHARED{i:02d}", "email": "info@example.com", "updated_at": late} for i in range(11)),
    )
    buy(engine, "OLD", datetime(2025, 5, 1, tzinfo=UTC), "300")
    buy(engine, "NEW", datetime(2026, 2, 2, tzinfo=UTC), "100")
    # OLD has ledger history, a coupon and a plan row; NEW has a plan row in the same run.
    with engine.begin() as conn:
        run_id = conn.execute(insert(CampaignRun).values(
            campaign="birthday", as_of=AS_OF, run_at=RECENT, dry_run=False, test_run=False, status="planned",
            audience=2, recipients=1, holdout=0, excluded=1, reasons={}, diff={}, parameters={}, created_at=RECENT,
        ).returning(CampaignRun.id)).scalar_one()
        for cid in ("OLD", "NEW"):
            conn.execute(insert(CampaignPlanRow).values(
                run_id=run_id, customer_id=cid, outcome="send", occurrence="2026", idempotency_key=f"k:{cid}",
                locale="en", template="birthday"))
        conn.execute(insert(Message).values(
            idempotency_key="birthday:OLD:2025", campaign="birthday", customer_id="OLD", run_id=run_id,
            occurrence="2025", state="sent", test=False, recipient="asha@example.com", locale="en",
            template="birthday", send_at=RECENT, context={"customer": {"first_name": "Asha"}}, created_at=RECENT,
            updated_at=RECENT))
        conn.execute(insert(Coupon).values(
            code="K1", idempotency_key="birthday:OLD:2025", campaign="birthday", customer_id="OLD", value=15,
            value_type="percent", issued_on=AS_OF, expires_on=AS_OF, run_id=run_id))

    result = run_cleanup(engine, permissive(cfg), AS_OF)
    assert result.reasons == {"duplicate_email": 1, "duplicate_phone": 1}
    assert result.skipped_groups == 1  # eleven profiles on info@: a shared address, not one person
    assert result.examples["duplicate_email"] == ["OLD -> NEW"]
    assert result.examples["duplicate_phone"] == ["PH2 -> PH1"]  # same update time: the lowest id survives
    assert (result.profiles_before, result.kept, result.merged, result.archived) == (15, 13, 2, 0)
    assert result.reconciles
    assert {"OLD", "PH2"}.isdisjoint(ids(engine)) and {"NEW", "PH1", "SHARED00"} <= ids(engine)
    with engine.connect() as conn:
        survivor = conn.execute(select(Customer).where(Customer.customer_id == "NEW")).one()
        assert (survivor.first_name, survivor.phone) == ("Asha R.", "+919800000001")  # its own name, OLD's phone
        assert conn.execute(select(Purchase.customer_id).distinct().where(Purchase.amount == 300)).scalar_one() \
            == "NEW"
        (orders, revenue, first) = conn.execute(select(CustomerMetrics.orders, CustomerMetrics.revenue,
                                                       CustomerMetrics.first_purchase_at)
                                                .where(CustomerMetrics.customer_id == "NEW")).one()
        assert (orders, revenue, first) == (2, Decimal("400.0000"), datetime(2025, 5, 1, tzinfo=UTC))
        for model in (CustomerMetrics, CustomerCategoryMetrics):
            assert conn.execute(select(func.count()).select_from(model).where(model.customer_id == "OLD")
                                ).scalar_one() == 0
        assert conn.execute(select(Message.customer_id)).scalar_one() == "NEW"
        assert conn.execute(select(Coupon.customer_id)).scalar_one() == "NEW"
        # NEW already had a row in that run: OLD's stays under its id, traceable through the merge record.
        assert set(conn.execute(select(CampaignPlanRow.customer_id)).scalars()) == {"OLD", "NEW"}
        merges = conn.execute(select(CustomerMerge.merged_id, CustomerMerge.survivor_id, CustomerMerge.rule,
                                     CustomerMerge.merged_on).order_by(CustomerMerge.merged_id)).all()
    assert merges == [("OLD", "NEW", "duplicate_email", AS_OF), ("PH2", "PH1", "duplicate_phone", AS_OF)]
    again = run_cleanup(engine, permissive(cfg), AS_OF)
    assert again.to_dict() | {"seconds": 0, "phases": {}} == result.to_dict() | {"seconds": 0, "phases": {}}
