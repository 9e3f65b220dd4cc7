import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from synthesis_fixtures import RANKS, save_tiny_base, write_lora_folder

from autolora.errors import ConfigError, IncompatibleLoRAError, InputFileError
from autolora.synthesis.bank import Bank, build_bank
from autolora.synthesis.canonical import Layout, canonicalize, read_lora_modules
from autolora.testing import random_lora_state_dict, tiny_pipeline


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("bank")
    base = save_tiny_base(root)
    pipe = tiny_pipeline("sd15", root / "tokenizers")
    loras = write_lora_folder(pipe, root / "loras")
    return base, pipe, loras, root


def test_canonicalisation_preserves_every_product_to_1e5(world):
    _, _, loras, _ = world
    for source in sorted(loras.iterdir()):
        for module, (a, b) in read_lora_modules(source).items():
            a_c, b_c = canonicalize(a, b, rank=8)
            expected = b @ a
            error = torch.linalg.norm(b_c @ a_c - expected) / torch.linalg.norm(expected)
            assert error < 1e-5, (source.name, module)
            # Balanced: both factors carry the same singular values.
            assert torch.allclose(a_c.norm(dim=1), b_c.norm(dim=0), rtol=1e-4, atol=1e-7)


def test_canonical_form_does_not_depend_on_the_factorisation():
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 12, generator=generator), torch.randn(10, 4, generator=generator)
    mix = torch.randn(4, 4, generator=generator).double()
    a2, b2 = (torch.linalg.inv(mix) @ a.double()).float(), (b.double() @ mix).float()
    for left, right in zip(canonicalize(a, b, 6), canonicalize(a2, b2, 6), strict=True):
        assert torch.allclose(left, right, atol=1e-4)


def test_kohya_and_peft_folders_read_the_same_update_as_diffusers(world, tmp_path):
    from autolora.lora import to_kohya_state_dict

    _, pipe, _, _ = world
    state = random_lora_state_dict(pipe, seed=5, rank=3)
    save_file(state, str(tmp_path / "d.safetensors"))
    kohya = to_kohya_state_dict(state, {k.removesuffix(".lora_A.weight"): 6.0 for k in state})  # scale 2
    save_file(kohya, str(tmp_path / "k.safetensors"))
    plain, scaled = (
        read_lora_modules(tmp_path / "d.safetensors"),
        read_lora_modules(tmp_path / "k.safetensors"),
    )
    assert plain.keys() == scaled.keys() and len(plain) == 32
    for module, (a, b) in plain.items():
        assert torch.allclose(scaled[module][1] @ scaled[module][0], 2 * b @ a)


def test_flatten_unflatten_round_trips_exactly():
    layout = Layout("tiny", 3, {"unet.b": (5, 7), "unet.a": (4, 2)})
    vector = torch.randn(layout.dim)
    state = layout.unflatten(vector)
    assert list(state) == [
        "unet.a.lora_A.weight",
        "unet.a.lora_B.weight",
        "unet.b.lora_A.weight",
        "unet.b.lora_B.weight",
    ]
    modules = {m: (state[f"{m}.lora_A.weight"], state[f"{m}.lora_B.weight"]) for m in layout.modules}
    assert torch.equal(layout.flatten(modules), vector)
    assert Layout.from_json(json.loads(json.dumps(layout.to_json()))) == layout


def test_bank_build_canonicalises_normalises_and_streams(world, tmp_path):
    base, _, loras, _ = world
    bank = build_bank(loras, str(base), 4, tmp_path / "bank")
    assert len(bank) == len(RANKS) and bank.layout.rank == 4
    assert isinstance(bank.weights, np.memmap)
    streamed = torch.cat(list(bank.batches(4)))
    assert streamed.shape == (len(RANKS), bank.layout.dim)
    assert torch.equal(streamed, bank.rows(slice(None)))
    # Normalised segments have unit std over the bank; denormalize inverts normalize.
    ids = bank.layout.segment_ids()
    for segment in range(len(bank.layout.segments)):
        assert streamed[:, ids == segment].double().std(unbiased=False).item() == pytest.approx(1, rel=1e-3)
    raw = bank.rows([0, 3], normalized=False)
    assert torch.allclose(bank.denormalize(bank.normalize(raw)), raw, rtol=1e-6, atol=0)
    # Every rank-<=4 LoRA is represented exactly; the rank-8 one (index 3) by its best rank-4 approximation.
    reopened = Bank.open(tmp_path / "bank")
    state = reopened.layout.unflatten(reopened.rows([0], normalized=False)[0])
    original = read_lora_modules(loras / "lora0.safetensors")
    for module, (a, b) in original.items():
        product = state[f"{module}.lora_B.weight"] @ state[f"{module}.lora_A.weight"]
        assert torch.linalg.norm(product - b @ a) / torch.linalg.norm(b @ a) < 1e-5


def test_bank_build_resumes_after_the_recorded_rows(world, tmp_path, monkeypatch):
    import autolora.synthesis.bank as bank_module

    base, _, loras, _ = world
    first = build_bank(loras, str(base), 4, tmp_path / "full")
    monkeypatch.setattr(bank_module, "CHUNK", 2)
    calls = []
    original = bank_module.lora_vector

    def failing(layout, modules, name):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(layout, modules, name)

    monkeypatch.setattr(bank_module, "lora_vector", failing)
    with pytest.raises(KeyboardInterrupt):
        build_bank(loras, str(base), 4, tmp_path / "resumed")
    assert json.loads((tmp_path / "resumed" / "bank.json").read_text())["done"] == 2
    calls.clear()
    monkeypatch.setattr(bank_module, "lora_vector", original)
    resumed = build_bank(loras, str(base), 4, tmp_path / "resumed")
    assert torch.equal(resumed.rows(slice(None)), first.rows(slice(None)))


def test_lora_of_another_base_is_refused_naming_the_mismatch(world, tmp_path):
    base, _, loras, _ = world
    other = tiny_pipeline("sdxl", tmp_path / "sdxl")
    folder = tmp_path / "mixed"
    folder.mkdir()
    for source in loras.glob("*.safetensors"):
        (folder / source.name).write_bytes(source.read_bytes())
    save_file(random_lora_state_dict(other), str(folder / "zz_sdxl.safetensors"))
    with pytest.raises(
        IncompatibleLoRAError, match=r"zz_sdxl.safetensors is not for base model .*module unet\."
    ):
        build_bank(folder, str(base), 4, tmp_path / "bank")
    assert not (tmp_path / "bank").exists()  # refused before any work


def test_corrupt_and_text_encoder_loras_are_refused(world, tmp_path):
    base, pipe, _, _ = world
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(InputFileError, match="corrupt"):
        build_bank(tmp_path / "bad", str(base), 4, tmp_path / "bank")
    save_file(random_lora_state_dict(pipe, text_encoder=True), str(tmp_path / "te.safetensors"))
    with pytest.raises(IncompatibleLoRAError, match="text_encoder"):
        read_lora_modules(tmp_path / "te.safetensors")


def test_world_loras_build_a_bank_where_the_kohya_twin_equals_its_original(tmp_path):
    from autolora.world.assets import ASSETS_DIR

    bank = build_bank(ASSETS_DIR / "loras", "world", 4, tmp_path / "world-bank")
    names = bank.names
    rows = bank.rows(slice(None), normalized=False)
    original, twin = rows[names.index("outline.safetensors")], rows[names.index("outline-kohya.safetensors")]
    assert torch.allclose(original, twin, atol=1e-6)
    assert not torch.allclose(original, rows[names.index("neon.safetensors")], atol=1e-3)


def test_raw_bank_keeps_each_lora_s_own_factors_zero_padded(world, tmp_path):
    base, _, loras, _ = world
    bank = build_bank(loras, str(base), max(RANKS), tmp_path / "raw", factors="raw")
    reopened = Bank.open(tmp_path / "raw")
    assert reopened.layout.factors == "raw"
    for row, source in enumerate(sorted(loras.iterdir())):
        state = bank.layout.unflatten(bank.rows([row], normalized=False)[0])
        for module, (a, b) in read_lora_modules(source).items():
            rank = a.shape[0]
            assert torch.equal(state[f"{module}.lora_A.weight"][:rank], a)
            assert torch.equal(state[f"{module}.lora_B.weight"][:, :rank], b)
            assert not state[f"{module}.lora_A.weight"][rank:].any()
            assert not state[f"{module}.lora_B.weight"][:, rank:].any()


def test_raw_bank_refuses_a_lora_above_its_rank_naming_it(world, tmp_path):
    base, _, loras, _ = world
    with pytest.raises(
        IncompatibleLoRAError, match=r"lora3\.safetensors has rank 8 .* above the bank's rank 4"
    ):
        build_bank(loras, str(base), 4, tmp_path / "raw", factors="raw")


def test_layout_records_its_factor_form_and_reads_older_layouts_as_canonical():
    raw = Layout("tiny", 2, {"unet.a": (3, 4)}, "raw")
    assert Layout.from_json(json.loads(json.dumps(raw.to_json()))) == raw
    older = {k: v for k, v in raw.to_json().items() if k != "factors"}
    assert Layout.from_json(older).factors == "canonical"
    with pytest.raises(ConfigError, match="factors must be one of canonical, raw"):
        Layout("tiny", 2, {"unet.a": (3, 4)}, "svd")
