"""The interfaces the loop depends on: the message bus and the label store."""
