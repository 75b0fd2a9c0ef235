"""Winnow's processes: each wires the core library to the bus, the store and the network."""
