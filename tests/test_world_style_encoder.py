"""The world's style encoder: its loss, its retrieval accuracy, its stage, and loading it as a condition encoder."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from autolora.errors import InputFileError
from autolora.synthesis.conditions import condition_of, load_encoder
from autolora.world import train
from autolora.world.style_encoder import (
    CONFIG_FILE,
    EMBEDDING_DIM,
    RETRIEVAL_KS,
    WEIGHTS_FILE,
    RetrievalSets,
    retrieval_accuracy,
    retrieval_hits,
    style_retrieval,
    supervised_contrastive_loss,
    training_styles,
)
from autolora.world.styles import (
    RANDOM_TRAINING_SEEDS,
    STYLES,
    random_style,
    random_style_names,
    sample_style,
)

SHIPPED_FLOOR = 0.8
SRC = Path(__file__).parents[1] / "src"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("style-encoder")
    train.run(["style-encoder"], root / "work", root / "out", seed=0, plan=train.TINY_PLAN)
    return root / "out"


def test_supcon_loss_of_separated_pairs_is_its_closed_form():
    # Two renders of each of three styles on orthogonal unit vectors: each sample has one positive at
    # similarity 1 and four negatives at 0, so L = -log(e^(1/t) / (e^(1/t) + 4)).
    z = torch.eye(3).repeat_interleave(2, dim=0)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    t = 0.5
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 4))
    assert supervised_contrastive_loss(z, labels, t).item() == pytest.approx(expected, rel=1e-6)
    # Labels that pair samples across the clusters make the same embeddings a worse fit.
    assert supervised_contrastive_loss(z, labels.roll(1), t) > supervised_contrastive_loss(z, labels, t)


def test_retrieval_hits_are_exact_for_one_hot_and_chance_for_constant_embeddings():
    n = 10
    truth = torch.arange(n)
    assert retrieval_hits(torch.eye(n), torch.eye(n), truth, 1).tolist() == [1.0] * n
    constant = torch.ones(n, 4)
    assert torch.allclose(retrieval_hits(constant, constant, truth, 1), torch.full((n,), 1 / n))
    assert torch.allclose(retrieval_hits(constant, constant, truth, 5), torch.full((n,), 0.5))
    # Queries that point at the next style's entry miss at top-1 but are found at top-2 or more.
    shifted = torch.eye(n)[truth.roll(1)] + 0.5 * torch.eye(n)
    assert retrieval_hits(torch.eye(n), shifted, truth, 1).sum() == 0
    assert retrieval_hits(torch.eye(n), shifted, truth, 2).tolist() == [1.0] * n


class RedChannelEncoder:
    """Embeds an image as the one-hot of its top-left pixel's red value: it 'sees' the style exactly."""

    spec = "test:red"

    def embed(self, images):
        return torch.nn.functional.one_hot(torch.tensor([image.getpixel((0, 0))[0] for image in images]), 8)


class ConstantEncoder:
    spec = "test:constant"

    def embed(self, images):
        return torch.ones(len(images), 3)


def test_retrieval_accuracy_is_one_for_a_perfect_encoder_and_chance_for_a_constant_one():
    def images(style, count):
        return [Image.new("RGB", (32, 32), (style, 10 * i, 0)) for i in range(count)]

    styles = [f"s{i}" for i in range(8)]
    sets = RetrievalSets(
        styles,
        [images(i, 8) for i in range(8)],
        {k: [[images(i, k) for i in range(8)] for _ in range(2)] for k in (1, 4)},
    )
    perfect = retrieval_accuracy(RedChannelEncoder(), sets)
    assert perfect["styles"] == 8 and set(perfect) == {"styles", "k1", "k4"}
    assert all(perfect[k][top] == [1.0, 1.0, 1.0] for k in ("k1", "k4") for top in ("top1", "top5"))
    chance = retrieval_accuracy(ConstantEncoder(), sets)
    assert chance["k1"]["top1"] == [0.125, 0.125, 0.125] and chance["k4"]["top5"] == [0.625, 0.625, 0.625]


def test_training_styles_are_the_base_style_random_training_styles_and_their_palette_twins():
    plan = train.Plan(style_encoder_styles=5)
    styles = training_styles(plan)
    assert styles[0] == STYLES["base"] and len(styles) == 1 + 2 * 5
    originals, twins = styles[1:6], styles[6:]
    assert [s.name for s in originals] == random_style_names(RANDOM_TRAINING_SEEDS[:5])
    for original, twin, seed in zip(originals, twins, RANDOM_TRAINING_SEEDS[5:10], strict=True):
        # A twin keeps its style's colours and takes everything else from the partner's seed.
        partner = random_style(seed)
        assert twin.name == f"{original.name}-twin"
        assert (twin.ink, twin.background) == (original.ink, original.background)
        assert (twin.texture, twin.slant, twin.rotation, twin.weight) == (
            partner.texture,
            partner.slant,
            partner.rotation,
            partner.weight,
        )
        assert (twin.outline, twin.shadow, twin.glow) == (partner.outline, partner.shadow, partner.glow)
    # The held-out styles are neither trained on nor partners of a twin.
    assert min(RANDOM_TRAINING_SEEDS) > train.Plan().style_retrieval_styles


def test_stage_writes_weights_config_and_manifest_entry(trained):
    config = json.loads((trained / "evaluators" / CONFIG_FILE).read_text())
    entry = json.loads((trained / "manifest.json").read_text())["stages"]["style-encoder"]
    assert entry["steps"] == train.TINY_PLAN.style_encoder_steps
    assert entry["retrieval"] == config["retrieval"]
    assert entry["retrieval"]["random"]["styles"] == train.TINY_PLAN.style_retrieval_styles
    assert entry["retrieval"]["named"]["styles"] == 9
    assert set(entry["retrieval"]["random"]) == {"styles", *(f"k{k}" for k in RETRIEVAL_KS)}
    low, mean, high = (entry["retrieval"]["random"]["k1"]["top1"][i] for i in (1, 0, 2))
    assert 0 <= low <= mean <= high <= 1


def test_trained_folder_loads_as_a_condition_encoder(trained):
    folder = trained / "evaluators"
    encoder = load_encoder(f"world:{folder}")
    assert encoder.spec == f"world:{folder}"
    saved = load_file(folder / WEIGHTS_FILE)
    assert all(torch.equal(saved[k], v) for k, v in encoder.network.state_dict().items())
    images = [s.image for s in sample_style("neon", 3, seed=0)]
    assert torch.allclose(encoder.embed(images).norm(dim=1), torch.ones(3))
    condition = condition_of(encoder, images)
    assert condition.shape == (EMBEDDING_DIM,) and 0 < condition.norm() <= 1 + 1e-5


def test_missing_or_broken_encoder_folders_raise_naming_the_problem(tmp_path):
    with pytest.raises(InputFileError, match=f"folder {tmp_path / 'nowhere'} does not exist"):
        load_encoder(f"world:{tmp_path / 'nowhere'}")
    with pytest.raises(InputFileError, match=f"{tmp_path} holds no style encoder: it needs {WEIGHTS_FILE}"):
        load_encoder(f"world:{tmp_path}")
    (tmp_path / WEIGHTS_FILE).write_bytes(b"not a safetensors file")
    (tmp_path / CONFIG_FILE).write_text(json.dumps({"embedding_dim": 64, "width": 4}))
    with pytest.raises(InputFileError, match="unreadable or malformed"):
        load_encoder(f"world:{tmp_path}")


def test_loading_conditions_does_not_import_the_world_until_a_world_encoder_is_loaded():
    code = (
        "import sys, autolora, autolora.synthesis.conditions as c; "
        "assert not [m for m in sys.modules if m.startswith('autolora.world')], 'world imported'; "
        "from autolora.sources import load_plugins; load_plugins(); "
        "assert 'autolora.world.style_encoder' not in sys.modules; "
        "assert c.load_encoder('world:style').spec == 'world:style'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(SRC)})


def test_shipped_encoder_retrieves_unseen_styles_far_above_chance():
    # 20 held-out random styles (chance 5%) from one render each; the floor sits well below the
    # accuracy measured on 330 styles (assets/evaluators/style_encoder.json).
    report = style_retrieval(load_encoder("world:style"), random_style_names(range(20)), ks=(1,), queries=1)
    assert report["k1"]["top1"][0] >= SHIPPED_FLOOR
