"""SIGKILL and resume, compared with an uninterrupted run.

simulate-drr and embed-ct have theirs next to their stages (tests/drr/test_drr_stage.py:
test_sigkill_loses_only_items_in_flight; tests/embed/test_stage.py:
test_resume_after_sigkill_gives_the_rows_of_an_uninterrupted_run). Here: synth, killed in the
middle of writing a volume.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.faults.conftest import cli, tree_digest

ROOT = Path(__file__).resolve().parents[2]
SYNTH = ["--n", "6", "--size", "32", "--seed", "3", "--workers", "1", "--no-progress"]


def test_synth_killed_mid_volume_resumes_to_the_bytes_of_an_uninterrupted_run(tmp_path):
    killed = tmp_path / "killed"
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        from pipeline.runtime import atomic_path
        from pipeline.synth import writer
        real, calls = writer._write_nifti, []

        def dying(path, *args):
            calls.append(path)
            if len(calls) == 4:  # three volumes written; the fourth is half-written when the process dies
                with atomic_path(path) as tmp:
                    tmp.write_bytes(b"half a volume")
                    os.kill(os.getpid(), signal.SIGKILL)
            real(path, *args)

        writer._write_nifti = dying
        from pipeline.cli import app
        app(["synth", "--out", {str(killed)!r}, *{SYNTH!r}])
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    volumes = [p for p in killed.rglob("*.nii.gz") if not p.name.startswith(".")]
    assert len(volumes) == 3  # finished volumes only under their final names
    assert len([p for p in killed.rglob(".*.tmp-*")]) == 1  # the half-written one under a temporary name
    finished = tree_digest(*volumes)

    res = cli("synth", "--out", killed, *SYNTH)  # the same command again
    assert res.exit_code == 0, res.stderr
    whole = tmp_path / "whole"
    assert cli("synth", "--out", whole, *SYNTH).exit_code == 0

    def files(root):
        return {str(Path(k).relative_to(root)): v for k, v in tree_digest(root).items() if "provenance" not in k}

    assert files(killed) == files(whole)  # byte-identical, no temporary left behind
    assert all(tree_digest(Path(p))[p] == h for p, h in finished.items())  # finished volumes were kept
