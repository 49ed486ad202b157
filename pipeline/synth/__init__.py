"""Synthetic miniature CT-RATE: chest CT phantoms with drawn abnormalities, reports and labels.

Modules, in the order data flows through them:

* :mod:`~pipeline.synth.plan`: patients, scans, reconstructions, splits and names.
* :mod:`~pipeline.synth.findings`: the 18 labels (prevalence, co-occurrence) and their details.
* :mod:`~pipeline.synth.geometry`: voxel grids in patient millimetres, tube and blob primitives.
* :mod:`~pipeline.synth.anatomy`: the normal chest of one patient (shape drawn per patient).
* :mod:`~pipeline.synth.airways`: the bronchovascular trees of the lungs.
* :mod:`~pipeline.synth.abnormalities`: how each label changes the anatomy.
* :mod:`~pipeline.synth.scanner`: kernel blur, slice thickness, noise, field of view, storage.
* :mod:`~pipeline.synth.reports`: Findings and Impressions text from the drawn findings.
* :mod:`~pipeline.synth.writer`: the CT-RATE folder layout and CSVs.
"""
