"""The labeling loop, one module per stage, and the embedded runner that steps them all in one process."""
