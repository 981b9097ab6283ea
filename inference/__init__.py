"""Line inspection: ONNX models, the Ray Serve tier, station runners, explanations, drift.

Importing this package is cheap on purpose: PyTorch lives only in ``inference.training``
and Ray only in ``inference.serve`` / ``inference.inspection``, so a node that only
inspects (or only explains) never pays for, or needs, either of them.
"""
