"""`python -m bench.percall` measures the server's own cost per call for each case."""

from __future__ import annotations

import pytest

from bench import percall


def test_percall_measures_every_case(capsys: pytest.CaptureFixture[str]) -> None:
    assert percall.main(["--calls", "20"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["doubler", "order_heavy", "order_noschema"]
    assert all(float(line.split()[1]) > 0 for line in lines)
