"""Stage 6, cleanup: stale and duplicate profiles, and erasure on request.

``archive`` runs the weekly cleanup (archive by named rule, purge after the grace period, the
guardrail and the record), with ``merge`` (duplicates into one survivor) and ``restore`` (archived
profiles put back); ``erasure`` removes one person's personal data everywhere.
"""
