"""Annotations and filtering, video decoding, the frame cache, datasets, synthetic SSv2."""
