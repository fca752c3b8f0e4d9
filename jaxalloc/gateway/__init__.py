"""`jaxalloc gateway`: the budgets in production.

An OpenAI-compatible reverse proxy in front of vLLM or SGLang that reads each request's task,
applies the task's thinking budget, estimates the arrival rate and task mix on a sliding
window, and re-solves the profile's problem every few seconds.

- :mod:`~jaxalloc.gateway.estimate`: λ̂ and π̂ on a sliding window.
- :mod:`~jaxalloc.gateway.policy`: the compiled re-solve, and when the budgets move.
- :mod:`~jaxalloc.gateway.enforce`: the task of a request, and its budget applied to the body.
- :mod:`~jaxalloc.gateway.metrics`: Prometheus metrics.
- :mod:`~jaxalloc.gateway.app`: the aiohttp application; :mod:`~jaxalloc.gateway.cli`: the command.
"""
