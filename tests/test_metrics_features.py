import pytest
import torch
from PIL import Image

from autolora.errors import ConfigError, InputFileError
from autolora.metrics import ImageRecord, get_extractor, get_metric
from autolora.testing import tiny_image_encoder
from autolora.world.tokenizer import build_clip_tokenizer

WORDS = ("a", "red", "blue", "square", "photo")


@pytest.fixture(scope="module")
def tiny_dinov2(tmp_path_factory) -> str:
    return str(tiny_image_encoder("dinov2", tmp_path_factory.mktemp("dinov2"), width=32, resize=40))


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> str:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    folder = tmp_path_factory.mktemp("clip")
    tokenizer = build_clip_tokenizer(WORDS, folder)
    text = dict(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        max_position_embeddings=77,
    )
    tower = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2)
    vision = dict(tower, image_size=32, patch_size=8)
    torch.manual_seed(1)  # a seed whose random towers give both signs of cosine on the test prompts
    CLIPModel(
        CLIPConfig(text_config={**tower, **text}, vision_config=vision, projection_dim=16)
    ).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        folder
    )
    return str(folder)


def images(n: int) -> list[Image.Image]:
    generator = torch.Generator().manual_seed(n)
    return [
        Image.fromarray((torch.rand(48, 40, 3, generator=generator) * 255).to(torch.uint8).numpy())
        for _ in range(n)
    ]


def test_dinov2_cls_features_are_the_models_pooled_output(tiny_dinov2):
    from transformers import AutoImageProcessor, AutoModel

    features = get_extractor("dinov2", model=tiny_dinov2, device="cpu")(images(3))
    model, processor = AutoModel.from_pretrained(tiny_dinov2), AutoImageProcessor.from_pretrained(tiny_dinov2)
    with torch.inference_mode():
        expected = model(**processor(images=images(3), return_tensors="pt")).pooler_output
    assert features.shape == (3, 32)
    assert features.dtype == torch.float32
    torch.testing.assert_close(features, expected)


def test_dinov2_pooling_choices_set_the_feature_size(tiny_dinov2):
    sizes = {
        pooling: get_extractor("dinov2", model=tiny_dinov2, pooling=pooling)(images(2)).shape
        for pooling in ("cls", "mean", "cls+mean")
    }
    assert sizes == {"cls": (2, 32), "mean": (2, 32), "cls+mean": (2, 64)}


def test_dinov2_batches_give_the_same_features_as_one_call(tiny_dinov2):
    whole = get_extractor("dinov2", model=tiny_dinov2)(images(5))
    batched = get_extractor("dinov2", model=tiny_dinov2, batch_size=2)(images(5))
    torch.testing.assert_close(batched, whole)


def test_dinov2_resize_and_crop_options_change_features_and_id(tiny_dinov2):
    default = get_extractor("dinov2", model=tiny_dinov2)
    cropped = get_extractor("dinov2", model=tiny_dinov2, size=24, crop=16)
    assert default.id != cropped.id
    assert '"crop": 16' in cropped.id and '"pooling": "cls"' in cropped.id
    assert not torch.allclose(default(images(2)), cropped(images(2)))


def test_extractor_id_leaves_out_device_and_batch_size(tiny_dinov2):
    assert (
        get_extractor("dinov2", model=tiny_dinov2, batch_size=2).id
        == get_extractor("dinov2", model=tiny_dinov2).id
    )


def test_dinov2_defaults_to_the_papers_giant_model_cls_token():
    extractor = get_extractor("dinov2")
    assert extractor.options["model"] == "facebook/dinov2-giant"
    assert extractor.options["pooling"] == "cls"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"pooling": "max"}, "pooling must be one of"),
        ({"crop": 0}, "crop must be"),
        ({"poolng": "cls"}, "poolng"),
    ],
)
def test_bad_extractor_options_raise_config_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        get_extractor("dinov2", **options)


def test_missing_model_folder_is_an_input_file_error(tmp_path):
    with pytest.raises(InputFileError, match="cannot load dinov2 model"):
        get_extractor("dinov2", model=str(tmp_path / "absent"))(images(1))


def test_clip_image_features_are_the_projected_embeddings(tiny_clip):
    features = get_extractor("clip", model=tiny_clip)(images(2))
    assert features.shape == (2, 16)


def test_clip_score_is_100_times_clipped_cosine_of_image_and_prompt(tiny_clip):
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    prompts = ["a red square", "a blue photo", "a red photo of a blue square", "red", "blue square", "photo"]
    records = [ImageRecord(im, {"prompt": p}) for im, p in zip(images(6), prompts, strict=True)]
    scores = [row["clip_score"] for row in get_metric("clip_score", model=tiny_clip).compute(records)]
    model = CLIPModel.from_pretrained(tiny_clip)
    tokens = AutoTokenizer.from_pretrained(tiny_clip)(prompts, padding=True, return_tensors="pt")
    pixels = AutoImageProcessor.from_pretrained(tiny_clip)(images=images(6), return_tensors="pt")
    with torch.inference_mode():
        output = model(**tokens, **pixels)
    cosine = torch.nn.functional.cosine_similarity(output.image_embeds, output.text_embeds)
    assert (cosine > 0).any() and (cosine < 0).any()  # both branches of the clipping are exercised
    assert scores == pytest.approx((100 * cosine.clamp(min=0)).tolist(), abs=1e-4)
    assert all(0 <= s <= 100 for s in scores)


def test_clip_score_without_a_prompt_names_the_image(tiny_clip):
    with pytest.raises(ConfigError, match="needs a prompt"):
        get_metric("clip_score", model=tiny_clip).compute([ImageRecord(images(1)[0])])


def test_dinov2_mean_pooling_skips_register_tokens(tmp_path):
    from transformers import BitImageProcessor, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    config = Dinov2WithRegistersConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37, image_size=32,
        patch_size=8, num_register_tokens=4,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Dinov2WithRegistersModel(config).eval()
    model.save_pretrained(tmp_path)
    processor = BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor.save_pretrained(tmp_path)
    features = get_extractor("dinov2", model=str(tmp_path), pooling="mean")(images(2))
    with torch.inference_mode():
        tokens = model(**processor(images=images(2), return_tensors="pt")).last_hidden_state
    assert tokens.shape[1] == 1 + 4 + 16
    torch.testing.assert_close(features, tokens[:, 5:].mean(dim=1))
