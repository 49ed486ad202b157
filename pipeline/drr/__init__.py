"""simulate-drr: physically based DRRs from CT (PyTorch, CPU or CUDA), rendered by Dask into Zarr.

Modules: ``physics`` (HU -> attenuation), ``geometry`` (views, source and detector in patient
coordinates), ``projector`` (separable Joseph projector), ``postprocess`` (display image),
``render`` (one volume -> images), ``store`` (Zarr layout), ``stage`` (Dask run), ``preview``.
"""
