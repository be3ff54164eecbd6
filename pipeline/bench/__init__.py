"""``dfpipe bench`` (``run.run``): speed measurements, never part of the tests: extraction and its
decode floor (``extract``), DFDC-size manifests (``scale``, ``evaluate``), training speed
(``train``), crop geometry (``cropcheck``), the shipped model on real sample clips
(``crossdata``); each step in a fresh interpreter where memory is measured (``child``).
"""
