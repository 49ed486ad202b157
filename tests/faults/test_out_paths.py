"""An --out whose folder cannot be made (a part of the path is a regular file): one line, exit 2, every stage."""

from __future__ import annotations

from tests.faults.conftest import cli, embed_args


def test_out_below_a_regular_file_is_one_line(embed_inputs, tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("precious")
    table = tmp_path / "t.csv"
    table.write_text("VolumeName,Findings_EN,Impressions_EN\nvalid_0_a_1,f,i\n")
    commands = {
        "embed-ct": embed_args(embed_inputs, plain / "e.h5"),
        "simulate-drr": ["simulate-drr", "--manifest", embed_inputs.manifest, "--out", plain / "d.zarr"],
        "synth": ["synth", "--out", plain / "s", "--n", "2", "--size", "32", "--no-progress"],
        "manifest": [
            "manifest",
            "generic",
            "--volumes",
            embed_inputs.root,
            "--table",
            table,
            "--out",
            plain / "m.jsonl",
        ],
    }
    for stage, args in commands.items():
        res = cli(*args)
        assert res.exit_code == 2, (stage, res.stderr)
        assert "cannot create the folder" in res.error_line and str(plain) in res.error_line, stage
    assert plain.read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.txt", "t.csv"]
