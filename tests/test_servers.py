"""The server models' formulas (jaxalloc/servers) against closed forms and
independent numpy computations; the [server] profile table and its errors."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from problems import random_problem

import jaxalloc as ja
from jaxalloc.servers import FIFO, Batching, ServerError, erlang_c, make_server, pollaczek_khinchine_system_time


def erlang_c_by_sums(c: int, a: float) -> float:
    """Erlang C from its textbook sums (independent of the recursion)."""
    head = sum(a**k / math.factorial(k) for k in range(c))
    tail = a**c / math.factorial(c) * c / (c - a)
    return tail / (head + tail)


def chain_by_brute_force(lam, m1, B, beta, n_max=20000):
    """E[min(N, B)], E[(N − B)⁺] of the birth–death chain, truncated far out (numpy)."""
    n = np.arange(1, n_max + 1)
    m = np.minimum(n, B)
    rate = m / (1 + beta * (m - 1)) / m1
    log_p = np.concatenate([[0.0], np.cumsum(np.log(lam / rate))])
    p = np.exp(log_p - log_p.max())
    p /= p.sum()
    states = np.arange(n_max + 1)
    return float(np.sum(np.minimum(states, B) * p)), float(np.sum(np.maximum(states - B, 0) * p))


@pytest.mark.parametrize("c", [1, 2, 4, 8, 30])
def test_erlang_c_matches_the_textbook_sums(c):
    for frac in (0.05, 0.5, 0.9, 0.99):
        a = frac * c
        got = float(erlang_c(jnp.asarray(float(c)), jnp.asarray(a), 32))
        assert got == pytest.approx(erlang_c_by_sums(c, a), rel=1e-12)


@pytest.mark.parametrize("c", [2, 4, 8])
def test_fifo_c_is_exact_m_m_c_for_exponential_service(c):
    """Lee–Longton's (1 + c_s²)/2 is 1 for exponential service (E[S²] = 2E[S]²): then E[T] is M/M/c's."""
    server = make_server("fifo", ("x",), servers=c)
    m1 = 0.7
    for rho in (0.3, 0.9):
        lam = rho * c / m1
        got = float(server.delay(jnp.asarray(lam), jnp.asarray(m1), jnp.asarray(2 * m1 * m1)))
        want = erlang_c_by_sums(c, lam * m1) / (c / m1 - lam) + m1
        assert got == pytest.approx(want, rel=1e-12)


def test_one_server_is_pollaczek_khinchine_at_any_static_size():
    lam, m1, m2 = jnp.asarray(0.8), jnp.asarray(1.1), jnp.asarray(2.0)
    pk = float(pollaczek_khinchine_system_time(lam, m1, m2))
    assert float(FIFO().delay(lam, m1, m2)) == pk
    assert float(make_server("fifo", ("x",), servers=1, size=8).delay(lam, m1, m2)) == pk  # the c = 1 branch
    batch1 = make_server("batching", ("x",), max_batch=1, batch_slowdown=0.3)
    assert float(batch1.delay(lam, m1, m2)) == pytest.approx(pk, rel=1e-12)


def test_batching_without_slowdown_is_lee_longton_with_c_equal_b():
    lam, m1, m2 = jnp.asarray(5.0), jnp.asarray(0.7), jnp.asarray(0.8)
    for B in (2, 4, 8):
        fifo = make_server("fifo", ("x",), servers=B)
        batch = make_server("batching", ("x",), max_batch=B, batch_slowdown=0.0)
        assert float(batch.delay(lam, m1, m2)) == pytest.approx(float(fifo.delay(lam, m1, m2)), rel=1e-11)


def test_batching_with_full_slowdown_is_processor_sharing():
    """β = 1: the server does one second of batch-1 work per second whatever m: M/G/1-PS,
    E[T | t] = t/(1 − ρ), per task and overall (B large enough never to bind)."""
    server = make_server("batching", ("a", "b"), max_batch=400, batch_slowdown=1.0)
    prob, t = jnp.asarray([0.3, 0.7]), jnp.asarray([0.2, 1.5])
    lam = 0.8 / float(prob @ t)
    per_task = server.task_system_time(jnp.asarray(lam), prob, t, t * t)
    np.testing.assert_allclose(per_task, t / (1 - 0.8), rtol=1e-10)
    assert float(server.system_time(jnp.asarray(lam), prob, t, t * t)) == pytest.approx(float(prob @ t) / 0.2, rel=1e-10)


@pytest.mark.parametrize("B,beta", [(1, 0.0), (4, 0.0), (4, 0.3), (64, 0.05), (64, 1.0)])
def test_batching_chain_matches_a_truncated_brute_force_chain(B, beta):
    """The geometric tail in closed form against the chain summed to 20,000 states."""
    from jaxalloc.servers.batching import batch_rate, chain_moments

    m1 = 0.5
    for frac in (0.3, 0.9):
        lam = frac * float(batch_rate(B, beta)) / m1
        got = chain_moments(jnp.asarray(lam * m1), jnp.asarray(float(B)), jnp.asarray(beta), B)
        want = chain_by_brute_force(lam, m1, B, beta)
        np.testing.assert_allclose([float(g) for g in got], want, rtol=1e-9, atol=1e-13)



@pytest.mark.parametrize("B,beta,dtype,rtol", [(1024, 0.0, jnp.float64, 1e-9), (300, 0.002, jnp.float64, 1e-9),
                                               (200, 0.0, jnp.float32, 2e-4), (61, 0.05, jnp.float32, 2e-4)])
def test_batching_chain_rescales_sums_beyond_the_floats(B, beta, dtype, rtol):
    """Near capacity 1/P(N = 0) is e^1000 at B = 1024, β = 0 (beyond float64) and e^190 at
    B = 200 (beyond float32): the recurrence's running scale keeps the moments exact,
    against the chain summed in logarithms; at light load nothing is scaled."""
    from jaxalloc.servers.batching import batch_rate, chain_moments

    cap = float(batch_rate(B, beta))
    for frac in (1e-3, 0.3, 0.9, 0.999):
        a = frac * cap
        got = chain_moments(jnp.asarray(a, dtype), jnp.asarray(float(B), dtype), jnp.asarray(beta, dtype), B)
        want = chain_by_brute_force(a, 1.0, B, beta, n_max=80000)  # q^80000 < e^-78 at q = 0.999
        assert all(np.isfinite(float(g)) for g in got)
        np.testing.assert_allclose([float(g) for g in got], want, rtol=rtol, atol=1e-12 * B)


@pytest.mark.parametrize("B,beta", [(1, 0.3), (4, 0.0), (8, 0.3), (64, 0.05), (64, 1.0), (16, 2.0)])
def test_batching_chain_derivatives_match_finite_differences(B, beta):
    """chain_moments' custom JVP (forward through the recurrence): first and second
    derivatives in a and the derivative in β, against central differences, up to
    0.999 of capacity."""
    from jaxalloc.servers.batching import batch_rate, chain_moments

    cap = float(batch_rate(B, beta))
    f = jax.jit(lambda a, b: jnp.stack(chain_moments(a, jnp.asarray(float(B)), b, B)))
    total = lambda a, b: chain_moments(a, jnp.asarray(float(B)), b, B)[0] + 2.0 * chain_moments(a, jnp.asarray(float(B)), b, B)[1]
    d_a, d_b = jax.jit(jax.jacfwd(f, argnums=0)), jax.jit(jax.jacrev(f, argnums=1))
    g = jax.jit(jax.grad(total))  # reverse mode, as the delay prices
    d_aa = jax.jit(jax.jacfwd(jax.grad(total)))  # forward over reverse, as their Jacobian in the Newton step
    for frac in (0.05, 0.5, 0.9, 0.999):
        a, b = jnp.asarray(frac * cap), jnp.asarray(beta)
        h = 1e-6 * float(a) * (1 - frac)
        fd = (f(a + h, b) - f(a - h, b)) / (2 * h)
        np.testing.assert_allclose(d_a(a, b), fd, rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(float(d_aa(a, b)), float((g(a + h, b) - g(a - h, b)) / (2 * h)), rtol=1e-6)
        hb = 1e-6 * max(beta, 1.0) * (1 - frac)
        fd_b = (f(a, b + hb) - f(a, b - hb)) / (2 * hb)
        np.testing.assert_allclose(d_b(a, b), fd_b, rtol=1e-5, atol=1e-10)

def cobham_by_hand(lam, prob, t, order):
    """Cobham's per-class waits in plain Python, classes served in `order` (highest first)."""
    w0 = lam * sum(p * x * x for p, x in zip(prob, t)) / 2
    waits, sigma = {}, 0.0
    for k in order:
        before = sigma
        sigma += lam * prob[k] * t[k]
        waits[k] = w0 / ((1 - before) * (1 - sigma))
    return [waits[k] + t[k] for k in range(len(t))]


def test_priority_is_cobham_and_obeys_the_conservation_law():
    names = ("a", "b", "c")
    prob, t = [0.2, 0.5, 0.3], [2.0, 0.5, 1.0]
    lam = 0.85 / float(np.dot(prob, t))
    rho = [lam * p * x for p, x in zip(prob, t)]
    conserved = None
    for order in itertools.permutations(range(3)):
        server = make_server("priority", names, order=[names[k] for k in order])
        got = np.asarray(server.task_system_time(jnp.asarray(lam), jnp.asarray(prob), jnp.asarray(t), jnp.asarray(t) ** 2))
        np.testing.assert_allclose(got, cobham_by_hand(lam, prob, t, order), rtol=1e-13)
        # Kleinrock's conservation law: Σ ρ_k W_k does not depend on the order
        work = float(np.dot(rho, got - np.asarray(t)))
        conserved = work if conserved is None else conserved
        assert work == pytest.approx(conserved, rel=1e-12)
    w0 = lam * float(np.dot(prob, np.square(t))) / 2
    assert conserved == pytest.approx(sum(rho) * w0 / (1 - sum(rho)), rel=1e-12)


def test_priority_with_one_task_is_pollaczek_khinchine():
    server = make_server("priority", ("x",), order=["x"])
    lam, t = jnp.asarray(0.6), jnp.asarray([1.2])
    got = float(server.system_time(lam, jnp.asarray([1.0]), t, t * t))
    assert got == pytest.approx(float(pollaczek_khinchine_system_time(lam, t[0], t[0] ** 2)), rel=1e-14)


SERVERS = [
    ("fifo", {"servers": 1}), ("fifo", {"servers": 4}), ("priority", {"order": "auto"}),
    ("batching", {"max_batch": 4, "batch_slowdown": 0.3}), ("batching", {"max_batch": 64, "batch_slowdown": 0.05}),
]


def _with_server(problem, kind, params, load=0.6):
    """`problem` on the server, λ scaled so that the load at ℓ = 0 is `load` of its capacity."""
    server = make_server(kind, problem.names, **params)
    m1 = float(problem.prob @ problem.t0)
    return problem.replace(server=server, arrival_rate=load * float(server.capacity()) / m1)


@pytest.mark.parametrize("kind,params", SERVERS)
def test_delay_grows_with_every_budget(kind, params):
    """E[T] is nondecreasing in each budget on every server (what the monotone integer bound needs)."""
    grad = jax.jit(jax.grad(ja.system_time, argnums=1))
    for seed in range(5):
        problem = _with_server(random_problem(seed, 4, 0.5, 1.0), kind, params, load=0.3)
        ell = jnp.asarray(np.random.default_rng(seed).uniform(0, 20, 4))
        g = np.asarray(grad(problem, ell))
        assert np.isfinite(ja.system_time(problem, ell))
        assert np.all(g >= 0), (kind, seed, g)


@pytest.mark.parametrize("kind,params", SERVERS[1:])
def test_monotone_lower_bound_holds_at_every_integer_neighbour(kind, params):
    for seed in range(3):
        problem = _with_server(random_problem(seed, 3, 0.5, 1.5), kind, params, load=0.3)
        star = jnp.asarray(np.random.default_rng(seed).uniform(0, 30, 3))
        bound = float(ja.integer_lower_bound(problem, star))
        assert np.isfinite(bound)
        lo, hi = np.floor(np.asarray(star)), np.ceil(np.asarray(star))
        corners = jnp.asarray(list(itertools.product(*zip(lo, hi))))
        values = jax.vmap(ja.objective, in_axes=(None, 0))(problem, corners)
        assert float(values.min()) >= bound


def test_delay_is_differentiable_in_rate_and_slowdown():
    problem = _with_server(random_problem(3, 3, 0.5, 1.0), "batching", {"max_batch": 8, "batch_slowdown": 0.2}, 0.8)
    ell = jnp.asarray([5.0, 10.0, 2.0])

    def delay(lam, beta):
        return ja.system_time(problem.replace(arrival_rate=lam, batch_slowdown=beta), ell)

    lam, beta = problem.arrival_rate, jnp.asarray(0.2)
    g = jax.grad(delay, argnums=(0, 1))(lam, beta)
    for i, (x, h) in enumerate([(lam, 1e-6 * lam), (beta, 1e-6)]):
        args = [lam, beta]
        up, down = list(args), list(args)
        up[i], down[i] = x + h, x - h
        fd = (float(delay(*up)) - float(delay(*down))) / (2 * float(h))
        assert float(g[i]) == pytest.approx(fd, rel=1e-6)


def test_default_server_changes_nothing(paper):
    explicit = paper.replace(server=FIFO(servers=jnp.asarray(1.0)))
    ell = jnp.linspace(0.0, 500.0, 6)
    assert float(ja.objective(explicit, ell)) == float(ja.objective(paper, ell))
    m1, m2 = ja.moments(paper, ell)
    assert float(ja.system_time(paper, ell)) == float(ja.mean_system_time(paper.arrival_rate, m1, m2))
    assert "[server]" not in ja.problem_to_toml(paper)


# ----------------------------------------------------------------- profiles


def _profile_text(server_lines: str) -> str:
    return (
        'arrival_rate = 0.5\nalpha = 30.0\nmax_tokens = 1000\n'
        '[[tasks]]\nname = "a"\nA = 0.5\nb = 0.01\nD = 0.1\nt0 = 0.2\nc = 0.01\n'
        '[[tasks]]\nname = "b"\nA = 0.6\nb = 0.02\nD = 0.1\nt0 = 0.4\nc = 0.02\n'
        + server_lines
    )


@pytest.mark.parametrize("table", [
    '[server]\nkind = "fifo"\nservers = 4\n',
    '[server]\nkind = "priority"\norder = ["b", "a"]\n',
    '[server]\nkind = "priority"\norder = "auto"\n',
    '[server]\nkind = "batching"\nmax_batch = 64\nbatch_slowdown = 0.05\n',
])
def test_server_table_round_trips(tmp_path, table):
    path = tmp_path / "p.toml"
    path.write_text(_profile_text(table))
    problem = ja.load_profile(path)
    again_path = tmp_path / "q.toml"
    again_path.write_text(ja.problem_to_toml(problem))
    again = ja.load_profile(again_path)
    assert again.server.describe(again.names) == problem.server.describe(problem.names)
    assert type(again.server) is type(problem.server)


@pytest.mark.parametrize("table,message", [
    ('kind = "lifo"\n', "server.kind = 'lifo'"),
    ('kind = "fifo"\nservers = 0\n', "server.servers = 0"),
    ('kind = "fifo"\nservers = 2.5\n', "server.servers = 2.5"),
    ('kind = "fifo"\nservers = true\n', "server.servers = True"),
    ('kind = "fifo"\nmax_batch = 4\n', "server.max_batch: unknown field"),
    ('kind = "batching"\nmax_batch = 0\nbatch_slowdown = 0.1\n', "server.max_batch = 0"),
    ('kind = "batching"\nmax_batch = 8\nbatch_slowdown = -0.1\n', "server.batch_slowdown = -0.1"),
    ('kind = "batching"\nbatch_slowdown = 0.1\n', "server.max_batch: missing"),
    ('kind = "priority"\norder = ["a", "zz"]\n', "unknown task 'zz'"),
    ('kind = "priority"\norder = ["a"]\n', "task 'b' missing"),
    ('kind = "priority"\norder = ["a", "a", "b"]\n', "task 'a' listed twice"),
    ('kind = "priority"\norder = 3\n', "server.order = 3"),
])
def test_bad_server_tables_name_the_field(tmp_path, table, message):
    path = tmp_path / "p.toml"
    path.write_text(_profile_text("[server]\n" + table))
    with pytest.raises(ja.ProblemError, match=None) as err:
        ja.load_profile(path)
    assert message in str(err.value)


def test_unstable_at_zero_names_the_server_capacity(tmp_path):
    # E[S](0) = 0.3, B = 4, β = 1: capacity 1 → λ = 4 is 1.2 times capacity
    path = tmp_path / "p.toml"
    path.write_text(_profile_text('[server]\nkind = "batching"\nmax_batch = 4\nbatch_slowdown = 1.0\n')
                    .replace("arrival_rate = 0.5", "arrival_rate = 4.0"))
    with pytest.raises(ja.ProblemError, match="arrival_rate = 4: queue unstable even at zero budgets.*capacity 1"):
        ja.load_profile(path)
    # the same load on 4 FIFO servers is stable (capacity 4)
    ok = ja.problem_from_dict({**_dict(), "arrival_rate": 4.0, "server": {"kind": "fifo", "servers": 4}})
    assert float(ja.load(ok, jnp.zeros(2))) == pytest.approx(0.3)


def _dict():
    import tomllib

    return tomllib.loads(_profile_text(""))


def test_replace_routes_server_parameters():
    problem = ja.problem_from_dict({**_dict(), "server": {"kind": "batching", "max_batch": 8, "batch_slowdown": 0.1}})
    changed = problem.replace(batch_slowdown=0.5, alpha=3.0)
    assert isinstance(changed.server, Batching)
    assert float(changed.server.batch_slowdown) == 0.5 and float(changed.alpha) == 3.0
    with pytest.raises(ja.ProblemError, match="servers: not a parameter of a 'batching' server"):
        problem.replace(servers=2)
    with pytest.raises(ServerError, match="server.kind = 'x'"):
        make_server("x", problem.names)


@pytest.mark.parametrize("kind,params", SERVERS + [("fifo", {"servers": 1, "size": 4}), ("batching", {"max_batch": 1})])
def test_zero_service_time_has_finite_derivatives(kind, params):
    """ℓ = 0 with every t0 = 0 (E[S] = E[S²] = 0), where solvers start: J and its gradient are
    finite (formulas with E[S] in a denominator used to give 0/0 in the gradient: no solve converged)."""
    problem = ja.make_problem(arrival_rate=1.0, alpha=30.0, max_tokens=1000.0, A=[0.5, 0.6], b=[0.01, 0.02],
                              D=[0.1, 0.1], t0=[0.0, 0.0], c=[0.01, 0.02], names=["a", "b"])
    problem = problem.replace(server=make_server(kind, problem.names, **params))
    zero = jnp.zeros(2)
    assert np.isfinite(float(ja.objective(problem, zero)))
    g = np.asarray(ja.gradient(problem, zero))
    assert np.all(np.isfinite(g)) and np.all(g > 0)  # the first tokens are worth more than their delay here
    assert np.all(np.isfinite(np.asarray(ja.hessian(problem, zero))))


def test_replace_grows_the_static_size_and_rejects_strings(paper):
    four = paper.replace(servers=4)
    assert four.server.size == 4
    built = paper.replace(server=make_server("fifo", paper.names, servers=4))
    assert float(ja.system_time(four, jnp.zeros(6))) == float(ja.system_time(built, jnp.zeros(6)))
    assert float(ja.system_time(four, jnp.zeros(6))) < float(ja.system_time(paper, jnp.zeros(6)))
    with pytest.raises(ServerError, match=r"server.servers = 2.5: must be an integer >= 1"):
        ja.validate(paper.replace(servers=2.5))
    with pytest.raises(ServerError, match=r"server.servers = '2': must be an integer"):
        make_server("fifo", paper.names, servers="2")
