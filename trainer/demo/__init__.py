"""``x2ct-pipeline demo``: synth -> manifests -> simulate-drr -> embed-ct -> train -> evaluate -> summary."""
