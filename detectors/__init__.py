"""Drift statistics: pure numpy/scipy functions and frozen results, no I/O.

Entry points: :class:`detectors.reference.Reference` (fit once),
:class:`detectors.drift.DriftDetector` (score windows) and
:func:`detectors.drift.class_distribution_drift` (predicted-class counts).
The test functions in :mod:`detectors.ks`, :mod:`detectors.chi2`,
:mod:`detectors.cvm`, :mod:`detectors.location_scale`, :mod:`detectors.distance`
and :mod:`detectors.correction` can be used on their own. Importing does nothing.
"""
