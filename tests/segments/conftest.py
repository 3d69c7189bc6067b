"""The segment tests' settings come from tests/conftest.py (``seg_cfg``: the repository's crm.yaml with this
test's database, landing and segment folders)."""
