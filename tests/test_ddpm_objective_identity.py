"""The ``ddpm`` process trains bit-identically to the code before the process families (issue 11): the
losses, timesteps and importance weights of every objective × target, on two schedules, equal those
saved in tests/fixtures/ddpm_objective_losses.pt (made by tests/fixtures/make_ddpm_objective_losses.py
with the earlier code). One deliberate change is exempt: the losses of the fixed-large ELBO
(``elbo-beta``) whose decoder variance became the paper's σ_1² = β_1 (issue 17); their timesteps still match."""

import importlib.util
from pathlib import Path

import pytest
import torch

FIXTURE = Path(__file__).parent / "fixtures" / "ddpm_objective_losses.pt"
# Deliberately changed after the fixture was saved (629b2fb): 'fixed large' uses the paper's decoder variance
# σ_1² = β_1 (Ho et al. §3.2) instead of the DDPM code's β̃_2, so the ELBO with reverse_variance=beta differs
# wherever a batch draws t = 1 (cosine10); its timesteps and weights are still compared.
CHANGED_ON_PURPOSE = "/elbo-beta/"


def _maker():
    spec = importlib.util.spec_from_file_location("make_fixture", FIXTURE.with_name("make_ddpm_objective_losses.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ddpm_objectives_reproduce_saved_losses_exactly():
    saved = torch.load(FIXTURE, weights_only=True)
    maker = _maker()
    net = maker.make_net()
    net.load_state_dict(saved["net"])
    results = maker.compute(net)
    packed = saved["results"]
    assert list(results) == packed["keys"]
    expected = dict(zip(packed["keys"], packed["values"].split(packed["sizes"]), strict=True))
    importance = [k for k in results if "cosine10/elbo-importance" in k and "weights3" in k]
    assert any(bool((expected[k] != 1).any()) for k in importance)  # the importance sampler did warm up
    changed_on_purpose = [k for k in results if "/elbo-beta/" in k and k.rsplit("/", 1)[-1].startswith(("loss", "val"))]
    for key, value in results.items():
        if key in changed_on_purpose:
            continue
        want = expected[key]
        if CHANGED_ON_PURPOSE in key and key.rsplit("/", 1)[1].startswith(("loss", "val")):
            continue
        got = value.reshape(-1).double()
        if not torch.equal(got, want):
            pytest.fail(f"{key}: {got.tolist()} != saved {want.tolist()}")
