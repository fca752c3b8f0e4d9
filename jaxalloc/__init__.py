"""jaxalloc: queueing-aware allocation of LLM reasoning-token budgets, in JAX.

Implements Ozbas & Bastopcu, "Queueing-Aware Optimization of Reasoning Tokens
for Accuracy-Latency Trade-offs in LLM Servers", and goes beyond it.
"""

from .implicit import optimal_budgets
from .lambertw import lambertw, lambertw_log, log_lambertw_log
from .loadtest import LoadtestError, LoadtestResult, loadtest
from .model import (
    Problem,
    ProblemError,
    bundled_profiles,
    load_profile,
    make_problem,
    paper_profile,
    problem_from_dict,
    problem_to_toml,
    validate,
)
from .objective import (
    delay_prices,
    gradient,
    hessian,
    integer_bound_holds,
    integer_lower_bound,
    kkt_residual,
    load,
    mean_accuracy,
    mean_system_time,
    mean_wait,
    moments,
    monotone_lower_bound,
    objective,
    service_times,
    system_time,
    task_accuracy,
    task_system_time,
    utilization,
)
from .servers import FIFO, KINDS, Batching, Priority, Server, ServerError, make_server
from .simulate import (
    SimulationError,
    SimulationResult,
    format_simulation_report,
    simulate,
    simulate_points,
    simulation_report,
)
from .solution import Solution, Status
from .solve import SolveError, get_solver, solve, solve_many, solve_point
from .solvers import AggregateNewton, FixedPoint, ProjectedGradient, ProjectedNewton, ScaledGradient
from .solvers.integer import (
    MAX_ENUMERATE_TASKS,
    coordinate_search,
    enumerate_floor_ceil,
    integer_budgets,
    round_budgets,
)
from .sweep import SweepError, SweepResult, parse_range, sweep

__version__ = "0.1.0"

__all__ = [
    "FIFO",
    "KINDS",
    "MAX_ENUMERATE_TASKS",
    "AggregateNewton",
    "Batching",
    "FixedPoint",
    "LoadtestError",
    "LoadtestResult",
    "Priority",
    "Problem",
    "ProblemError",
    "ProjectedGradient",
    "ProjectedNewton",
    "ScaledGradient",
    "Server",
    "ServerError",
    "SimulationError",
    "SimulationResult",
    "Solution",
    "SolveError",
    "Status",
    "SweepError",
    "SweepResult",
    "bundled_profiles",
    "coordinate_search",
    "delay_prices",
    "enumerate_floor_ceil",
    "format_simulation_report",
    "get_solver",
    "gradient",
    "hessian",
    "integer_bound_holds",
    "integer_budgets",
    "integer_lower_bound",
    "kkt_residual",
    "lambertw",
    "lambertw_log",
    "load",
    "load_profile",
    "loadtest",
    "log_lambertw_log",
    "make_problem",
    "make_server",
    "mean_accuracy",
    "mean_system_time",
    "mean_wait",
    "moments",
    "monotone_lower_bound",
    "objective",
    "optimal_budgets",
    "paper_profile",
    "parse_range",
    "problem_from_dict",
    "problem_to_toml",
    "round_budgets",
    "service_times",
    "simulate",
    "simulate_points",
    "simulation_report",
    "solve",
    "solve_many",
    "solve_point",
    "sweep",
    "system_time",
    "task_accuracy",
    "task_system_time",
    "utilization",
    "validate",
]
