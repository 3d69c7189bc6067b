#!/usr/bin/env bash
# The demo: a multi-locale customer base and a year of purchases, loaded into the
# embedded SQLite CRM database through the real crm_ingest DAG, then segmented by the
# crm_segments DAG over the last week (one history step per day).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BIN="$ROOT/.venv/bin"
export AIRFLOW_HOME="$ROOT/var/airflow"
export AIRFLOW__CORE__DAGS_FOLDER="$ROOT/dags"
export AIRFLOW__CORE__PLUGINS_FOLDER="$ROOT/plugins"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
CUSTOMERS=${DEMO_CUSTOMERS:-2000}
DAYS=${DEMO_DAYS:-365}
START=${DEMO_START:-2025-11-01}
END=$(date -d "$START + $((DAYS - 1)) days" +%F)
# Purchases go on for AFTER days past END: they land after the campaigns, and measure them.
AFTER=${DEMO_AFTER_DAYS:-30}
LATER=$(date -d "$END + $AFTER days" +%F)
mkdir -p var/log

echo "==> CRM database (var/crm.db): created afresh and migrated"
rm -f var/crm.db var/crm.db-wal var/crm.db-shm
"$BIN/crm" db upgrade

echo "==> Demo data: $CUSTOMERS customers, $DAYS days of purchases from $START, and $AFTER more (1% damaged rows)"
rm -rf var/landing
"$BIN/crm" generate-data --customers "$CUSTOMERS" --days "$((DAYS + AFTER))" --start "$START" --seed 7 --bad-rows 0.01

echo "==> Airflow metadata database (var/airflow): migrating"
"$BIN/airflow" db migrate > var/log/airflow-db-migrate.log 2>&1

echo "==> Running the crm_ingest DAG through Airflow for $START .. $END (log: var/log/demo-crm_ingest.log)"
if "$BIN/airflow" dags test crm_ingest --conf "{\"start_date\": \"$START\", \"end_date\": \"$END\"}" \
    > var/log/demo-crm_ingest.log 2>&1; then
  grep -E "DagRun Finished" var/log/demo-crm_ingest.log | sed -E 's/.*(state=[a-z]+).*/    DAG run finished: \1/' || true
else
  echo "    the DAG run failed; see var/log/demo-crm_ingest.log" >&2
  exit 1
fi

echo "==> Reconciliation, as recorded per batch in the CRM database"
"$BIN/crm" batches --quiet
echo
echo "Rejected rows are in the quarantine table, for example:"
"$BIN/python" - <<'PY'
from sqlalchemy import select
from crm_tasks.settings import settings
from crm_tasks.store.engine import make_engine
from crm_tasks.store.models import QuarantinedRow
engine = make_engine(settings().resolved_database_url())
with engine.connect() as conn:
    for row in conn.execute(select(QuarantinedRow.file_path, QuarantinedRow.line_no, QuarantinedRow.reason)
                            .order_by(QuarantinedRow.id).limit(5)):
        print(f"    {row.file_path}:{row.line_no}: {row.reason}")
PY

# One history step per day over the last week, so that sizes change and customers move.
SEG_FROM=$(date -d "$END - 7 days" +%F)
SINCE=$(date -d "$END - 6 days" +%F)
echo
echo "==> Running the crm_segments DAG through Airflow for $SEG_FROM .. $END (log: var/log/demo-crm_segments.log)"
if "$BIN/airflow" dags test crm_segments --conf "{\"as_of\": \"$SEG_FROM\", \"through\": \"$END\"}" \
    > var/log/demo-crm_segments.log 2>&1; then
  grep -E "DagRun Finished" var/log/demo-crm_segments.log | sed -E 's/.*(state=[a-z]+).*/    DAG run finished: \1/' || true
else
  echo "    the DAG run failed; see var/log/demo-crm_segments.log" >&2
  exit 1
fi

echo "==> Segments: RFM, lifecycle, value tiers and the custom segments of segments/"
"$BIN/crm" segments list
echo
echo "Moves between segments since $SINCE (the most frequent first):"
"$BIN/crm" segments transitions --since "$SINCE" | sed -n '2,11p'
echo
echo "==> Recommendations as of $END: co-purchase statistics and each customer's products, for the e-mails"
"$BIN/crm" recommendations refresh --as-of "$END" | sed "s/^/    /"
echo
echo "==> Campaigns: each shipped campaign planned for the first day from $END on which it has recipients"
echo "    (a preview: nothing is stored or sent; days after $END are time travel)"
rm -f var/log/demo-campaign-days.txt
"$BIN/python" - "$END" <<'PY'
import sys
from datetime import date, timedelta
from crm_tasks.campaigns.definitions import load_campaigns
from crm_tasks.settings import settings
from crm_tasks.store.engine import make_engine
from crm_tasks.errors import CampaignBlocked
from crm_tasks.campaigns.planning import plan_campaign
from crm_tasks.messages.render import renderer_for

cfg = settings()
engine = make_engine(cfg.resolved_database_url())
renderer = renderer_for(cfg)
end = date.fromisoformat(sys.argv[1])
campaigns, problems = load_campaigns(cfg)
for p in problems:
    print(f"    broken: {p}")
for c in campaigns:
    for k in range(90):
        try:
            r = plan_campaign(engine, cfg, c, end + timedelta(days=k), record=False, sample=1, renderer=renderer)
        except CampaignBlocked as exc:
            r = exc.result
        if r.recipients:
            break
    reasons = ", ".join(f"{why} {n}" for why, n in r.reasons.items()) or "none"
    print(f"    {c.name:<18} {r.as_of}  audience {r.audience:>4}  recipients {r.recipients:>4}  "
          f"holdout {r.holdout:>3}  excluded {r.excluded:>3} ({reasons})")
    with open("var/log/demo-campaign-days.txt", "a", encoding="utf-8") as days:
        days.write(f"{c.name} {r.as_of}\n")
PY
echo
SMTP_PORT=${DEMO_SMTP_PORT:-8025}
echo "==> Delivery: each campaign run for that day and sent (replayed as if on that day) to a local SMTP sink on port $SMTP_PORT (var/mail/*.eml)"
rm -rf var/mail
"$BIN/crm" smtp-sink --port "$SMTP_PORT" --dir var/mail 2> var/log/demo-smtp-sink.log &
SINK=$!
trap 'kill $SINK 2>/dev/null || true' EXIT
for _ in $(seq 1 50); do
  (echo > "/dev/tcp/127.0.0.1/$SMTP_PORT") 2>/dev/null && break
  sleep 0.2
done
export CRM_SMTP_URL="smtp+insecure://127.0.0.1:$SMTP_PORT"
while read -r name day; do
  "$BIN/crm" campaign run "$name" --as-of "$day" --replay | grep -E "^(delivered|  ledger|  some)" | sed "s/^/    $name: /"
done < var/log/demo-campaign-days.txt
kill $SINK 2>/dev/null || true
echo "    $(find var/mail -name '*.eml' | wc -l) e-mails in var/mail/ (open one in a mail client, or read it as text)"
echo
echo "==> Success measures: the $AFTER days of purchases after $END land, then every run is measured as of $LATER"
echo "    (the demo's shoppers never saw the e-mails, so an honest verdict is \"no detectable effect\" or \"not enough data yet\")"
"$BIN/crm" ingest --from "$(date -d "$END + 1 day" +%F)" --to "$LATER" > var/log/demo-ingest-after.log 2>&1 \
  || { echo "    ingest of the later days failed; see var/log/demo-ingest-after.log" >&2; exit 1; }
"$BIN/crm" report refresh --as-of "$LATER" | sed "s/^/    /"
while read -r name _day; do
  echo
  "$BIN/crm" report campaign "$name" 2>&1 | sed "s/^/    /" || true
done < var/log/demo-campaign-days.txt
echo
"$BIN/crm" report control | tail -n 3 | sed "s/^/    /"
echo
echo "==> Sales and lifecycle KPIs as of $LATER (the sales cube is built by the first command)"
"$BIN/crm" report sales --by month --refresh "$LATER" | tail -n 6 | sed "s/^/    /"
echo
"$BIN/crm" report kpis --as-of "$LATER" --months 6 | sed "s/^/    /"
echo
echo "==> Revenue forecast: the next 90 days as of $LATER (ETS with a weekly season), backtested against seasonal naive"
"$BIN/crm" report forecast --fit --as-of "$LATER" | sed "s/^/    /"
echo
echo "==> Cleanup: a dry run as of $END (stale profiles archived, duplicates merged; nothing is changed)"
"$BIN/crm" cleanup --as-of "$END" --dry-run
echo
echo "Done. The CRM database is var/crm.db; \`make airflow\` opens the Airflow UI on http://localhost:8080"
echo "(user admin, password in var/airflow/simple_auth_manager_passwords.json.generated), where the CRM menu"
echo "under Plugins holds the CRM pages: http://localhost:8080/plugin/crm-overview"
echo "Try: .venv/bin/crm segments show lapsed_high_spenders --limit 5"
echo "     .venv/bin/crm segments transitions --since $SINCE --from-segment lifecycle:active --to-segment lifecycle:at_risk"
echo "     .venv/bin/crm campaign plan birthday --as-of 2028-02-29"
echo "     .venv/bin/crm campaign status birthday --as-of $(awk '$1 == "birthday" {print $2}' var/log/demo-campaign-days.txt)"
echo "     .venv/bin/crm preview at_risk_offer --customer C0000007 --locale fa   (then open var/preview/*.html)"
echo "     .venv/bin/crm report campaign birthday --json"
