"""Synthetic DFDC-like data for the demo and the tests: ``dataset.run`` (``dfpipe synth``),
rendering frames (``render``) and encoding them (``encode``).
"""
