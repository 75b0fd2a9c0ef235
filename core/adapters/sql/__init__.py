"""One SQL label store (``store``) over a small dialect (``dialect``: SQLite or PostgreSQL), with one
migration runner (``migrations``)."""
