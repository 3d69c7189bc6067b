"""The proof that every message renders, on worker processes: the same first failure as rendering in one
process, the time limit still enforced in a forked worker, and small plans rendered in-process."""

from __future__ import annotations

from crm_tasks.messages import render_check
from crm_tasks.messages.render import Renderer
from crm_tasks.messages.render_check import RenderCheck, check_all

HTML = "<p>{{ customer.first_name }}{% if customer.first_name == 'boom' %}{{ no_such_value }}{% endif %}</p>"
SLOW = ("{% if customer.first_name == 'slow' %}{% for a in range(1000) %}{% for b in range(1000) %}"
        "{% for c in range(1000) %}{% endfor %}{% endfor %}{% endfor %}{% endif %}")


def _renderer(folder, html: str = HTML) -> Renderer:
    (folder / "locales").mkdir(exist_ok=True)
    (folder / "locales" / "en.yaml").write_text('hello: "Hello {name}"\n', encoding="utf-8")
    (folder / "x").mkdir(exist_ok=True)
    (folder / "x" / "subject.txt").write_text("{{ t('hello', name=customer.first_name) }}", encoding="utf-8")
    (folder / "x" / "body.html").write_text(html, encoding="utf-8")
    (folder / "x" / "body.txt").write_text("{{ customer.first_name }}", encoding="utf-8")
    return Renderer(folder, ["en"])


def _jobs(n: int, bad: dict[int, str]) -> list[tuple[str, dict]]:
    return [("x", {"lang": "en", "customer": {"first_name": bad.get(i, f"C{i}")}}) for i in range(n)]


def test_workers_find_the_same_first_failure_as_one_process(tmp_path):
    renderer = _renderer(tmp_path)
    jobs = _jobs(6_000, {4_321: "boom", 1_234: "boom", 5_999: "boom"})
    check = RenderCheck(renderer, 2, len(jobs))
    assert check.pool is not None  # large enough for workers
    for job in jobs:
        check.add(*job)
    parallel = check.close()
    assert parallel == check_all(renderer, jobs, 1, len(jobs))
    assert parallel[0] == 1_234 and "no_such_value" in parallel[1]
    assert check_all(renderer, _jobs(6_000, {}), 2, 6_000) is None


def test_a_forked_worker_still_stops_a_render_that_runs_too_long(tmp_path):
    renderer = _renderer(tmp_path, html=SLOW)
    renderer.render_seconds = 0.3
    index, error = check_all(renderer, _jobs(5_000, {2_500: "slow"}), 2, 5_000)
    assert index == 2_500 and "rendering one message took more than 0.3 s" in error


def test_a_small_plan_renders_in_this_process(tmp_path):
    renderer = _renderer(tmp_path)
    check = RenderCheck(renderer, 2, render_check.MIN_PARALLEL - 1)
    assert check.pool is None
    check.add("x", {"lang": "en", "customer": {"first_name": "boom"}})
    assert check.close()[0] == 0
    assert render_check.processes_for(3) == 3 and render_check.processes_for(0) >= 1
