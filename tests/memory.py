"""Peak memory of a piece of code, measured in a fresh interpreter: for the tests that hostile input
costs little memory."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def rss_growth(code: str, imports: str) -> tuple[float, str]:
    """(MB, result): how much the peak RSS of a fresh interpreter grows while it runs ``code``, after
    ``imports`` (import statements, one line); ``code`` leaves a str in ``result``. Read from the
    kernel's high-water mark of the process's own memory (VmHWM; ru_maxrss would start at the forking
    test process's peak). Skips where there is no /proc (not Linux)."""
    if not Path("/proc/self/status").is_file():
        pytest.skip("needs /proc/self/status (Linux)")
    prog = (f"import re, sys\nsys.path.insert(0, {str(REPO)!r})\n{imports}\n"
            "def hwm():\n    status = open('/proc/self/status').read()\n"
            "    return int(re.search(r'VmHWM:\\s*(\\d+)', status)[1])\n"
            f"before = hwm()\n{code}\n"
            "print((hwm() - before) / 1024)\nprint(result.replace('\\n', ' '))\n")
    run = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    growth, result = run.stdout.strip().split("\n", 1)
    return float(growth), result
