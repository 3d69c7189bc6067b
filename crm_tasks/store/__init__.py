"""The CRM store: how the database is opened and migrated (``engine``), its tables (``models``),
the column types that keep money exact and times in UTC on both dialects (``types``), and
the bulk paths every stage writes through (``bulk``). Migrations live in ``migrations/``."""
