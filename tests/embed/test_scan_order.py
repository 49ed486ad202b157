"""embed-ct's walk order: rows grouped by scan (first appearance), finished ids skipped, positions only."""

from __future__ import annotations

import numpy as np

from pipeline.embed.stage import scan_order
from schemas.manifest import ManifestRow
from tests.helpers.phantoms import manifest_row


def test_scan_order_groups_reconstructions_and_skips_done():
    ids = ["valid_1_a_1", "valid_2_a_1", "valid_1_a_2", "valid_3_b_1", "valid_2_a_2", "valid_1_a_3"]
    rows = [ManifestRow.model_validate(manifest_row(v, f"{v}.nii.gz")) for v in ids]
    # By hand: scan valid_1_a first seen at 0 (rows 0, 2, 5), valid_2_a at 1 (1, 4), valid_3_b at 3 (3).
    np.testing.assert_array_equal(scan_order(rows), [0, 2, 5, 1, 4, 3])
    np.testing.assert_array_equal(scan_order(rows, skip={"valid_1_a_2", "valid_3_b_1"}), [0, 5, 1, 4])
    assert scan_order(rows, skip=set(ids)).size == 0
