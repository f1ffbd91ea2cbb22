"""Conformal calibration on successful rollouts: thresholds, PAC control, p-values, planning.

Pure numpy (plus MAPIE for PAC); the detector turns rollouts into windowed curves and hands
them here.
"""

from .calibrator import CalibrationResult, CalibrationSettings, calibrate_thresholds
from .checks import FalseAlarmEstimate, false_alarm_rate
from .conformal import (
    THRESHOLD_STYLES,
    Profile,
    band_profile,
    conformal_p_values,
    conformal_quantile,
    conformal_rank,
    constant_profile,
    episode_statistics,
    extend_table,
    min_calibration_size,
    per_step_profile,
)
from .planner import CalibrationPlan, plan
from .risk_control import min_pac_calibration_size, pac_quantile

__all__ = [
    "THRESHOLD_STYLES",
    "CalibrationPlan",
    "CalibrationResult",
    "CalibrationSettings",
    "FalseAlarmEstimate",
    "Profile",
    "band_profile",
    "calibrate_thresholds",
    "conformal_p_values",
    "conformal_quantile",
    "conformal_rank",
    "constant_profile",
    "episode_statistics",
    "extend_table",
    "false_alarm_rate",
    "min_calibration_size",
    "min_pac_calibration_size",
    "pac_quantile",
    "per_step_profile",
    "plan",
]
