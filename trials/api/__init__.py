"""REST API of the trials app (``/api/v1/``)."""
