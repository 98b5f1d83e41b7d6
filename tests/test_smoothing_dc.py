"""Issue 33: randomized smoothing (egc certify) and the diffusion classifier, against answers known by hand."""

from __future__ import annotations

import json
import math
from statistics import NormalDist

import pytest
import torch

from egc.cli import main
from egc.diffusion.schedule import Schedule
from egc.errors import EgcError
from egc.eval.diffusion_classifier import diffusion_classify, evaluations, parse_schedule
from egc.eval.smoothing import certify, lower_confidence_bound, noisy_counts, radius
from tests.conftest import tiny_train_argv


def _tail(k: int, n: int, p: float) -> float:
    return sum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(k, n + 1))


def test_clopper_pearson_lower_bound_by_hand() -> None:
    assert lower_confidence_bound(0, 50, 0.01) == 0.0
    assert lower_confidence_bound(50, 50, 0.01) == pytest.approx(0.01 ** (1 / 50))
    for k in (10, 31, 49):
        p = lower_confidence_bound(k, 50, 0.01)
        assert _tail(k, 50, p) == pytest.approx(0.01, rel=1e-6)  # the defining equation
        assert p < k / 50
    assert lower_confidence_bound(30, 50, 0.01) < lower_confidence_bound(31, 50, 0.01)


def test_certify_radius_on_stub_classifiers_with_known_pa() -> None:
    sigma, n, alpha = 0.25, 400, 0.001
    x = torch.zeros(1, 4, 4)
    always = certify(lambda xn: torch.zeros(xn.shape[0], dtype=torch.long), x, sigma, 10, n, alpha, 3)
    p = alpha ** (1 / n)  # every draw is class 0: the bound is alpha^(1/n)
    assert always.label == 0 and always.p_lower == pytest.approx(p) and always.radius == pytest.approx(sigma * NormalDist().inv_cdf(p))
    assert always.evaluations == 10 + n
    # class 1 exactly when the first noise value exceeds sigma_model * Phi^-1(0.3): P = 0.7
    z = NormalDist().inv_cdf(0.3) * 2 * sigma

    def f(xn: torch.Tensor) -> torch.Tensor:
        return (xn[:, 0, 0, 0] > z).long()

    gen = torch.Generator().manual_seed(0)
    counts = noisy_counts(f, x, 2 * sigma, 4000, 2, 500, gen)
    assert counts[1] / 4000 == pytest.approx(0.7, abs=0.03)
    c = certify(f, x, sigma, 100, 4000, alpha, 2, gen=torch.Generator().manual_seed(1))
    assert c.label == 1 and 0.65 < c.p_lower < 0.7 and c.radius == pytest.approx(radius(c.p_lower, sigma))
    # pA below 1/2 for every class: abstain
    coin = certify(lambda xn: (xn[:, 0, 0, 0] > 0).long(), x, sigma, 100, 400, alpha, 2)
    assert coin.label == -1 and coin.radius == 0.0


def test_diffusion_classifier_picks_the_class_of_a_model_whose_answer_is_known() -> None:
    """Data = one point mu_k per class; the exact eps of x_t given class y is (x_t - sqrt(abar) mu_y) / sqrt(1 - abar)."""
    torch.manual_seed(0)
    mu = torch.randn(4, 1, 6, 6)
    ac = Schedule.make("ldm-linear", 1000).alphas_cumprod

    def eps(xt: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        a = ac[t].float().view(-1, 1, 1, 1)
        return (xt - a.sqrt() * mu[y]) / (1 - a).sqrt()

    rounds = [(4, 3), (2, 4)]
    x = mu[[2, 0, 3, 1]] + 0.05 * torch.randn(4, 1, 6, 6)
    pred, err = diffusion_classify(eps, x, 4, ac, rounds, seed=0, batch=5)
    assert pred.tolist() == [2, 0, 3, 1]
    assert (torch.isinf(err).sum(1) == 2).all()  # two classes pruned after the first round
    assert evaluations(rounds) == 4 * 3 + 2 * 4
    assert parse_schedule("10:50,5:450", 10) == [(10, 50), (5, 450)] and parse_schedule("12:2", 10) == [(10, 2)]
    for bad in ("10", "5:2,10:2", "0:3", "a:b", ""):
        with pytest.raises(EgcError, match="--dc-schedule"):
            parse_schedule(bad, 10)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from tests.conftest import make_npz

    tmp = tmp_path_factory.mktemp("cert")
    assert main(tiny_train_argv(tmp / "run", make_npz(tmp / "t.npz"), 2)) == 0
    return tmp / "run"


def test_certify_and_diffusion_classify_commands(tiny_run, tmp_path, capsys) -> None:
    out = tmp_path / "c.json"
    assert main(["certify", str(tiny_run), "--n-test", "3", "--n0", "5", "--n", "20", "--sigma", "0.25", "--json", str(out), "--quiet"]) == 0
    doc = json.loads(out.read_text())
    assert doc["n_test"] == 3 and set(doc["certified_accuracy"]) == {"0", "0.25", "0.5"} and "EGC's noisy head at t=" in doc["base_classifier"]
    assert doc["evaluations_per_image"] == 25 and all(r["radius"] >= 0 for r in doc["per_image"])
    assert main(["certify", str(tiny_run), "--alpha", "2"]) == 2 and "--alpha" in capsys.readouterr().err
    from PIL import Image
    import numpy as np

    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(tmp_path / "a.png")
    capsys.readouterr()
    assert main(["classify", str(tiny_run), str(tmp_path / "a.png"), "--method", "diffusion", "--dc-schedule", "K:2,2:2", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert row["evaluations"] == 3 * 2 + 2 * 2 and len(row["errors"]) == 2 and row["name"] in row["errors"]


def test_eval_reports_the_diffusion_classifier_beside_the_head(tiny_run, tmp_path) -> None:
    out = tmp_path / "e.json"
    assert main(["eval", str(tiny_run), "--metrics", "acc,dc", "--dc-schedule", "K:1,2:1", "--n-dc", "4", "--n-test", "6", "--json", str(out),
                 "--quiet"]) == 0
    dc = json.loads(out.read_text())["metrics"]["diffusion_classifier"]
    assert dc["n"] == 4 and dc["evaluations_per_image"] == 3 + 2 and 0 <= dc["accuracy"] <= 1


def test_clean_head_kinds_are_certified_on_the_unscaled_noisy_image(tmp_path, tiny_npz) -> None:
    """A cnn (like the classifier baseline) has no timesteps: its base classifier must see x + delta itself,
    not sqrt(abar_t) (x + delta) as EGC's noisy head does."""
    from egc import EGC
    from egc.eval.smoothing import base_classifier

    run = tmp_path / "cnn"
    assert main(tiny_train_argv(run, tiny_npz, 1, "--model", "cnn")) == 0
    m = EGC.load(str(run))
    f, how = base_classifier(m, 0.25)
    assert "cnn's head on x + delta" in how
    x = torch.rand(6, *m.image_shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert torch.equal(f(x), m.logits(x).argmax(1))
