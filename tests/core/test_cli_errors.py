"""The command line catches PipelineError alone and exits with the error's own status."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.cli_errors import friendly_errors
from schemas.errors import ItemsFailedError, PipelineError


@pytest.mark.parametrize(
    ("error", "status"), [(PipelineError("bad input: fix it"), 2), (ItemsFailedError("3 failed"), 1)]
)
def test_pipeline_error_exits_with_its_status(error, status, capsys):
    @friendly_errors
    def command():
        raise error

    with pytest.raises(SystemExit) as e:
        command()
    assert e.value.code == status
    assert capsys.readouterr().err.strip() == f"error: {error}"


def test_other_exceptions_keep_their_traceback():
    @friendly_errors
    def command():
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        command()


def test_missing_inputs_are_one_line_through_the_app(tmp_path):
    runner = CliRunner()
    missing = tmp_path / "nothing.jsonl"
    result = runner.invoke(app, ["simulate-drr", "--manifest", str(missing), "--out", str(tmp_path / "s.zarr")])
    assert result.exit_code == 2
    assert f"error: manifest {missing} does not exist" in result.output
    result = runner.invoke(app, ["preview", str(tmp_path / "none.zarr"), "--out", str(tmp_path / "p.png")])
    assert result.exit_code == 2 and "not a simulate-drr store" in result.output
