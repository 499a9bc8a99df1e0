"""nexussched: predictive SLO-aware routing (PRISM) and batch planning (LENS) for LLM serving."""

__version__ = "0.1.0"
