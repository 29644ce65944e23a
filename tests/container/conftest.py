"""Prints the image's figures (size, time to ready) in the run's summary."""

from __future__ import annotations

import pytest

from tests.container.test_image import FIGURES


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for line in FIGURES:
        terminalreporter.write_line(line)
