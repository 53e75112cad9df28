"""The jobs built on samplers: inpainting, denoising (anomaly detection lives in ``difflab.anomaly``).

Each task has a low-level function of a denoiser in model space (testable against analytic oracles) and a
high-level function of a loaded :class:`difflab.model.DiffusionModel` that works in data units.
"""
