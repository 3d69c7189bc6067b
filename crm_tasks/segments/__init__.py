"""Stage 2, segments: who the customers are on a business day.

``compute`` recomputes scores, the built-in families (RFM, lifecycle, value) and custom
segments, and records membership history; ``rules`` is the custom rule language (parse,
check, compile to SQL); ``history`` reads segments, members on a date and the moves between them.
"""
