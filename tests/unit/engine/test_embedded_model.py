"""The embedded model: deterministic, a standard diffusers directory, a working CLIP tokenizer."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from transformers import CLIPTokenizer

from serving.models import embedded
from serving.models.tokenizer import write_tokenizer


def _weights_digest(pipeline: StableDiffusionPipeline) -> str:
    digest = hashlib.sha256()
    for module in (pipeline.text_encoder, pipeline.unet, pipeline.vae):
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().numpy().tobytes())
    return digest.hexdigest()


def test_weights_are_the_same_on_every_build(embedded_model_dir: Path) -> None:
    loaded = StableDiffusionPipeline.from_pretrained(str(embedded_model_dir))
    assert _weights_digest(embedded.build_pipeline()) == _weights_digest(loaded)


def test_build_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    embedded.build_pipeline()
    assert torch.equal(torch.rand(3), expected)


def test_export_is_a_standard_pipeline_directory(embedded_model_dir: Path) -> None:
    for part in ("model_index.json", "unet", "vae", "text_encoder", "scheduler"):
        assert (embedded_model_dir / part).exists(), part
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        assert (embedded_model_dir / "tokenizer" / name).exists(), name
    pipeline = StableDiffusionPipeline.from_pretrained(str(embedded_model_dir))
    assert pipeline.unet.config.sample_size * 8 == embedded.NATIVE_SIZE
    assert 15e6 < sum(p.numel() for p in pipeline.unet.parameters()) < 30e6


def test_tokenizer_round_trips_text(tmp_path: Path) -> None:
    write_tokenizer(tmp_path)
    tokenizer = CLIPTokenizer.from_pretrained(str(tmp_path))
    ids = tokenizer("A red apple, on a wooden table!").input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a red apple , on a wooden table !"
    assert tokenizer.model_max_length == 77


def test_cache_is_built_once(tmp_path: Path) -> None:
    first = embedded.ensure_cached(tmp_path)
    stamp = (first / "model_index.json").stat().st_mtime_ns
    assert embedded.ensure_cached(tmp_path) == first
    assert (first / "model_index.json").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == [first.name]
