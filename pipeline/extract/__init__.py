"""Stage 1, ``dfpipe extract``: raw videos -> face crops + ``videos``/``faces`` manifests.

``stage.run(cfg)`` finds the inputs, resumes finished videos and runs ``worker.ExtractWorker`` per
video on an engine; ``manifests.write_manifests`` writes both manifests; ``import_faces``
(``--from-faces``) imports pre-extracted crops; ``merge.merge_extract`` joins extract shards.
"""
