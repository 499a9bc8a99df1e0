"""Simulated vLLM-like engines and clusters; their step time comes from hardware profiles."""

from .cluster import ClusterSim, SimResult
from .engine import EngineConfig, EngineSim
from .hardware import PRESETS, HardwareProfile, get_profile, parse_cluster
from .request import SimRequest
from .views import VIEWS, OracleView, ScrapedView

__all__ = [
    "PRESETS",
    "VIEWS",
    "ClusterSim",
    "EngineConfig",
    "EngineSim",
    "HardwareProfile",
    "OracleView",
    "ScrapedView",
    "SimRequest",
    "SimResult",
    "get_profile",
    "parse_cluster",
]
