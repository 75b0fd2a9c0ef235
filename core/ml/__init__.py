"""Models: the sentence encoder, classifier heads, the runtime, scoring, calibration and certification, consensus, training."""
