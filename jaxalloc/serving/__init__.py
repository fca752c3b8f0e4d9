"""Real serving engines, started and stopped from Python (tests, benchmarks, the guide's recipe)."""

from .vllm import VLLMServer, VLLMStartError, find_vllm_python

__all__ = ["VLLMServer", "VLLMStartError", "find_vllm_python"]
