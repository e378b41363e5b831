"""Command-line values that Hydra or NumPy would misread: a path with characters outside ASCII
(Hydra's lexer error says nothing about quoting) and a seed NumPy would wrap around to another."""

from __future__ import annotations

import pytest

from conftest import TINY, run_cli

pytestmark = pytest.mark.slow


def test_an_unquoted_non_ascii_path_says_how_to_quote(tmp_path):
    proc = run_cli("verify", "dataset=folder", "dataset.root=/data/ünï", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "token recognition error" not in proc.stderr
    assert "quote the value, e.g. \"dataset.root='/data/ünï'\"" in proc.stderr
    quoted = run_cli("verify", "dataset=folder", "dataset.root='/data/ünï'", cwd=tmp_path,
                     check=False)
    assert "Hydra reads characters" not in quoted.stderr
    assert "/data/ünï" in quoted.stdout + quoted.stderr


@pytest.mark.parametrize("seed", ["4294967296", "-1"])
def test_a_seed_outside_numpys_range_is_refused(tmp_path, seed):
    proc = run_cli("train", *TINY, f"seed={seed}", "hydra.run.dir=run", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert f"seed={seed}: use an integer in 0..4294967295" in proc.stdout + proc.stderr
