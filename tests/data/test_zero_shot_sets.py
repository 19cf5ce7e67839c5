"""Zero-shot the standard way: ImageNet / CIFAR class names, CLIP's 80 templates, the imagenet2012 config."""
from __future__ import annotations

import os

import numpy as np
import pytest

from jaxsup import registry, sharding
from jaxsup.config import base_config, load_config
from jaxsup.data.text import class_names, tokenizer
from jaxsup.data.host import image_text
from jaxsup.errors import ConfigError

from helpers import ROOT
from test_real_datasets import mock_tfds  # noqa: F401 (fixture: the real TFDS builders on mock records)

CONFIG = os.path.join(ROOT, "configs/zero_shot_imagenet.py")


def test_name_and_template_files():
    imagenet, templates = class_names.names("imagenet2012"), class_names.templates("openai_imagenet")
    assert len(imagenet) == 1000 and len(set(imagenet)) == 998  # "missile", "sunglasses" twice, as in CLIP's list
    assert imagenet[0] == "tench" and imagenet[999] == "toilet paper"
    assert len(templates) == 80 and all(t.count("{name}") == 1 for t in templates)
    assert class_names.names("cifar10") == ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                            "ship", "truck")
    cifar100 = class_names.names("cifar100")
    assert len(set(cifar100)) == 100 and cifar100[1] == "aquarium fish" and cifar100[-1] == "worm"
    assert [n.replace(" ", "_") for n in cifar100] == sorted(n.replace(" ", "_") for n in cifar100)  # label order
    assert image_text.resolve_class_names("imagenet2012") == imagenet
    with pytest.raises(ConfigError, match="Unknown class-name set 'imagenet'"):
        image_text.resolve_class_names("imagenet")


def test_files_equal_open_clips_lists():
    metadata = pytest.importorskip("open_clip.zero_shot_metadata")
    assert class_names.names("imagenet2012") == tuple(metadata.IMAGENET_CLASSNAMES)
    assert class_names.templates("openai_imagenet") == tuple(t("{name}") for t in metadata.OPENAI_IMAGENET_TEMPLATES)


def test_zero_shot_evaluator_prompts_every_class_with_every_template():
    cfg = dict(split="test", batch_size=64, class_names="cifar10", templates="openai_imagenet", tokenizer="bytes",
               max_len=64)
    import ml_collections

    ev = registry.get("evaluator", "zero_shot")(ml_collections.ConfigDict(cfg), base_config().data,
                                                sharding.batch_sharding(sharding.make_mesh((("data", 1),))))
    assert ev.prompt_tokens.shape == (10 * 80, 64)
    texts = tokenizer.get_tokenizer("bytes").decode(ev.prompt_tokens)
    templates = class_names.templates("openai_imagenet")
    assert texts[0] == "a bad photo of a airplane." and texts[80 * 9 + 79] == templates[79].format(name="truck")


@pytest.mark.parametrize("arg", ["", ":model=ViT-B-16", ":model=ViT-L-14,gelu,dataset=cifar100"])
def test_imagenet_config(arg):
    c = load_config(CONFIG + arg)
    zs = c.evals.zero_shot
    assert (zs.templates, zs.tokenizer, zs.max_len) == ("openai_imagenet", "clip", 77)
    assert zs.class_names == c.data.name and zs.split == ("test" if "cifar" in arg else "validation")
    assert c.model.image_kwargs.act == ("gelu_erf" if "gelu" in arg else "quick_gelu")
    with pytest.raises(ConfigError, match="model must be one of"):
        load_config(CONFIG + ":model=ViT-H-14")


@pytest.mark.parametrize("name", ["ViT-B-32", "ViT-B-16", "ViT-L-14"])
def test_imagenet_config_models_are_open_clips(name):
    """The config's inline sizes equal jaxsup.interop.presets on open_clip's own model config."""
    presets = pytest.importorskip("jaxsup.interop.presets")
    pytest.importorskip("open_clip")
    expected = presets.two_tower_kwargs(presets.open_clip_config(name), quick_gelu=True)
    got = load_config(f"{CONFIG}:model={name}").model.to_dict()
    assert got["text_kwargs"].pop("vocab_size") == 0 and expected["text_kwargs"].pop("vocab_size") == 49408
    assert expected.pop("loss") == "softmax"
    assert got == expected
    assert presets.image_size(presets.open_clip_config(name)) == 224


def test_class_caption_with_imagenet_names():
    op = image_text.class_caption("templates=openai_imagenet,names=imagenet2012")
    caption = op({"label": np.int32(1), "image": np.zeros((2, 2, 3), np.uint8)})["text"]
    assert "goldfish" in caption


@pytest.mark.slow  # 80 000 prompts tokenised and embedded: ~85 s on the shared 2-core machine
def test_imagenet_config_end_to_end_on_mock_imagenet(mock_tfds, tmp_path):
    """jaxsup.eval --init on configs/zero_shot_imagenet.py (towers shrunk): 1000 classes x 80 prompts
    through the real imagenet2012 builder's records (random content, tfds.testing.mock_data)."""
    pytest.importorskip("ftfy")
    pytest.importorskip("regex")
    pytest.importorskip("open_clip")  # ships the CLIP BPE vocabulary
    import jax

    from jaxsup import eval as eval_lib, experiment
    from jaxsup.interop import convert

    c = load_config(CONFIG)
    small = dict(width=32, depth=1, mlp_dim=64, num_heads=2)
    c.model.image_kwargs = {**c.model.image_kwargs.to_dict(), **small}
    c.model.text_kwargs = {**c.model.text_kwargs.to_dict(), **small}
    c.model.embed_dim, c.mesh, c.evals.zero_shot.batch_size = 16, (("data", 1),), 2000
    mesh = sharding.make_mesh(c.mesh)
    data = experiment.data_info(c, mesh)
    params, _ = experiment.build_task(c, mesh, data).init(jax.random.key(0), data.example)
    path = str(tmp_path / "clip.safetensors")
    convert.write("open_clip", convert.export_flat("open_clip", {k: np.asarray(v) for k, v in
                                                                 convert.flatten(params).items()}), path)
    got = eval_lib.evaluate(c, init=f"open_clip:{path}")
    assert got["zero_shot/count"] == 32.0  # MOCK_EXAMPLES validation images
    assert 0 <= got["zero_shot/top1"] <= got["zero_shot/top5"] <= 1
