"""Winnow: self-hosted active-learning labeling. ``winnow.core`` is the library, ``winnow.services``
the processes and the CLI, ``winnow.v1`` the generated API and bus records."""
