"""Feature KD on digits: configs/kd_digits.py plus the norm-and-direction term.

    python -m jaxsup.train --config configs/feature_kd_digits.py --workdir /tmp/jaxsup/nd \
        --config.distill.teacher.path=/tmp/jaxsup/teacher

Adds `nd_lambda * (1 - <f_s, c_y> / max(|f_s|, |f_t|))` on the features
before the heads (student MLP 64-d, teacher CNN 64-d; with different widths
the student gets a learnt linear projector); c_y are the teacher's unit
class-mean features over the student's labelled split (true labels),
computed once at start-up; with "label_free" the teacher's top-1 classes
replace the labels.

`arg` switches: as configs/kd_digits.py.
"""
from jaxsup.config import derive


def get_config(arg=None):
    c = derive(__file__, "kd_digits.py", arg)
    c.distill.nd_lambda = 1.0
    return c
