"""Learning gates: every task and every config in configs/ trains a short run and must have learned.

Each gate asserts two things about a real `train_and_evaluate` run: the train
loss fell (mean of the last logged steps below the mean of the first ones by a
stated factor) and the task's headline metric beats a stated bar. Runs are
session-scoped fixtures shared by the gates (the supervised run is also the
KD teacher, the SimCLR run the finetune init, the finetune run the SimCLRv2
distillation teacher). Bars were set from measured runs (seeds 0, 1, 2; see
MEASURED) well below the worst seed and well above what a broken trainer
gives: with gradient ascent, zero gradients or labels permuted against the
inputs every supervised-signal gate falls to chance (checked by injecting
each fault into jaxsup/step.py; the report is in the issue-14 notes).
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from jaxsup.config import load_config
from jaxsup.train import train_and_evaluate

from helpers import ROOT, apply_overrides, few_steps, train_losses

SEED = int(os.environ.get("JAXSUP_LEARNING_SEED", "0"))  # to re-measure the bars over seeds
CHANCE = 0.1  # ten digit classes, about balanced in every split
LOG_EVERY = 2


def short_config(spec: str, steps: int, **overrides):
    """configs/<spec> shortened: `steps` steps, loss logged every step, evals only at the end."""
    c = few_steps(load_config(os.path.join(ROOT, "configs", spec)), steps, batch_size=None, log_every=LOG_EVERY,
                  save_every=steps)
    c.seed = SEED
    return apply_overrides(c, overrides)


class Run:
    """A finished run: its workdir, final metrics and per-step train losses."""

    def __init__(self, config, workdir: str):
        self.workdir = str(workdir)
        self.metrics = train_and_evaluate(config, self.workdir)
        losses = train_losses(self.workdir)
        self.losses = np.array([losses[s] for s in sorted(losses)])

    def loss_drop(self, window: int = 3) -> float:
        """mean(last `window` logged losses) / mean(first `window`): < 1 when the loss fell."""
        return float(self.losses[-window:].mean() / self.losses[:window].mean())


def run(tmp_path_factory, name: str, config) -> Run:
    return Run(config, tmp_path_factory.mktemp(name))


# ---------------------------------------------------------------- runs (session-scoped)


@pytest.fixture(scope="session")
def supervised(tmp_path_factory):
    """The default CNN, 60 steps of batch 64: also the teacher of the KD runs."""
    return run(tmp_path_factory, "supervised", short_config("supervised_digits.py", 60, batch_size=64))


@pytest.fixture(scope="session")
def supervised_vit(tmp_path_factory):
    return run(tmp_path_factory, "vit", short_config("supervised_digits.py:vit", 60, batch_size=64))


@pytest.fixture(scope="session")
def clip(tmp_path_factory):
    return run(tmp_path_factory, "clip", short_config("clip_digits.py", 80, batch_size=64,
                                                      **{"optim.warmup_steps": 10}))


@pytest.fixture(scope="session")
def siglip(tmp_path_factory):
    return run(tmp_path_factory, "siglip", short_config("siglip_digits.py", 200, batch_size=64,
                                                        **{"optim.warmup_steps": 10}))


SIMCLR = dict(batch_size=64, **{"optim.warmup_steps": 5, "optim.lr": 0.5,
                                "evals.linear_probe.steps": 100})


@pytest.fixture(scope="session")
def simclr(tmp_path_factory):
    return run(tmp_path_factory, "simclr", short_config("simclr_digits.py", 120, **SIMCLR))


@pytest.fixture(scope="session")
def simclr_init(tmp_path_factory):
    """The same encoder at random init (no step), probed by the same evaluators."""
    return run(tmp_path_factory, "simclr_init", short_config("simclr_digits.py", 0, **SIMCLR))


@pytest.fixture(scope="session")
def finetune(tmp_path_factory, simclr):
    """SimCLRv2 step 2: the SimCLR encoder + a new head on train[:10%]."""
    return run(tmp_path_factory, "finetune", short_config(
        "simclrv2_finetune_digits.py", 60, **{"finetune.init_from": simclr.workdir, "optim.warmup_steps": 5}))


@pytest.fixture(scope="session")
def simclrv2_distill(tmp_path_factory, finetune):
    """SimCLRv2 step 3: the fine-tuned ResNet distilled into a small CNN, label-free."""
    return run(tmp_path_factory, "v2distill", short_config(
        "simclrv2_distill_digits.py", 60, **{"distill.teacher.path": finetune.workdir, "optim.warmup_steps": 5}))


KD_CONFIGS = ("kd_digits.py", "kd_digits.py:label_free", "kd_digits.py:fused_head", "feature_kd_digits.py",
              "kd_label_fraction_digits.py")


@pytest.fixture(scope="session")
def kd_runs(tmp_path_factory, supervised):
    """Each KD config's student (MLP-64), taught by the supervised CNN run."""
    return {
        spec: run(tmp_path_factory, "kd", short_config(
            spec, 100, **{"distill.teacher.path": supervised.workdir, "optim.warmup_steps": 5}))
        for spec in KD_CONFIGS
    }


@pytest.fixture(scope="session")
def pskd(tmp_path_factory):
    return run(tmp_path_factory, "pskd", short_config("pskd_digits.py", 60, batch_size=64))


@pytest.fixture(scope="session")
def pseudo_label(tmp_path_factory):
    return run(tmp_path_factory, "pseudo_label", short_config("pseudo_label_digits.py", 150, batch_size=64,
                                                                    **{"optim.warmup_steps": 10}))


W2S_STRONG_STEPS = 200
PSEUDO_LABEL_BAR = 0.25  # only ~6 labelled rows per batch of 64: measured 0.40 / 0.34 at 100 steps (seeds 1, 2)
W2S_STUDENT_FRACTION = 0.85  # soft-CE student / weak-label accuracy measured 1.02, 1.08 at 200 steps (seeds 1, 2)
W2S_AUX_BAR = 0.4  # the aux-loss student is slower: measured 0.51, 0.69, 0.66 (seeds 0-2) at 200 steps


@pytest.fixture(scope="session")
def w2s(tmp_path_factory):
    """One seed of configs/w2s_digits.py: weak MLP (its 60 steps), then ceiling / students shortened."""
    from jaxsup.w2s import pipeline as w2s_lib

    c = load_config(os.path.join(ROOT, "configs", "w2s_digits.py"))
    for name, stage in c.stages.items():
        stage.log_every = LOG_EVERY
        if name != "weak":
            stage.total_steps = W2S_STRONG_STEPS
    workdir = str(tmp_path_factory.mktemp("w2s"))
    accuracy = w2s_lib.run_seed(c, workdir, SEED)
    seed_dir = os.path.join(workdir, f"seed_{SEED}")
    losses = {name: np.array(list(train_losses(os.path.join(seed_dir, name)).values())) for name in c.stages}
    return accuracy, losses


# ---------------------------------------------------------------- gates
# Two xdist groups (pyproject: --dist loadgroup) so each chain of runs is made once, on one worker.
CHAIN_A = pytest.mark.xdist_group("learning_a")  # supervised -> KD family, PS-KD, pseudo-label, w2s, ViT
CHAIN_B = pytest.mark.xdist_group("learning_b")  # CLIP, SigLIP, SimCLR -> finetune -> SimCLRv2 distill


def assert_learned(r: Run, max_drop: float, metric: str, bar: float) -> None:
    assert r.loss_drop() < max_drop, f"loss did not fall enough: last/first = {r.loss_drop():.3f} (need < {max_drop})"
    assert r.metrics[metric] > bar, f"{metric} = {r.metrics[metric]:.3f} (need > {bar})"


@CHAIN_A
@pytest.mark.parametrize("spec", ["supervised_digits.py", "supervised_digits.py:vit"])
def test_supervised_learns(spec, request):
    r = request.getfixturevalue("supervised" if spec == "supervised_digits.py" else "supervised_vit")
    assert_learned(r, 0.75, "test/top1", 0.6)


@CHAIN_B
@pytest.mark.parametrize("spec", ["clip_digits.py", "siglip_digits.py"])
def test_clip_and_siglip_learn_zero_shot_and_retrieval(spec, request):
    """(The ViT-B/16 configs' runlocal runs on mock TFDS data: tests/data/test_real_datasets.py.)"""
    sigmoid = "siglip" in spec
    r = request.getfixturevalue("siglip" if sigmoid else "clip")
    assert_learned(r, 0.75 if sigmoid else 0.8, "zero_shot/top1", 0.25 if sigmoid else 0.45)
    assert r.metrics["retrieval_class/img2txt/r1"] > 2.5 * r.metrics["retrieval_class/r1_chance"]


@CHAIN_B
@pytest.mark.parametrize("spec", ["simclr_digits.py"])
def test_simclr_probe_beats_the_random_init_probe(spec, simclr, simclr_init):
    assert simclr.loss_drop() < 0.8, simclr.loss_drop()
    assert simclr.metrics["linear_probe/top1"] > simclr_init.metrics["linear_probe/top1"] + 0.02
    assert simclr.metrics["knn/top1"] > simclr_init.metrics["knn/top1"] + 0.02
    assert simclr.metrics["train/top1"] > 0.1  # twin found among 2N-1 = 127 candidates (chance 0.008)


@CHAIN_B
def test_simclrv2_finetune_and_distill_learn(finetune, simclrv2_distill):
    assert_learned(finetune, 0.5, "test/top1", 0.6)
    assert_learned(simclrv2_distill, 0.9, "test/agreement", 0.35)
    assert simclrv2_distill.metrics["test/top1"] > 0.35


@CHAIN_A
@pytest.mark.parametrize("spec", KD_CONFIGS)
def test_distilled_student_learns_and_agrees_with_teacher(spec, kd_runs):
    r = kd_runs[spec]
    assert_learned(r, 0.5, "test/top1", 0.5)
    assert r.metrics["test/agreement"] > 0.5 and r.metrics["test/teacher_top1"] > 0.6


@CHAIN_A
def test_pskd_learns(pskd):
    assert_learned(pskd, 0.9, "test/top1", 0.6)


@CHAIN_A
def test_pseudo_label_learns(pseudo_label):
    assert_learned(pseudo_label, 0.9, "test/top1", PSEUDO_LABEL_BAR)


@CHAIN_A
def test_weak_to_strong_stages_learn(w2s):
    accuracy, losses = w2s
    for stage, curve in losses.items():  # soft CE on soft weak labels has an entropy floor: ~0.8 measured
        assert curve[-3:].mean() < (0.95 if stage == "student" else 0.8) * curve[:3].mean(), stage
    assert accuracy["weak"] > 0.5 and accuracy["weak_labels_on_strong_split"] > 0.5
    assert accuracy["ceiling"] > accuracy["weak"] + 0.1
    assert accuracy["student"] > W2S_STUDENT_FRACTION * accuracy["weak_labels_on_strong_split"]
    assert accuracy["student_aux"] > W2S_AUX_BAR
    # Not asserted: PGR > 0. At 300 steps it is 0.06 +- 0.05 (soft CE) and 0.33 +- 0.11 (aux) over 3 seeds
    # (README); at this length one seed in three is below the weak labels, so a per-seed bar would flake.
