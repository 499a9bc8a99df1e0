"""Simulated vLLM-like engines and clusters; their step time comes from hardware profiles."""

from .cluster import ClusterSim, SimEngineView, SimResult
from .engine import EngineConfig, EngineSim
from .hardware import PRESETS, HardwareProfile, get_profile, parse_cluster
from .request import SimRequest

__all__ = [
    "PRESETS",
    "ClusterSim",
    "EngineConfig",
    "EngineSim",
    "HardwareProfile",
    "SimEngineView",
    "SimRequest",
    "SimResult",
    "get_profile",
    "parse_cluster",
]
