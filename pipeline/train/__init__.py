"""Stage 5, ``dfpipe train`` (``stage.run``): datasets of clips and images (``data``), the one
train/predict loop (``engine``), multi-process training (``distributed``) and cached frozen-encoder
features (``features``).
"""
