"""SimCLRv2 step 2 on digits: fine-tune the SimCLR-pretrained encoder on a label fraction.

    python -m jaxsup.train --config configs/simclr_digits.py --workdir /tmp/jaxsup/simclr
    python -m jaxsup.train --config configs/simclrv2_finetune_digits.py --workdir /tmp/jaxsup/finetune \
        --config.finetune.init_from=/tmp/jaxsup/simclr

Task "finetune" (jaxsup/tasks/finetune/task.py): the encoder starts from the
simclr run's "params/encoder" (+ "task_state/encoder"), a new linear "head"
is trained with it on train[:10%] with CE; the model and its kwargs are
read from configs/simclr_digits.py, plus num_classes=10.
scripts/simclrv2_digits.sh runs the whole chain.

Without --config.finetune.init_from the same model trains from random init
(the no-pretraining baseline).

`arg` switches: "1pct" (train[:1%], 14 labels), "runlocal" (20 steps).
"""
from jaxsup.config import base_config, derive, parse_switches, shrink_for_runlocal


def get_config(arg=None):
    args = parse_switches(arg, ("1pct", "runlocal"))
    c = base_config("finetune")
    pretrain = derive(__file__, "simclr_digits.py")  # the encoder must be the pretrained one
    c.model_name = pretrain.model_name
    c.model = dict(pretrain.model.to_dict(), num_classes=10)
    c.finetune.init_subtree = "params/encoder"
    c.finetune.init_state_subtree = "task_state/encoder"
    c.finetune.augment = "crop"
    c.finetune.crop_scale = (0.8, 1.0)
    c.data.train_split = "train[:1%]" if "1pct" in args else "train[:10%]"
    c.batch_size = 8 if "1pct" in args else 64
    c.total_steps = 300
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 20
    c.log_every = 50
    c.checkpoint.every = 300
    c.evals = dict(test=dict(type="classification", split="test", every=100, batch_size=360))
    if "runlocal" in args:
        shrink_for_runlocal(c)
    return c
