"""Post-hoc EMA (EDM2): the power-function profiles, the tracker, and reconstruction of other EMA lengths.

Oracles: σ_rel(γ) is the standard deviation of the profile's density (γ+1)x^γ on [0, 1] (closed form); the
tracker's average after t updates is exactly Σ_τ w(τ) θ_τ with w(τ) = (τ^p − (τ−1)^p)/t^p (telescoping
product of the β's); reconstruction equals a directly tracked average whenever the wanted profile lies in
the span of the snapshots' profiles (dense snapshots; or a tracked length at a snapshot step), reproduces
constants exactly (coefficients sum to 1), and otherwise stays within the Cauchy–Schwarz bound
|error| ≤ ‖Σ x_i w_i − w*‖·‖θ‖ per coordinate.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from diffexp.ema import PowerEMA
from diffexp.phema import (
    MAX_SIGMA_REL,
    gamma_to_sigma_rel,
    power_beta,
    profile_weights,
    sigma_rel_to_gamma,
    solve_posthoc,
)
from diffexp.posthoc_ema import Snapshot, reconstruct, save_snapshot
from diffexp.validation import ConfigError


def test_sigma_rel_is_the_relative_std_of_the_power_profile():
    # EDM2's two tracked lengths: γ = 16.97 and 6.94 (paper, Sec. 3.1).
    assert sigma_rel_to_gamma(0.05) == pytest.approx(16.97, abs=0.01)
    assert sigma_rel_to_gamma(0.10) == pytest.approx(6.94, abs=0.01)
    for s in (0.01, 0.05, 0.1, 0.2, 0.28):
        g = sigma_rel_to_gamma(s)
        assert gamma_to_sigma_rel(g) == pytest.approx(s, rel=1e-12)
        # Moments of the density (γ+1) x^γ on [0, 1]: E x = (γ+1)/(γ+2), E x² = (γ+1)/(γ+3).
        mean, second = (g + 1) / (g + 2), (g + 1) / (g + 3)
        assert np.sqrt(second - mean**2) == pytest.approx(s, rel=1e-12)
        # The discrete profile over t steps has the same relative std up to O(1/t).
        t = 20000
        w = profile_weights(g, t)
        x = np.arange(1, t + 1) / t
        std = np.sqrt(w @ x**2 - (w @ x) ** 2)
        assert abs(std - s) < 2.0 / t
    for bad in (0.0, -0.1, MAX_SIGMA_REL, 0.5):
        with pytest.raises(ValueError, match="sigma_rel"):
            sigma_rel_to_gamma(bad)


def test_profile_weights_sum_to_one_and_match_the_beta_recursion():
    for g in (0.5, 6.94, 16.97, 60.0):
        for t in (1, 2, 37, 5000):
            w = profile_weights(g, t)
            assert w.sum() == pytest.approx(1.0, abs=1e-12) and (w >= 0).all()
            # The recursion's weights: (1 − β_τ) ∏_{s>τ} β_s, computed step by step.
            if t <= 37:
                ref = np.array([(1 - power_beta(g, tau)) * np.prod([power_beta(g, s) for s in range(tau + 1, t + 1)])
                                for tau in range(1, t + 1)])
                np.testing.assert_allclose(w, ref, rtol=1e-12, atol=1e-300)
    assert power_beta(3.0, 1) == 0.0  # the first update copies the weights


def _trajectory(n: int, dim: int, seed: int = 0, drift: float = 0.02) -> np.ndarray:
    """A training-like weight trajectory: an offset, a drift and a random walk (float64)."""
    rng = np.random.default_rng(seed)
    steps = rng.normal(scale=0.05, size=(n, dim)) + drift * rng.normal(size=dim)
    return 1.5 * rng.normal(size=dim) + np.cumsum(steps, axis=0)


def _track(traj: np.ndarray, sigma_rels, every: int = 1):
    """Runs PowerEMA (float64) over the trajectory; returns (tracker, [(num_updates, snapshot), ...])."""
    net = nn.Linear(traj.shape[1], 1, bias=False).double()
    phema = PowerEMA(net, sigma_rel=sigma_rels, dtype=torch.float64)
    snaps = []
    for n, theta in enumerate(traj, start=1):
        with torch.no_grad():
            net.weight.copy_(torch.from_numpy(theta)[None])
        phema.update(net)
        if n % every == 0:
            snaps.append((n, phema.snapshot()))
    return phema, snaps


def _weight(state: dict) -> np.ndarray:
    return state["weight"][0].double().numpy()


def test_tracker_average_is_the_discrete_power_profile_of_the_trajectory():
    traj = _trajectory(300, 4)
    phema, snaps = _track(traj, [0.05, 0.2], every=100)
    for n, snap in snaps:
        for k, g in enumerate(phema.gammas):
            expected = profile_weights(g, n) @ traj[:n]
            np.testing.assert_allclose(_weight(snap["profiles"][k]), expected, rtol=0, atol=1e-12)
    assert int(phema.num_updates) == 300 and snaps[-1][1]["gamma"] == phema.gammas


def _files(tmp_path, snaps) -> list[Snapshot]:
    out = []
    for n, snap in snaps:
        path = save_snapshot(snap, tmp_path, global_step=n)
        out.append(Snapshot(path, n, n, tuple(snap["sigma_rel"]), tuple(snap["gamma"])))
    return out


def test_reconstruction_equals_direct_tracking_when_the_profile_is_in_the_span(tmp_path):
    traj = _trajectory(24, 6, seed=1)
    _, snaps = _track(traj, [0.05, 0.10], every=1)  # a snapshot after every step: the profiles span everything
    wanted = [0.03, 0.15, 0.25]
    files = _files(tmp_path, snaps)
    for t in (24, 17):
        states, info = reconstruct(files, wanted, num_updates=t)
        direct_t, _ = _track(traj[:t], wanted)
        assert max(info["relative_residual"]) < 1e-9
        for k in range(len(wanted)):
            np.testing.assert_allclose(_weight(states[k]), _weight(direct_t.nets[k].state_dict()), rtol=0, atol=1e-9)
    # A tracked length at a snapshot step: the coefficients pick that snapshot alone.
    gammas = snaps[0][1]["gamma"]
    X, res = solve_posthoc([(g, t) for t in (6, 12, 18, 24) for g in gammas], [(gammas[1], 24)])
    assert res[0] < 1e-12 and X[-1, 0] == pytest.approx(1.0, abs=1e-9) and np.abs(X[:-1, 0]).max() < 1e-9


def test_reconstruction_of_a_training_like_trajectory_is_within_its_bound(tmp_path):
    n, every = 600, 50
    traj = _trajectory(n, 8, seed=2)
    _, snaps = _track(traj, [0.05, 0.10], every=every)
    files = _files(tmp_path, snaps)
    wanted = [0.07, 0.15]
    direct, _ = _track(traj, wanted)
    states, info = reconstruct(files, wanted)
    assert info["num_updates"] == n and len(info["snapshots"]) == n // every
    X = np.array(info["coefficients"])  # targets × (snapshot, profile)
    np.testing.assert_allclose(X.sum(axis=1), 1.0, atol=1e-9)  # constants are reproduced exactly
    basis = [(g, m) for m, s in snaps for g in s["gamma"]]
    for k, s in enumerate(wanted):
        got, ref = _weight(states[k]), _weight(direct.nets[k].state_dict())
        w_star = profile_weights(sigma_rel_to_gamma(s), n)
        residual = sum(x * profile_weights(g, m, n) for x, (g, m) in zip(X[k], basis)) - w_star
        assert np.linalg.norm(residual) / np.linalg.norm(w_star) == pytest.approx(info["relative_residual"][k], rel=1e-6)
        bound = np.linalg.norm(residual) * np.linalg.norm(traj, axis=0)  # Cauchy–Schwarz, per coordinate
        assert (np.abs(got - ref) <= bound + 1e-12).all()
        assert info["relative_residual"][k] < 0.05
        # Much closer to the wanted average than the nearest tracked length is.
        nearest = _weight(snaps[-1][1]["profiles"][1])
        assert np.abs(got - ref).max() < 0.1 * np.abs(nearest - ref).max()
    # A constant shift of every weight shifts the reconstruction by exactly that constant.
    _, shifted = _track(traj + 3.0, [0.05, 0.10], every=every)
    states2, _ = reconstruct(_files(tmp_path / "shifted", shifted), wanted)
    np.testing.assert_allclose(_weight(states2[0]) - _weight(states[0]), 3.0, atol=1e-9)


def test_reconstruction_uses_only_snapshots_up_to_the_wanted_step(tmp_path):
    traj = _trajectory(200, 3, seed=3)
    _, snaps = _track(traj, [0.05, 0.10], every=20)
    states, info = reconstruct(_files(tmp_path, snaps), [0.10], num_updates=100)
    assert info["snapshots"] == [f"phema-step{m:07d}.pt" for m in range(20, 101, 20)]
    np.testing.assert_allclose(_weight(states[0]), _weight(snaps[4][1]["profiles"][1]), atol=1e-9)


def test_power_ema_rejects_invalid_lengths_naming_the_key():
    with pytest.raises(ConfigError, match=r"module\.posthoc_ema\.sigma_rel"):
        PowerEMA(nn.Linear(2, 2), sigma_rel=[0.05, 0.4])
    with pytest.raises(ConfigError, match=r"module\.posthoc_ema\.sigma_rel"):
        PowerEMA(nn.Linear(2, 2), sigma_rel=[])
