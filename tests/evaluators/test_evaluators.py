"""Representation evaluators: metric functions vs NumPy/scikit-learn, and end to end with oracle predicts."""
import ml_collections
import numpy as np
import pytest

from jaxsup import registry, sharding
from jaxsup.config import base_config
from jaxsup.data.datasets import digits, sources
from jaxsup.data.host import image_text, preprocess
from jaxsup.data.loader import pipeline
from jaxsup.data.text import tokenizer
from jaxsup.evaluators import features, knn, linear_probe, retrieval, zero_shot

RNG = np.random.default_rng(0)


# ----------------------------------------------------------------------------- metric functions


def brute_force_ranks(sims, groups):
    """Position of the first same-group item in each row's descending argsort."""
    order = np.argsort(-sims, axis=1, kind="stable")
    return np.array([np.flatnonzero(groups[order[i]] == groups[i])[0] for i in range(len(sims))])


def test_retrieval_recalls_match_a_brute_force_ranking():
    n, ks = 60, (1, 5, 10)
    zimg, ztxt = RNG.normal(size=(n, 8)), RNG.normal(size=(n, 8))
    groups = RNG.integers(0, 25, n)  # duplicate captions share a group
    got = retrieval.retrieval_metrics(zimg, ztxt, groups, ks)
    sims = features.normalize_rows(zimg) @ features.normalize_rows(ztxt).T
    for name, s in (("img2txt", sims), ("txt2img", sims.T)):
        ranks = brute_force_ranks(s, groups)
        for k in ks:
            assert got[f"{name}/r{k}"] == pytest.approx((ranks < k).mean(), abs=1e-12)
    assert got["r1_chance"] == pytest.approx(np.mean([(groups == g).sum() / n for g in groups]))


def test_retrieval_groups_identical_texts_pairs_and_labels():
    tokens = np.array([[1, 2], [3, 4], [1, 2], [5, 6]])
    np.testing.assert_array_equal(retrieval.match_groups(tokens, "text"), [0, 1, 0, 2])
    np.testing.assert_array_equal(retrieval.match_groups(tokens, "pair"), [0, 1, 2, 3])
    np.testing.assert_array_equal(retrieval.match_groups(tokens, "label", np.array([7, 7, 1, 2])), [7, 7, 1, 2])
    with pytest.raises(ValueError, match="Unknown retrieval match 'exact'"):
        retrieval.match_groups(tokens, "exact")


@pytest.mark.parametrize("k", [1, 5])
def test_knn_uniform_matches_sklearn(k):
    from sklearn.neighbors import KNeighborsClassifier

    x_train, x_test = RNG.normal(size=(200, 6)), RNG.normal(size=(50, 6))
    y_train = RNG.integers(0, 4, 200)
    ours = knn.knn_predict(x_train, y_train, x_test, k, 4, weighting="uniform")
    ref = KNeighborsClassifier(k, metric="cosine", algorithm="brute").fit(x_train, y_train).predict(x_test)
    np.testing.assert_array_equal(ours, ref)


def test_knn_similarity_weighting_matches_a_loop():
    x_train, x_test = RNG.normal(size=(80, 5)), RNG.normal(size=(20, 5))
    y_train = RNG.integers(0, 3, 80)
    ours = knn.knn_predict(x_train, y_train, x_test, 7, 3, weighting="similarity", temperature=0.1, chunk=6)
    for i, q in enumerate(x_test):
        sims = (x_train @ q) / np.linalg.norm(x_train, axis=1) / np.linalg.norm(q)
        votes = np.zeros(3)
        for j in np.argsort(-sims)[:7]:
            votes[y_train[j]] += np.exp(sims[j] / 0.1)
        assert ours[i] == votes.argmax()


def test_linear_probe_matches_sklearn_logistic_regression():
    import jax.numpy as jnp
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(7)  # Own generator: the result must not depend on test order.
    n, d, k, l2 = 300, 10, 3, 1e-2
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (x[:, :k] + 0.8 * rng.normal(size=(n, k))).argmax(1).astype(np.int32)
    params = linear_probe.fit_logistic_regression(jnp.asarray(x), jnp.asarray(y), k, l2, 300)
    ref = LogisticRegression(C=1.0 / (l2 * n), tol=1e-10, max_iter=10_000).fit(x, y)
    x_test = rng.normal(size=(100, d)).astype(np.float32)
    ours = np.asarray(jnp.asarray(x_test) @ params["w"] + params["b"])
    ours = np.exp(ours - ours.max(1, keepdims=True))
    np.testing.assert_allclose(ours / ours.sum(1, keepdims=True), ref.predict_proba(x_test), atol=1e-4)


def test_zero_shot_classifier_and_topk():
    emb = RNG.normal(size=(3 * 4, 5))  # 3 classes x 4 templates, class-major
    got = zero_shot.text_classifier(emb, 3)
    for c in range(3):
        unit = emb[4 * c : 4 * c + 4] / np.linalg.norm(emb[4 * c : 4 * c + 4], axis=1, keepdims=True)
        np.testing.assert_allclose(got[c], unit.mean(0) / np.linalg.norm(unit.mean(0)), rtol=1e-5)
    scores, labels = RNG.normal(size=(40, 6)), RNG.integers(0, 6, 40)
    order = np.argsort(-scores, axis=1)
    for k in (1, 3):
        expected = [labels[i] in order[i, :k] for i in range(40)]
        np.testing.assert_array_equal(features.topk_correct(scores, labels, k), expected)


# ----------------------------------------------------------------------------- end to end


def data_config(eval_preprocess=("image_to_float", "label_to_int32", "keep:image,label")):
    c = base_config().data
    c.eval_preprocess = eval_preprocess
    return c


def eval_cfg(**fields):
    return ml_collections.ConfigDict(dict(split="test", batch_size=128, **fields))


BATCH_SHARDING = sharding.batch_sharding(sharding.make_mesh((("data", 1),)))


def image_label_table():
    """float32 image bytes -> label, over the whole digits dataset."""
    ops = preprocess.build(["image_to_float", "label_to_int32"])
    table = {}
    for split in ("train", "test"):
        for b in pipeline.eval_batches(sources.open_source("digits", split), ops, 512, 0, 1):
            table.update({im.tobytes(): int(y) for im, y in zip(b["image"], b["label"])})
    return table


def text_class(text):
    """The digit a caption names (by word or numeral)."""
    words = text.split()
    return next(k for k, name in enumerate(digits.CLASS_NAMES) if name in words or str(k) in words)


def oracle_predict(shift=0):
    """One-hot class embeddings: images by lookup (+shift), texts by the digit they name."""
    table, tok = image_label_table(), tokenizer.get_tokenizer("bytes")

    def predict(batch):
        out = {}
        if "image" in batch:
            images = np.asarray(batch["image"])
            labels = np.array([(table[im.tobytes()] + shift) % 10 for im in images])
            out["zimg"] = np.eye(10, dtype=np.float32)[labels]
            out["features"] = images.reshape(len(images), -1)
        if "tokens" in batch:
            out["ztxt"] = np.eye(10, dtype=np.float32)[[text_class(t) for t in tok.decode(np.asarray(batch["tokens"]))]]
        return out

    return predict


def test_zero_shot_end_to_end_with_an_oracle():
    ev = registry.get("evaluator", "zero_shot")(eval_cfg(max_len=40), data_config(), BATCH_SHARDING)
    assert ev.class_names == digits.CLASS_NAMES  # read from the dataset's ClassLabel
    assert ev.evaluate(oracle_predict()) == {"top1": 1.0, "top5": 1.0, "count": 360.0}
    wrong = ev.evaluate(oracle_predict(shift=1))
    assert wrong["top1"] == 0.0 and wrong["top5"] == 1.0


def test_zero_shot_without_class_names_is_a_clear_error():
    with pytest.raises(ValueError, match="Zero-shot class names missing.*'digit_id'"):
        registry.get("evaluator", "zero_shot")(eval_cfg(label_key="digit_id"), data_config(), BATCH_SHARDING)


def test_retrieval_end_to_end_with_an_oracle():
    ops = ("image_to_float", "label_to_int32", "class_caption:templates=digits_heldout", "tokenize:max_len=40",
           "keep:image,tokens,label")
    out = registry.get("evaluator", "retrieval")(eval_cfg(match="label"), data_config(ops), BATCH_SHARDING).evaluate(
        oracle_predict())
    assert out["img2txt/r1"] == out["txt2img/r1"] == 1.0 and out["count"] == 360
    assert 0.08 < out["r1_chance"] < 0.12  # ~36 test images per class of 360


def test_linear_probe_and_knn_on_pixels_match_sklearn():
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    fields = dict(train_split="train", output="features")
    probe = registry.get("evaluator", "linear_probe")(eval_cfg(l2=1e-3, steps=300, **fields), data_config(),
                                                      BATCH_SHARDING).evaluate(oracle_predict())
    neighbours = registry.get("evaluator", "knn")(eval_cfg(k=5, weighting="uniform", **fields), data_config(),
                                                  BATCH_SHARDING).evaluate(oracle_predict())
    ops = preprocess.build(["image_to_float", "label_to_int32"])
    data = {s: next(pipeline.eval_batches(sources.open_source("digits", s), ops, 2000, 0, 1)) for s in ("train", "test")}
    (xtr, ytr), (xte, yte) = [(data[s]["image"].reshape(-1, 64)[data[s]["mask"] > 0], data[s]["label"][data[s]["mask"] > 0])
                              for s in ("train", "test")]
    xtr_s, xte_s = linear_probe.standardize(xtr, xte)
    ref = LogisticRegression(C=1.0 / (1e-3 * len(xtr)), max_iter=5000).fit(xtr_s, ytr).score(xte_s, yte)
    assert abs(probe["top1"] - ref) <= 2 / 360 and probe["count"] == 360
    ref_knn = KNeighborsClassifier(5, metric="cosine", algorithm="brute").fit(xtr, ytr).score(xte, yte)
    assert neighbours["top1"] == pytest.approx(ref_knn)


def test_two_split_evaluators_need_train_split():
    for name in ("linear_probe", "knn"):
        with pytest.raises(ValueError, match="train_split"):
            registry.get("evaluator", name)(eval_cfg(), data_config(), BATCH_SHARDING)


def test_evaluator_overrides_dataset_and_preprocess():
    cfg = eval_cfg(dataset="other", data_dir="/d", preprocess=("keep:image",))
    got = features.eval_data_config(cfg, data_config())
    assert (got.name, got.data_dir, tuple(got.eval_preprocess)) == ("other", "/d", ("keep:image",))
    assert image_text.resolve_templates(("a {name}",)) == ("a {name}",)
