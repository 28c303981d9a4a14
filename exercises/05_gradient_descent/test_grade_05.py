"""Grader for exercise 5 (token-by-token dynamics as gradient descent, P1 Prop. 3.1).

The gradient of your ``linear_loss`` is taken with torch autograd when torch is installed and your loss accepts
tensors, and with central finite differences otherwise (exact up to round-off, since L is linear in W); a note
says which was used, and a correct answer passes either way.
"""
import numpy as np

from implicit_icl import reference as ref
from implicit_icl.grading import GradingFailure, call, check_close, check_shape, note

# `implicit-icl exercises check N --hint` shows one more of these each time, gentlest first.
HINTS = (
    'Build prefix_taps first: row i is A(c_1..c_i, x), so row 0 is the query alone; everything else follows from these n + 1 vectors.',
    'step_size is 1/‖A(x)‖²; W_i = W_0 + W_0 (A_i − A_0) A_0ᵀ h, and Δ_i = W_0 (A_i − A_{i+1}) A_0ᵀ.',
    'Check W_{i+1} = W_i − h Δ_i yourself on a small example; the gradient of trace(Δᵀ W) with respect to W is Δ itself.',
)

try:
    import torch
except ImportError:  # exercises 1-7 work without torch
    torch = None

CFG = ref.BlockConfig(d_model=4, d_mlp=12, n_heads=1)
PARAMS = ref.init_block(CFG, seed=5)
_rng = np.random.default_rng(50)
C = _rng.standard_normal((6, 4))
X = _rng.standard_normal(4)
N, M, D = 6, 12, 4
TRAJ = ref.trajectory(PARAMS, CFG, C, X)


def test_prefix_taps(student):
    """A_i = A(c_1..c_i, x) for i = 0..n: shape (n + 1, D), row 0 is A(x)"""
    got = check_shape("prefix_taps(params, cfg, C, x) with n = 6", call(student, "prefix_taps", PARAMS, CFG, C, X),
                      (N + 1, D), hint="one row per prefix length i = 0, 1, ..., n (n + 1 rows)")
    check_close("prefix_taps(params, cfg, C, x)", got, TRAJ.a + TRAJ.delta,
                hint="row i: attention on [c_1..c_i, x], last row; i = 0 is the query alone")


def test_step_size(student):
    """h = 1/‖A(x)‖²"""
    got = check_shape("step_size(params, cfg, x)", call(student, "step_size", PARAMS, CFG, X), (), hint="one float")
    check_close("step_size(params, cfg, x)", got, TRAJ.h, hint="squared norm of A(x) = A([x]) in the denominator")


def test_W_sequence(student):
    """W_i = W_0 + ΔW_0(c_1..c_i) for i = 0..n, and W_0 is the block's W"""
    got = check_shape("W_sequence(params, cfg, C, x)", call(student, "W_sequence", PARAMS, CFG, C, X), (N + 1, M, D))
    check_close("W_sequence(...)[0]", got[0], PARAMS["mlp.W"], hint="no token consumed yet: W_0 = W")
    check_close("W_sequence(params, cfg, C, x)", got, np.stack([TRAJ.W(i) for i in range(N + 1)]),
                hint="every ΔW_0(c_1..c_i) has the same right factor A(x) = A_0 and uses W_0 on the left")


def test_W_sequence_absorbs_prefixes(student):
    """T_{W_i}(x) = T_{W_0}(c_1..c_i, x) for every i: W_i has absorbed the first i tokens"""
    Ws = check_shape("W_sequence(params, cfg, C, x)", call(student, "W_sequence", PARAMS, CFG, C, X), (N + 1, M, D))
    got = np.stack([ref.block_output(dict(PARAMS, **{"mlp.W": Ws[i]}), CFG, np.zeros((0, D)), X)
                    for i in range(N + 1)])
    check_close("T_{W_i}(x) for i = 0..n", got, TRAJ.pred_context, rtol=1e-9, atol=1e-12,
                hint="W_i must map A(x) to W_0 A_i")


def test_gradients(student):
    """Δ_i = W_0 (A_i − A_{i+1}) A(x)ᵀ for i = 0..n−1"""
    got = check_shape("gradients(params, cfg, C, x)", call(student, "gradients", PARAMS, CFG, C, X), (N, M, D),
                      hint="n steps: step i consumes token c_{i+1}")
    check_close("gradients(params, cfg, C, x)", got, np.stack([TRAJ.gradient(i) for i in range(N)]),
                hint="mind the sign: Δ_i uses A_i − A_{i+1} (before minus after), so that W_{i+1} = W_i − h Δ_i")


def test_gradient_descent_recursion(student):
    """your W_i follow W_{i+1} = W_i − h Δ_i (P1 Prop. 3.1)"""
    Ws = check_shape("W_sequence", call(student, "W_sequence", PARAMS, CFG, C, X), (N + 1, M, D))
    G = check_shape("gradients", call(student, "gradients", PARAMS, CFG, C, X), (N, M, D))
    h = float(check_shape("step_size", call(student, "step_size", PARAMS, CFG, X), ()))
    check_close("W_i − h Δ_i for i = 0..n−1", Ws[:-1] - h * G, Ws[1:], rtol=1e-9, atol=1e-12,
                hint="a descent step SUBTRACTS h times the gradient; check the sign of Δ_i and h = 1/‖A(x)‖²")


def test_linear_loss_value(student):
    """L(W) = trace(Δᵀ W)"""
    rng = np.random.default_rng(51)
    W, Delta = rng.standard_normal((M, D)), rng.standard_normal((M, D))
    got = check_shape("linear_loss(W, Δ)", call(student, "linear_loss", W, Delta), (), hint="a scalar")
    check_close("linear_loss(W, Δ)", got, np.trace(Delta.T @ W), hint="trace(Δᵀ W) = (Δ * W).sum()")


def _gradient(student, W, Delta):
    """∇_W linear_loss(W, Δ) and how it was taken: torch autograd when torch is installed and the student's loss
    accepts tensors, else central finite differences (exact up to round-off: L is linear in W). A loss written
    with NumPy-only functions (np.trace) is graded the same on every machine, only by the other method."""
    call(student, "linear_loss", W, Delta)          # on NumPy arrays first: an unsolved stub fails plainly here
    if torch is not None:
        Wt = torch.tensor(W, dtype=torch.float64, requires_grad=True)
        try:
            loss = call(student, "linear_loss", Wt, torch.tensor(Delta, dtype=torch.float64))
            loss.backward()
            if Wt.grad is not None:
                return Wt.grad.numpy(), "torch autograd"
        except (GradingFailure, AttributeError, RuntimeError, TypeError):
            pass                                        # NumPy-only code: fall through to finite differences
    eps, G = 1e-3, np.zeros_like(W)
    for idx in np.ndindex(W.shape):
        E = np.zeros_like(W)
        E[idx] = eps
        lp = float(call(student, "linear_loss", W + E, Delta))
        lm = float(call(student, "linear_loss", W - E, Delta))
        G[idx] = (lp - lm) / (2 * eps)
    if torch is None:
        return G, "central finite differences (torch is not installed)"
    return G, ("central finite differences: your linear_loss does not take torch tensors (np.trace, np.sum and "
               "friends need NumPy arrays); written with * and .sum() torch autograd could differentiate it too")


def test_gradient_of_linear_loss(student):
    """∇_W L_i(W) = Δ_i at W_i and at any other W (autograd with torch, finite differences without)"""
    methods = []
    for i in (0, N - 1):
        Delta = TRAJ.gradient(i)
        for where, W in ((f"W_{i}", TRAJ.W(i)), ("a random W", np.random.default_rng(i).standard_normal((M, D)))):
            grad, method = _gradient(student, W, Delta)
            if method not in methods:
                methods.append(method)
                note("gradient taken with " + method)
            # finite differences of a linear function are exact up to round-off ~1e-16/eps; 1e-8 absolute is loose
            check_close(f"∇_W L_{i}(W) at {where}", grad, Delta, rtol=1e-7, atol=1e-8,
                        hint="L is linear in W, so its gradient is Δ everywhere")
