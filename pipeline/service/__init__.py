"""The analysts' web service (``dfpipe serve``): see ``pipeline.service.app``."""
