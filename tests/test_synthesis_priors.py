import numpy as np
import pytest
import torch
from synthesis_fixtures import RANKS, bank_inputs

from autolora.errors import ConfigError
from autolora.synthesis.bank import build_bank
from autolora.synthesis.config import PRIOR_KINDS, PriorConfig
from autolora.synthesis.latent import adanorm, hyperada
from autolora.synthesis.pca import PCAPrior
from autolora.synthesis.pclora import CoefficientLoRA, fit_coefficients
from autolora.synthesis.prior import PRIORS, Prior, load_prior
from autolora.synthesis.training import train_prior
from autolora.testing import tiny_pipeline

TINY = {
    "token_dim": 8,
    "latent_dim": 8,
    "vae_layers": 1,
    "heads": 2,
    "hidden": 16,
    "blocks": 2,
    "hyper_rank": 2,
    "timesteps": 10,
    "batch_size": 4,
    "vae_steps": 3,
    "prior_steps": 3,
}


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    root = tmp_path_factory.mktemp("priors")
    base, loras, encoder = bank_inputs(root)
    return build_bank(loras, str(base), 4, root / "bank", encoder=encoder)


def test_hyperada_is_x_plus_x_d_u_transposed_and_adanorm_starts_at_layer_norm():
    x, down, up = torch.randn(3, 5), torch.randn(3, 5, 2), torch.randn(3, 5, 2)
    expected = torch.stack([x[i] + (x[i] @ down[i]) @ up[i].T for i in range(3)])
    assert torch.allclose(hyperada(x, down, up), expected, atol=1e-6)
    zeros = torch.zeros(3, 5)
    assert torch.allclose(adanorm(x, zeros, zeros), torch.nn.functional.layer_norm(x, (5,)))


@pytest.mark.parametrize("granularity", ["global", "layer", "factor"])
def test_pclora_one_hot_coefficients_reproduce_the_bank_lora_exactly(bank, granularity):
    basis = bank.rows(slice(None), normalized=False)
    for index in range(len(bank)):
        model = CoefficientLoRA.one_hot(bank.layout, basis, index, granularity)
        assert torch.equal(model.vector(), basis[index])
    groups = {"global": 1, "layer": len(bank.layout.modules), "factor": len(bank.layout.segments)}
    assert model.coefficients.shape == (len(bank), groups[granularity])


def test_pclora_fit_moves_only_the_coefficients_and_removes_its_adapter(bank, tmp_path):
    pipe = tiny_pipeline("sd15", tmp_path)
    inputs = (
        torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0)),
        10,
        torch.ones(1, 77, 32),
    )
    before = pipe.unet(*inputs).sample
    model = CoefficientLoRA.one_hot(bank.layout, bank.rows(slice(None), normalized=False), 0, "layer")
    start = model.coefficients.detach().clone()
    images = [pipe(["a cat"], num_inference_steps=1, height=32, width=32, output_type="pil").images[0]] * 2
    losses = fit_coefficients(pipe, model, images, ["a cat", "a dog"], steps=3, batch_size=2)
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert not torch.equal(model.coefficients.detach(), start)
    # The UNet is given back as it was: no adapter left, the same output.
    assert not getattr(pipe.unet, "peft_config", {})
    assert torch.equal(pipe.unet(*inputs).sample, before)


def test_pca_matches_the_exact_svd_and_reconstructs_the_bank(bank):
    pca = PCAPrior.fit(bank, components=len(bank) - 1)
    rows = bank.rows(slice(None)).double()
    centered = rows - rows.mean(0)
    s = torch.linalg.svdvals(centered)[: len(bank) - 1] / np.sqrt(len(bank) - 1)
    assert torch.allclose(pca.sigmas.double(), s, rtol=1e-3)
    # N-1 components span the centred bank: every row is reconstructed.
    assert torch.allclose(pca.reconstruct(pca.coefficients(rows.float())), rows.float(), atol=1e-3)
    samples = pca.sample(5, torch.Generator().manual_seed(0))
    assert samples.shape == (5, bank.layout.dim)
    labels = np.array([1, 1, 1, 0, 0, 0])
    direction = pca.edit_direction(bank, labels)
    assert direction.norm().item() == pytest.approx(1, rel=1e-5)
    projections = rows.float() @ direction
    assert projections[labels == 1].min() > projections[labels == 0].max()
    with pytest.raises(ConfigError, match="0/1"):
        pca.edit_direction(bank, np.zeros(len(bank)))


@pytest.mark.parametrize(
    ("kind", "conditioning"),
    [("diffusion", "hyperada"), ("diffusion", "adanorm"), ("regressor", "hyperada"), ("pca", "hyperada")],
)
def test_a_tiny_prior_trains_saves_and_loads_with_the_same_samples(bank, tmp_path, kind, conditioning):
    config = PriorConfig(kind=kind, conditioning=conditioning, components=3, **TINY)
    prior = train_prior(bank, config, tmp_path / "prior", checkpoint_every=2)
    condition = bank.conditions[0] if prior.conditional else None
    vectors = prior.generate(condition, 2, seed=1, guidance=2.0)
    assert vectors.shape == (2, bank.layout.dim) and torch.isfinite(vectors).all()
    loaded = load_prior(tmp_path / "prior")
    assert torch.equal(loaded.generate(condition, 2, seed=1, guidance=2.0), vectors)
    if kind != "pca":
        assert (tmp_path / "prior" / "checkpoints" / "vae.pt").exists()
        assert 0 < loaded.far_threshold < float("inf")


def test_a_pca_prior_asked_for_more_components_than_the_bank_holds_keeps_what_it_has(bank, tmp_path):
    prior = train_prior(bank, PriorConfig(kind="pca", components=64), tmp_path / "pca")
    assert prior.config.components == len(prior.pca.sigmas) == len(bank) - 1 < 64
    loaded = load_prior(tmp_path / "pca")
    assert torch.equal(loaded.pca.components, prior.pca.components)


def test_prior_training_resumes_from_its_checkpoint(bank, tmp_path):
    config = PriorConfig(kind="regressor", **{**TINY, "vae_steps": 4, "prior_steps": 4})
    straight = train_prior(bank, config, tmp_path / "a", checkpoint_every=2)

    def stop_after_checkpoint(message: str) -> None:
        if message.startswith("vae: step 2/4"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_prior(bank, config, tmp_path / "b", checkpoint_every=2, log=stop_after_checkpoint)
    resumed = train_prior(bank, config, tmp_path / "b", checkpoint_every=2)
    for key, value in straight.state_dict().items():
        assert torch.allclose(resumed.state_dict()[key], value, atol=1e-6), key


def test_conditional_priors_need_a_bank_with_conditions(bank, tmp_path):
    from autolora.synthesis.bank import Bank

    plain = Bank(bank.path, bank.layout, bank.names, bank.stds, bank.weights, None, None)
    with pytest.raises(ConfigError, match="--encoder"):
        Prior.from_bank(PriorConfig(kind="diffusion", **TINY), plain)
    with pytest.raises(ConfigError, match="unknown prior kind"):
        PriorConfig(kind="gan")
    assert len(RANKS) == len(bank)
    assert tuple(PRIORS) == PRIOR_KINDS  # the CLI offers exactly the registered kinds


def test_pca_inversion_starts_at_the_bank_mean_and_moves_within_the_pc_span(bank, tmp_path):
    from autolora.synthesis.pclora import invert

    prior = train_prior(bank, PriorConfig(kind="pca", components=3), tmp_path / "pca")
    pipe = tiny_pipeline("sd15", tmp_path)
    images = [pipe(["a cat"], num_inference_steps=1, height=32, width=32, output_type="pil").images[0]]
    vector = invert(pipe, prior, images, ["a cat"], steps=2, batch_size=1)
    normalized = bank.normalize(vector)
    mean = prior.pca.mean
    assert not torch.allclose(normalized, mean)  # it moved
    # ... but only along the principal components.
    residual = normalized - prior.pca.reconstruct(prior.pca.coefficients(normalized))
    assert residual.norm() < 1e-3 * (normalized - mean).norm()


def test_a_prior_can_reuse_another_priors_vae(bank, tmp_path):
    first = train_prior(bank, PriorConfig(kind="regressor", **TINY), tmp_path / "a")
    second = train_prior(
        bank, PriorConfig(kind="diffusion", conditioning="adanorm", **TINY), tmp_path / "b", vae_from=first
    )
    for key, value in first.vae.state_dict().items():
        assert torch.equal(second.vae.state_dict()[key], value)
    assert not (tmp_path / "b" / "checkpoints" / "vae.pt").exists()
    with pytest.raises(ConfigError, match="vae_from"):
        train_prior(
            bank,
            PriorConfig(kind="regressor", **TINY),
            tmp_path / "c",
            vae_from=train_prior(bank, PriorConfig(kind="pca", components=2), tmp_path / "p"),
        )


def test_far_threshold_is_twice_the_largest_nearest_neighbour_distance_in_any_block_size():
    from autolora.synthesis.prior import _far_threshold

    conditions = torch.tensor([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0], [5.0, 3.0]])
    # Nearest neighbours: 1, 1, 3, 3 -> the largest is 3.
    assert _far_threshold(conditions) == 6.0
    assert _far_threshold(conditions, block=1) == 6.0


def test_a_checkpoint_of_another_configuration_is_refused(bank, tmp_path):
    train_prior(bank, PriorConfig(kind="regressor", **TINY), tmp_path / "a", checkpoint_every=2)
    wider = PriorConfig(kind="regressor", **{**TINY, "token_dim": 12})
    with pytest.raises(ConfigError, match="another vae configuration"):
        train_prior(bank, wider, tmp_path / "a")


@pytest.mark.parametrize("conditioning", ["hyperada", "adanorm"])
def test_the_condition_gets_a_gradient_by_the_second_step(conditioning):
    from autolora.synthesis.latent import LatentDiffusion

    torch.manual_seed(0)
    model = LatentDiffusion(6, 3, hidden=8, blocks=2, conditioning=conditioning, rank=2, timesteps=10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x0, condition = torch.randn(4, 6), torch.randn(4, 3)
    for step in range(2):
        optimizer.zero_grad()
        model.loss(x0, condition, 0.0, torch.Generator().manual_seed(step)).backward()
        for block in model.blocks:  # the modulation learns from the first step
            assert block.modulation[1].weight.grad.abs().sum() > 0
        optimizer.step()
    assert model.condition.weight.grad.abs().sum() > 0
