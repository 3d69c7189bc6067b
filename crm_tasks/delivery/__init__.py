"""Stage 5, delivery: each planned message sent at most once, and every outcome recorded.

``ledger`` is the send ledger's state machine; ``send`` delivers a run's ledger in batches
(claim, consent re-check, render, build, send, outcomes, bounces, retries); ``smtp`` is the
connection pool and the local sink; ``suppression`` keeps opt-outs and bounces by hash;
``unsubscribe`` is the one-click endpoint the plugin mounts.
"""
