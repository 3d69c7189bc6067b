"""Stage 6, cleanup: stale and duplicate profiles, and erasure on request.

``archive`` runs the weekly cleanup (archive by named rule, merge duplicates, purge after the
grace period, restore); ``erasure`` removes one person's personal data everywhere.
"""
