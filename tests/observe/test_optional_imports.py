"""The optional hooks: `import coordinator` never imports their libraries, and a missing extra says which."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, check=True, timeout=60,
                          capture_output=True, text=True).stdout.strip()


def test_importing_coordinator_imports_neither_hook_nor_its_library() -> None:
    # redis-py 8 imports opentelemetry by itself when it is installed; the hooks' modules must not load.
    out = run("""
        import sys
        import coordinator as co, coordinator.observe.alerts
        hooks = ('coordinator.observe.prometheus', 'coordinator.observe.otel')
        print('prometheus_client' in sys.modules, any(m in sys.modules for m in hooks))
        print('PrometheusHook' in co.__all__, 'OpenTelemetryHook' in co.__all__)
        co.PrometheusHook, co.OpenTelemetryHook
        print('prometheus_client' in sys.modules, all(m in sys.modules for m in hooks))
    """)
    assert out.splitlines() == ["False False", "True True", "True True"]


def test_coordinator_works_without_either_library() -> None:
    out = run("""
        import sys
        sys.modules['prometheus_client'] = sys.modules['opentelemetry'] = None  # neither extra installed
        import coordinator as co
        c = co.Coordinator('memory://', [co.PoolConfig(name='p', members=[co.Member(id='a')])])
        print(c.call('p', lambda member: member.id))
        try:
            co.OpenTelemetryHook
        except ImportError as exc:
            print(exc)
    """)
    served, error = out.splitlines()
    assert served == "a"
    assert error.startswith(
        "coordinator.OpenTelemetryHook needs an optional dependency: pip install 'coordinator[otel]'")


def test_a_missing_extra_names_the_extra_to_install() -> None:
    out = run("""
        import sys
        sys.modules['prometheus_client'] = None  # as if the extra were not installed
        import coordinator as co
        try:
            co.PrometheusHook
        except ImportError as exc:
            print(exc)
        try:
            co.NoSuchThing
        except AttributeError as exc:
            print(exc)
    """)
    first, second = out.splitlines()
    assert first.startswith(
        "coordinator.PrometheusHook needs an optional dependency: pip install 'coordinator[prometheus]'")
    assert second == "module 'coordinator' has no attribute 'NoSuchThing'"
