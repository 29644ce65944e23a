"""Data and training for the demo model: the captioned world and its adherence evaluator."""
