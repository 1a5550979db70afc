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


def test_importing_coordinator_imports_neither_prometheus_nor_opentelemetry() -> None:
    out = run("""
        import sys
        import coordinator as co, coordinator.observe.alerts
        print(sorted(m for m in sys.modules if m.split('.')[0] in ('prometheus_client', 'opentelemetry')))
        print('PrometheusHook' in co.__all__, 'OpenTelemetryHook' in co.__all__)
        co.PrometheusHook, co.OpenTelemetryHook
        print('prometheus_client' in sys.modules, 'opentelemetry' in sys.modules)
    """)
    assert out.splitlines() == ["[]", "True True", "True True"]


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
