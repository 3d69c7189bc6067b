"""``python -m crm_tasks.cli``: the same as the ``crm`` command."""

from crm_tasks.cli import main

main()
