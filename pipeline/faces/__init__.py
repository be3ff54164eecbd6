"""Faces in videos, shared by extract and score: the MTCNN detector (``detect``), IoU tracks
(``tracks``), track-and-verify, the default detector mode (``track_verify``), crops and their
JPEG round trip (``crops``), and one video's faces (``video.extract_faces`` -> ``records.VideoFaces``).
"""
