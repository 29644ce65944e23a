"""Who shares the UNet: the key file's names, weights and priority allowances, and each call's
share from its key or address."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.dataplane.clients import (
    ANONYMOUS,
    ClientDirectory,
    ClientShare,
    KeyBook,
    Priority,
)

KEYS = """# mobile clients first
k-mobile name=mobile-app weight=4
k-nightly name=nightly priority=batch
k-plain
"""


def directory(tmp_path: Path) -> ClientDirectory:
    (tmp_path / "keys").write_text(KEYS)
    return ClientDirectory(KeyBook.load(tmp_path / "keys"))


def test_the_key_file_names_weights_and_allowances(tmp_path: Path) -> None:
    (tmp_path / "keys").write_text(KEYS)
    mobile, nightly, plain = KeyBook.load(tmp_path / "keys").entries
    assert (mobile.key, mobile.name, mobile.weight) == (b"k-mobile", "mobile-app", 4.0)
    assert mobile.allowance is Priority.INTERACTIVE and nightly.allowance is Priority.BATCH
    assert plain.name.startswith("key:") and plain.weight == 1.0  # a hash, never the key


@pytest.mark.parametrize(
    ("line", "complaint"),
    [
        ("k weight=0", "weight must be a number above 0"),
        ("k weight=lots", "weight must be a number above 0"),
        ("k priority=urgent", "priority must be one of interactive, batch"),
        ("k colour=red", "'colour=red' is not name=, weight= or priority="),
    ],
)
def test_a_bad_key_line_is_refused_naming_the_line(
    tmp_path: Path, line: str, complaint: str
) -> None:
    (tmp_path / "keys").write_text(f"good-key\n{line}\n")
    with pytest.raises(ValueError, match=f"keys:2: .*{complaint}"):
        KeyBook.load(tmp_path / "keys")


def test_a_call_shares_as_its_key_or_else_its_address(tmp_path: Path) -> None:
    clients = directory(tmp_path)
    share, warning = clients.share("Bearer k-mobile", "10.0.0.1", None, Priority.INTERACTIVE)
    assert share == ClientShare("key:mobile-app", "mobile-app", 4.0, Priority.INTERACTIVE)
    assert warning is None
    share, _ = clients.share(None, "10.0.0.9", Priority.BATCH, Priority.INTERACTIVE)
    assert share == ClientShare("addr:10.0.0.9", ANONYMOUS, 1.0, Priority.BATCH)


def test_a_key_asking_above_its_allowance_runs_at_it_with_a_warning(tmp_path: Path) -> None:
    clients = directory(tmp_path)
    share, warning = clients.share("Bearer k-nightly", None, Priority.INTERACTIVE, Priority.BATCH)
    assert share.priority is Priority.BATCH
    assert warning is not None and "it ran as 'batch'" in warning
    # Not asking is no offence: the default is lowered to what the key allows, silently.
    share, warning = clients.share("Bearer k-nightly", None, None, Priority.INTERACTIVE)
    assert share.priority is Priority.BATCH and warning is None
