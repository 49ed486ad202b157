"""Label maps kept as data (JSON), read through :mod:`schemas.labels`."""
