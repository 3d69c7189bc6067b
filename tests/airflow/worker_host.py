"""The host name a Celery worker of the end-to-end test reports for its task instances ([core]
hostname_callable): two workers on one machine stand for two machines."""

from __future__ import annotations

import os
import socket


def hostname() -> str:
    return os.environ.get("CRM_TEST_WORKER") or socket.getfqdn()
