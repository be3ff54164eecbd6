"""Stage 7, ``dfpipe score``: whole videos and still images -> verdicts with evidence.

One input: ``scorer.VideoScorer.score(path)`` walks a video down ``find`` (decode, faces on the
``plan``'s slot frames) -> ``windows`` (tracks into the windows' slots) -> ``predict`` (p_fake per
window) -> ``verdict`` (tracks -> the video's p_fake and label) -> ``evidence`` (Grad-CAM sheet,
``explain``); a still image goes through ``image``. What a checkpoint says about its use: ``card``.
Many inputs: ``batch.run`` / ``batch.score_all`` (journal, resume, engines, ``batch_index``
page); ``merge.merge_scores`` joins score shards.
"""
