"""Winnow's core library: inference, scoring, selection, calibration, consensus, training, bus and store.

Importable without Kafka or gRPC; the services package wires it to the network.
"""
