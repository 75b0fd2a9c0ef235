"""The gRPC edge of winnow.v1: ``convert`` (messages <-> records), ``errors`` (WinnowError <-> status),
``operations`` (what the API does, on records), ``servicers`` (thin) and ``server`` (``create_server``).

The client imports only ``convert`` and ``errors``; nothing here is imported by this package file.
"""
