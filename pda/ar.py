"""AR's source weights (Gu et al., 2021): a Wasserstein critic, then

    min_w <w, d_s>  s.t.  w >= 0,  sum w = n,  ||w - 1||^2 <= rho n,

with rho adjusted until the reweighted critic distance lies in (low, up].
"""

import jax
import jax.numpy as jnp
import optax

from pda import networks


def solve_weights(d: jax.Array, rho) -> jax.Array:
  """argmin_w <w, d> s.t. w >= 0, sum w = n, ||w - 1||^2 <= rho n.

  The KKT conditions give w_i = max(0, 1 + u - t d_i) for a scale t >= 0
  and a shift u. For a given t, u follows from sum w = n in closed form
  (the active set is the k smallest t d_i, as in a projection onto the
  simplex); t is set by the ball constraint by bisection. Hand-written: a
  jitted, vmappable alternative to the cvxpy solve of the reference code,
  checked against scipy in the tests.

  Args:
    d: critic values of the n source examples, (n,).
    rho: radius of the chi-square ball.

  Returns:
    w, (n,).
  """
  n = d.shape[0]
  d = (d - d.mean()) / (d.std() + 1e-12)
  d_sorted = jnp.sort(d)
  sums = jnp.cumsum(d_sorted)
  k = jnp.arange(1, n + 1)

  def weights(t):
    # u_k makes the k smallest active; keep the largest consistent k.
    u = (n + t * sums) / k - 1.0
    active = t * d_sorted < 1.0 + u
    u_star = u[jnp.max(jnp.where(active, k, 1)) - 1]
    w = jnp.maximum(0.0, 1.0 + u_star - t * d)
    return w * n / jnp.sum(w)

  def body(_, bounds):
    lo, hi = bounds
    mid = jnp.sqrt(lo * hi)
    inside = jnp.sum((weights(mid) - 1.0) ** 2) <= rho * n
    return jnp.where(inside, mid, lo), jnp.where(inside, hi, mid)

  lo, _ = jax.lax.fori_loop(0, 60, body, (jnp.asarray(1e-6), jnp.asarray(1e6)))
  return weights(lo)


def source_weights(key, h_s, h_t, hp, critic_steps: int) -> jax.Array:
  """AR's weights (n_s,) of the source examples from features h_s, h_t.

  Args:
    key: randomness of the critic's initialisation and batches.
    h_s: source features, (n_s, d).
    h_t: target features, (n_t, d).
    hp: 'rho0', 'c', 'up', 'low' (the rho schedule).
    critic_steps: Adam steps of the critic (gradient penalty, WGAN-GP).
  """
  critic = networks.Discriminator(hidden=64)
  params = critic.init(key, h_s[:1])
  opt = optax.adam(1e-3)
  batch = min(36, h_s.shape[0], h_t.shape[0])

  def critic_loss(params, xs, xt, alpha, lam):
    inter = xs + alpha * (xt - xs)
    points = jnp.concatenate([inter, xs, xt])
    grads = jax.vmap(jax.grad(lambda p: critic.apply(params, p[None])[0]))(
        points)
    penalty = jnp.mean((jnp.linalg.norm(grads, axis=1) - 1.0) ** 2)
    distance = critic.apply(params, xs).mean() - critic.apply(params, xt).mean()
    return -distance + lam * penalty

  def step(carry, i):
    params, opt_state = carry
    k = jax.random.fold_in(key, i)
    ks, kt, ka = jax.random.split(k, 3)
    xs = h_s[jax.random.choice(ks, h_s.shape[0], (batch,), replace=False)]
    xt = h_t[jax.random.choice(kt, h_t.shape[0], (batch,), replace=False)]
    alpha = jax.random.uniform(ka, (batch, 1))
    grads = jax.grad(critic_loss)(params, xs, xt, alpha,
                                  100.0 * i / critic_steps)
    updates, opt_state = opt.update(grads, opt_state)
    return (optax.apply_updates(params, updates), opt_state), None

  (params, _), _ = jax.lax.scan(step, (params, opt.init(params)),
                                jnp.arange(critic_steps))
  d_s, d_t = critic.apply(params, h_s), critic.apply(params, h_t)

  # Adjust rho by the factor c until the reweighted distance is in (low, up].
  def gap(rho):
    w = solve_weights(d_s, rho)
    return jnp.dot(w, d_s) / d_s.shape[0] - d_t.mean(), w

  def cond(carry):
    t, _, done = carry
    return (t < 100) & ~done

  def body(carry):
    t, rho, _ = carry
    distance, _ = gap(rho)
    rho_next = jnp.where(distance > hp['up'], rho * hp['c'],
                         jnp.where(distance > hp['low'], rho, rho / hp['c']))
    done = (distance <= hp['up']) & (distance > hp['low'])
    return t + 1, rho_next, done

  _, rho, _ = jax.lax.while_loop(cond, body,
                                 (0, jnp.asarray(hp['rho0'], jnp.float32),
                                  jnp.asarray(False)))
  return gap(rho)[1]
