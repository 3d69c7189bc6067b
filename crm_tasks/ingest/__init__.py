"""Stage 1, ingest: landing files in, reconciled batches out.

``readers`` reads CSV and Parquet in bounded chunks with line numbers; ``standardise`` cleans
and validates every field, vectorised; ``batches`` runs a file as one idempotent batch with
quarantine and reconciliation; ``metrics`` keeps per-customer purchase totals current for the
customers a batch touched.
"""
