"""Hugging Face CLIPModel / SiglipModel folders in and out (jaxsup/interop/hf.py), against transformers itself.

Tiny random HF models (every parameter redrawn N(0, 0.2^2), so no zero bias or unit norm hides a
swapped key) of several configs are saved with save_pretrained; jaxsup imports the folder and must give
HF's normalised embeddings and logits; the export must load into HF with no missing, unexpected or
mismatched key and give the same outputs; import(export(x)) is x exactly.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from interop_helpers import inputs, jaxsup_outputs, relative_error
from jaxsup.errors import CheckpointError, ConfigError
from jaxsup.interop import convert, hf
from jaxsup.models.two_tower import TwoTower

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

TEXT = dict(vocab_size=99, hidden_size=16, intermediate_size=40, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=12)
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=8,
              patch_size=4)
CLIP_IDS = dict(eos_token_id=98, bos_token_id=97, pad_token_id=0)  # EOT the largest id, as in CLIP's BPE
SIGLIP_IDS = dict(eos_token_id=1, bos_token_id=None, pad_token_id=1)  # SigLIP's spiece: "</s>" both
# (arch, text_config overrides, vision_config overrides, top-level overrides)
CONFIGS = {
    "clip-quick_gelu-p4": ("clip", {}, {}, dict(projection_dim=20)),
    "clip-gelu-p2-3x3": ("clip", dict(hidden_act="gelu", num_hidden_layers=3, layer_norm_eps=1e-6),
                         dict(hidden_act="gelu", patch_size=2, image_size=6, num_hidden_layers=1), dict(projection_dim=12)),
    "siglip-tanh-p4": ("siglip", dict(projection_size=32), {}, {}),
    "siglip-gelu-p2": ("siglip", dict(hidden_act="gelu", projection_size=24, num_hidden_layers=1),
                       dict(hidden_act="gelu", patch_size=2, image_size=6, hidden_size=24, num_attention_heads=3), {}),
}


def hf_model(name: str, seed: int = 0):
    """A random-init HF CLIPModel / SiglipModel of CONFIGS[name] (eval mode)."""
    arch, text, vision, top = CONFIGS[name]
    text = {**TEXT, **(CLIP_IDS if arch == "clip" else SIGLIP_IDS), **text}
    config_cls, model_cls = ((transformers.CLIPConfig, transformers.CLIPModel) if arch == "clip"
                             else (transformers.SiglipConfig, transformers.SiglipModel))
    torch.manual_seed(seed)
    model = model_cls(config_cls(text_config=text, vision_config={**VISION, **vision}, **top)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model


def hf_outputs(model, images: np.ndarray, tokens: np.ndarray) -> dict[str, np.ndarray]:
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(tokens.astype(np.int64)),
                    pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2)))
    return {"img": out.image_embeds.numpy(), "txt": out.text_embeds.numpy(), "logits": out.logits_per_image.numpy()}


def model_inputs(name: str, kwargs: dict, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images [3, S, S, 3] at the config's image_size and token rows as a tokenizer gives them."""
    _, tokens = inputs(None, kwargs, batch=3, seed=seed)
    size = {**VISION, **CONFIGS[name][2]}["image_size"]
    return np.random.default_rng(seed).normal(size=(3, size, size, 3)).astype(np.float32), tokens


def assert_same_outputs(ours: dict, theirs: dict, tol: float = 1e-5, label: str = "") -> None:
    """max |a - b| / max |b| <= tol for both embeddings and the logits (printed with -s)."""
    errors = {key: relative_error(ours[key], theirs[key]) for key in ("img", "txt", "logits")}
    print(f"\n{label} relative error: " + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))
    for key, error in errors.items():
        assert error <= tol, (key, error)


def saved(model, path, **kwargs) -> str:
    model.save_pretrained(str(path), **kwargs)
    return str(path)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_import_gives_hfs_embeddings(tmp_path, name):
    model = hf_model(name)
    flat, origin, kwargs = hf.import_folder(saved(model, tmp_path / "hf"))
    images, tokens = model_inputs(name, kwargs)
    assert_same_outputs(jaxsup_outputs(TwoTower(**kwargs), flat, images, tokens), hf_outputs(model, images, tokens),
                        label=f"import {name}: jaxsup vs HF")
    assert ("img/cls" in origin) == (CONFIGS[name][0] == "clip")


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_export_loads_into_hf_and_round_trips(tmp_path, name):
    model = hf_model(name, seed=1)
    flat, _, kwargs = hf.import_folder(saved(model, tmp_path / "hf"))
    out = str(tmp_path / "exported")
    convert.write("hf", convert.export_flat("hf", flat), out, hf.hf_config(flat, kwargs))
    cls = type(model)
    back, info = cls.from_pretrained(out, output_loading_info=True)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")), info
    images, tokens = model_inputs(name, kwargs, seed=1)
    assert_same_outputs(hf_outputs(back.eval(), images, tokens), hf_outputs(model, images, tokens), tol=1e-6,
                        label=f"export {name}: HF(exported) vs HF")
    again, _, kwargs_again = hf.import_folder(out)
    assert kwargs_again == kwargs and sorted(again) == sorted(flat)
    for key in flat:
        np.testing.assert_array_equal(again[key], flat[key], err_msg=key)
    masked = {**kwargs, "text_kwargs": {**kwargs["text_kwargs"], "mask_padding": True}}  # not in the params
    with pytest.raises(ConfigError, match="no Hugging Face .* equivalent"):
        hf.hf_config(flat, masked)


def test_init_hf_through_load_for_model_and_sharded_folders(tmp_path):
    model = hf_model("clip-quick_gelu-p4", seed=2)
    whole, _, kwargs = hf.import_folder(saved(model, tmp_path / "one"))
    folder = saved(model, tmp_path / "sharded", max_shard_size="20KB")
    shards = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
    assert len(shards) > 1 and os.path.isfile(os.path.join(folder, hf.INDEX))
    loaded = convert.load_for_model(f"hf:{folder}", {k: v.shape for k, v in whole.items()})
    for key in whole:
        np.testing.assert_array_equal(loaded[key], whole[key], err_msg=key)
    os.remove(os.path.join(folder, shards[1]))
    with pytest.raises(CheckpointError, match=f"Shard .*{shards[1]}.* not found"):
        hf.import_folder(folder)


def one_line(err) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_bad_folders_end_in_one_line_naming_the_file(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    with pytest.raises(CheckpointError) as err:
        hf.import_folder(str(folder))
    assert "config.json" in one_line(err) and str(folder) in one_line(err)
    (folder / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert"}))
    with pytest.raises(CheckpointError, match="BertModel") as err:
        hf.import_folder(str(folder))
    assert "config.json" in one_line(err)
    (folder / "config.json").write_text(json.dumps({"architectures": ["CLIPModel"]}))
    with pytest.raises(CheckpointError, match="model.safetensors") as err:
        hf.import_folder(str(folder))
    one_line(err)
    with pytest.raises(ConfigError, match="--init must be"):
        convert.parse_init("huggingface:" + str(folder))


# ------------------------------------------------------------------ tokenizers ("hf:DIR")
CAPTIONS = ["a photo of a cat.", "Two dogs, playing in the snow!", "an image of the number 7", "  A  RED car   ",
            "it's a bird's nest (on a tree)", "word " * 40]


def clip_tokenizer_folder(path) -> str:
    """vocab.json + merges.txt as HF writes them, from the CLIP BPE vocabulary open_clip ships."""
    from jaxsup.data.text.clip_bpe import NUM_MERGES, ClipBpeTokenizer

    pytest.importorskip("ftfy")
    tok = ClipBpeTokenizer()
    vocab = {("<|startoftext|>" if i == tok.bos_id else "<|endoftext|>" if i == tok.eos_id else s): i
             for s, i in tok.encoder.items()}
    merges = sorted(tok.ranks, key=tok.ranks.get)
    assert len(merges) == NUM_MERGES
    path.mkdir()
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return str(path)


def test_clip_tokenizer_from_the_folder_gives_hfs_ids(tmp_path):
    from jaxsup.data.text.tokenizer import get_tokenizer

    folder = clip_tokenizer_folder(tmp_path / "tok")
    ours = get_tokenizer(f"hf:{folder}").encode(CAPTIONS, max_len=24)
    theirs = transformers.CLIPTokenizer.from_pretrained(folder)(CAPTIONS, padding="max_length", max_length=24,
                                                                truncation=True)["input_ids"]
    for row, ref in zip(ours, theirs):
        n = list(ref).index(49407) + 1  # HF pads with EOT, jaxsup with 0: the same ids up to EOT
        assert list(row[:n]) == list(ref[:n]) and not row[n:].any()
    os.remove(os.path.join(folder, "merges.txt"))
    with pytest.raises(ConfigError, match="merges.txt.* not found"):
        get_tokenizer(f"hf:{folder}")


def siglip_tokenizer_folder(path) -> str:
    """A tiny SentencePiece model laid out like SigLIP's spiece.model: pad 0, eos "</s>" 1, unk 2, no bos."""
    spm = pytest.importorskip("sentencepiece")
    import io

    from jaxsup.data.text.hf_tokenizer import canonicalize

    lines = [canonicalize(c) for c in CAPTIONS] * 20 + ["the quick brown fox jumps over the lazy dog"] * 20
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=buf, vocab_size=40, pad_id=0, eos_id=1,
                                   unk_id=2, bos_id=-1, model_type="unigram", minloglevel=2)
    path.mkdir()
    (path / "spiece.model").write_bytes(buf.getvalue())
    return str(path)


def test_siglip_tokenizer_from_the_folder_gives_hfs_ids(tmp_path):
    from jaxsup.data.text.tokenizer import get_tokenizer

    folder = siglip_tokenizer_folder(tmp_path / "tok")
    ours = get_tokenizer(f"hf:{folder}").encode(CAPTIONS, max_len=16)
    theirs = transformers.SiglipTokenizer(os.path.join(folder, "spiece.model"))(
        CAPTIONS, padding="max_length", max_length=16, truncation=True)["input_ids"]
    np.testing.assert_array_equal(ours, np.asarray(theirs))
    os.remove(os.path.join(folder, "spiece.model"))
    with pytest.raises(ConfigError, match="spiece.model") as err:
        get_tokenizer(f"hf:{folder}")
    one_line(err)


# ------------------------------------------------------------------ python -m jaxsup.export --format hf
def hf_zero_shot(model, config) -> dict[str, float]:
    """config.evals.zero_shot run with a transformers model computing the embeddings."""
    from jaxsup import registry, sharding

    def predict(batch):
        with torch.no_grad():
            if "image" in batch:
                z = model.get_image_features(pixel_values=torch.from_numpy(np.asarray(batch["image"]).transpose(0, 3, 1, 2)))
                return {"zimg": getattr(z, "pooler_output", z).numpy()}
            z = model.get_text_features(input_ids=torch.from_numpy(np.asarray(batch["tokens"]).astype(np.int64)))
            return {"ztxt": getattr(z, "pooler_output", z).numpy()}

    mesh = sharding.make_mesh(config.mesh)
    evaluator = registry.get("evaluator", "zero_shot")(config.evals.zero_shot, config.data,
                                                        sharding.batch_sharding(mesh, config.batch_axes))
    return evaluator.evaluate(predict)


def digits_run(workdir: str):
    """(config, workdir) of configs/clip_digits_openclip.py:runlocal,bytes at its initial parameters, saved
    as train.py saves a run (checkpoint at step 1 and config.json); no train step is compiled."""
    from jaxsup import workdir as workdir_lib

    from test_interop_commands import digits_config, save_initial_run

    config = digits_config()
    save_initial_run(config, workdir)
    workdir_lib.write_config(config.to_json_best_effort(indent=2), workdir)
    return config, workdir


@pytest.mark.slow  # ~50 s on 2 cores: builds a run, one export subprocess, two zero-shot evals
def test_export_of_a_digits_run_loads_into_hf_and_evaluates_the_same(tmp_path):
    """configs/clip_digits_openclip.py (bytes tokenizer) at its initial parameters, saved as train.py saves a run:
    `jaxsup.export --format hf` -> CLIPModel.from_pretrained (no missing / unexpected key) gives jaxsup's
    embeddings on a digits batch, and `jaxsup.eval --init hf:OUT` the run's own zero-shot metrics."""
    from jaxsup import checkpoint, eval as eval_lib, export
    from jaxsup.data.loader import pipeline

    from test_interop_commands import cli

    config, workdir = digits_run(str(tmp_path / "run"))
    out = str(tmp_path / "hf")
    done = cli("jaxsup.export", "--workdir", workdir, "--format", "hf", "--out", out)
    assert done.returncode == 0, done.stderr[-2000:]
    model, info = transformers.CLIPModel.from_pretrained(out, output_loading_info=True)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    batch = pipeline.example_batch(config.data)
    images, tokens = np.asarray(batch["image"], np.float32), np.asarray(batch["tokens"])
    flat = {k: np.asarray(v) for k, v in convert.flatten(checkpoint.restore_subtree(workdir, "params")).items()}
    ours = jaxsup_outputs(TwoTower(**{**config.model.to_dict(), "text_kwargs": {
        **config.model.text_kwargs.to_dict(), "vocab_size": flat["txt/token_embedding/embedding"].shape[0]}}),
        flat, images, tokens)
    assert_same_outputs(ours, hf_outputs(model.eval(), images, tokens), label="digits run: jaxsup vs HF(exported)")
    logged = eval_lib.evaluate(config, workdir=workdir)
    assert eval_lib.evaluate(config, init=f"hf:{out}") == pytest.approx(logged, abs=1e-6)
    # HF's own model under the config's zero-shot evaluator (its images and prompts): the same top-1
    assert hf_zero_shot(model, config)["top1"] == pytest.approx(logged["zero_shot/top1"], abs=1e-6)
    with pytest.raises(ConfigError, match="Refusing to overwrite"):
        export.export_run(workdir, "hf", out)
