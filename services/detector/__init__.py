"""Detector: fetch, decode safely, find faces (YuNet), gate on quality, align, one event per face."""
